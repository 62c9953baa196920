"""Terminology-aware translation: real engines (Apertium, Bergamot, a tiny local Marian model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from assistant.terminology.glossary import load_glossary
from assistant.translation import EngineError, TranslationError, translate_text
from assistant.translation.agreement import agree, guess_gender
from assistant.translation.engines import ApertiumEngine, Seq2SeqEngine
from assistant.translation.icd10 import icd10_titles
from assistant.translation.pipeline import sentence_bounds
from assistant.translation.terms import GlossaryTermSource, Icd10TitleSource, TermIndexSource, term_present

needs_apertium = pytest.mark.usefixtures("apertium")  # skipped without Apertium, except in CI (tests/conftest.py)

REPORT = ("The patient has a pulmonary embolism. A CT scan showed a small pleural effusion and no signs of pneumonia.\n"
          "The patient was started on anticoagulation therapy with apixaban 5 mg twice daily.\n\n"
          "Impression: pulmonary embolism. Dr. Smith was informed.")


@pytest.fixture
def glossary(tmp_path: Path):
    path = tmp_path / "terms.csv"
    path.write_text("source,target,lang\n"
                    "pleural effusion,derrame pleural,es\n"
                    "anticoagulation therapy,tratamiento anticoagulante,es\n"
                    "CT scan,TC,es\n"
                    "pleural effusion,derrame pleural,pt\n"
                    "anticoagulation therapy,terapia anticoagulante,pt\n", encoding="utf-8")
    return load_glossary(path)


@needs_apertium
def test_apertium_enforces_every_glossary_and_icd10_term(glossary):
    result = translate_text(REPORT, "es", glossary=glossary, term_sources=[GlossaryTermSource(glossary), Icd10TitleSource()],
                            engine="apertium")
    assert result.engine == "apertium"
    assert result.term_success_rate == 1.0 and not result.flagged_sentences
    assert {"derrame pleural", "tratamiento anticoagulante", "TC", "embolia pulmonar"} <= {t.target for t in result.terms}
    assert "una embolia pulmonar" in result.translation  # feminine article restored around the placeholder
    assert "ZXTERM" not in result.translation and "*" not in result.translation
    assert result.translation.count("\n") == REPORT.count("\n")  # line structure kept


@needs_apertium
def test_unconstrained_apertium_misses_terms_that_the_pipeline_enforces(glossary):
    sources = [GlossaryTermSource(glossary)]
    plain = translate_text(REPORT, "es", term_sources=sources, protect_terms=False, engine="apertium")
    assert plain.flagged_sentences, "without placeholders Apertium leaves 'pleural effusion' untranslated"
    assert any("derrame pleural" in sentence.missing for sentence in plain.flagged_sentences)


@needs_apertium
def test_one_source_term_gets_one_target_term_throughout():
    text = "Pulmonary embolism was suspected. The scan confirmed a pulmonary embolism. No new pulmonary embolism."
    result = translate_text(text, "es", term_sources=[Icd10TitleSource()], engine="apertium")  # placeholders throughout
    term = next(t for t in result.terms if t.source.casefold() == "pulmonary embolism")
    assert term.found and term.sentences == [0, 1, 2]
    assert all("embolia pulmonar" in s.text.casefold() for s in result.sentences)
    assert result.sentences[0].text.startswith("Embolia pulmonar")  # capitalised at the sentence start


def test_bergamot_translates_to_portuguese_with_glossary_terms(glossary):
    result = translate_text(REPORT, "pt-BR", glossary=glossary, term_sources=[GlossaryTermSource(glossary), Icd10TitleSource()])
    assert result.engine == "bergamot" and result.target_lang == "pt"
    assert result.term_success_rate == 1.0
    assert "terapia anticoagulante" in result.translation and "apixaban" in result.translation


def test_bergamot_serves_conversations_that_each_run_on_their_own_short_lived_thread():
    """Two conversations, each on a fresh worker thread as the eval runner and LangGraph run them: the native models
    crashed the process (segmentation fault) in the second until they were kept on one thread of their own."""
    import subprocess
    import sys

    script = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from assistant.translation import translate_text\n"
        "def both(text):\n"
        "    with ThreadPoolExecutor(1) as outer:\n"
        "        return outer.submit(lambda: ThreadPoolExecutor(1).submit(translate_text, text, 'es').result().translation).result()\n"
        "for text in ['No evidence of pulmonary embolism.', 'Small left pleural effusion. The effusion is unchanged.']:\n"
        "    print(both(text))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "embolia pulmonar" in done.stdout and "derrame" in done.stdout


def test_pair_without_engine_says_so_and_gives_term_renderings():
    result = translate_text("The patient has a pulmonary embolism.", "de", term_sources=[Icd10TitleSource()])
    assert result.translation is None and result.engine is None
    assert "No offline engine translates en→de" in result.message
    assert [(t.source, t.target) for t in result.terms] == [("pulmonary embolism", "Lungenembolie")]


@pytest.mark.parametrize("text, target, message", [
    ("", "es", "no text"),
    ("   \n ", "es", "no text"),
    ("x" * 100_001, "es", "at most"),
    ("Hello.", "en", "already in English"),
    ("Hello.", "not a language!", "not a language code"),
])
def test_bad_input_is_refused_with_a_message(text, target, message):
    with pytest.raises(ValueError, match=message):
        translate_text(text, target, term_sources=[])


def test_conflicting_glossary_entries_for_a_term_in_the_text_are_refused(tmp_path):
    path = tmp_path / "conflict.csv"
    path.write_text("source,target,lang\nembolism,embolia,es\nembolism,embolismo,es\n", encoding="utf-8")
    glossary = load_glossary(path)
    with pytest.raises(TranslationError, match="embolia / embolismo"):
        translate_text("A pulmonary embolism.", "es", glossary=glossary, term_sources=[GlossaryTermSource(glossary)])
    # the conflict does not matter for a text that does not use the term
    assert translate_text("No findings.", "es", term_sources=[GlossaryTermSource(glossary)]).translation


@pytest.mark.parametrize("command, message", [
    (("sh", "-c", "sleep 30", "sh"), "did not finish"),
    (("sh", "-c", "exit 3", "sh"), "exit code 3"),
    (("sh", "-c", "head -n 1", "sh"), "refusing a partial translation"),
])
def test_engine_process_that_hangs_dies_or_truncates_raises(command, message):
    engine = ApertiumEngine(command=command, timeout_s=1.0)
    with pytest.raises(EngineError, match=message):
        translate_text("First sentence.\nSecond sentence.", "es", engine=engine, term_sources=[])


def test_agreement_makes_article_and_adjectives_feminine():
    assert agree("Vi un pequeño ZXTERM0 ayer.", "ZXTERM0", "f", "es") == "Vi una pequeña ZXTERM0 ayer."
    assert agree("Sin signos del ZXTERM0 agudo.", "ZXTERM0", "f", "es") == "Sin signos de la ZXTERM0 aguda."
    assert agree("Um ZXTERM1 pequeno.", "ZXTERM1", "f", "pt") == "Uma ZXTERM1 pequeno."  # "pequeno" is not -ado/-ico...
    assert agree("uma ZXTERM0 foi vista", "ZXTERM0", "m", "pt") == "um ZXTERM0 foi vista"
    assert guess_gender("embolia pulmonar", "es") == "f" and guess_gender("derrame pleural", "es") == "m"
    assert guess_gender("trombose venosa", "pt") == "f" and guess_gender("problema renal", "es") == "m"


def test_term_check_accepts_inflection_but_not_another_word():
    assert term_present("embolia pulmonar", "Dos embolias pulmonares agudas.")
    assert term_present("derrame pleural", "DERRAME PLEURAL")
    assert not term_present("embolia pulmonar", "un embolismo pulmonar")
    assert not term_present("TC", "La TCE fue normal.")


def test_sentences_split_at_full_stops_but_not_after_abbreviations():
    text = "Dr. Smith saw it. A 5.2 mm nodule, e.g. in the lung. Next!\nImpression: none"
    assert [text[a:b] for a, b in sentence_bounds(text)] == [
        "Dr. Smith saw it.", "A 5.2 mm nodule, e.g. in the lung.", "Next!", "Impression: none"]


def test_icd10_titles_are_clean():
    spanish, portuguese = icd10_titles("es"), icd10_titles("pt")
    assert len(spanish) > 14_000 and len(portuguese) > 10_000
    assert not any(t.translated.casefold() == "nan" for t in spanish)
    assert not any(c in t.translated for t in portuguese for c in "ăęő")  # cp1250 mojibake repaired
    assert next(t for t in spanish if t.code == "I26.9").translated.startswith("Embolia pulmonar")


def _tiny_marian(path: Path) -> Path:
    """A random 1-layer Marian model with a word-level tokenizer, saved like a downloaded one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    words = "the patient has a pulmonary embolism el paciente tiene una embolia pulmonar embolismo de".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                          max_position_embeddings=64, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                          forced_eos_token_id=1)
    import torch

    torch.manual_seed(0)
    MarianMTModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_the_shared_term_index_supplies_the_official_spanish_term():
    from assistant.terminology import get_term_index

    index = get_term_index()
    text = "CT angiography confirmed a pulmonary embolism in the right lower lobe."
    [span] = [s for s in TermIndexSource(index).find(text, "en", "es") if s.constraint.key == "pulmonary embolism"]
    assert text[span.start:span.end] == "pulmonary embolism"
    assert span.constraint.origin == "term-index" and span.constraint.concept_id
    assert span.constraint.target == "embolia pulmonar"  # the gnuhealth ICD-10 Spanish label, in running text
    if shutil.which("apertium"):  # the default sources are the glossary and this index
        result = translate_text(text, "es")
        term = next(t for t in result.terms if t.source == "pulmonary embolism")
        assert term.origin == "term-index" and term.found and "embolia pulmonar" in result.translation


@needs_apertium
@pytest.mark.slow
def test_llm_refiner_runs_on_missed_terms_and_a_non_repair_is_refused_and_flagged(glossary):
    """What the LLM refine step really does with the packaged default model (Qwen2.5-Coder-0.5B via llama.cpp): it
    answers in the schema but hands back the unconstrained Apertium draft ('Un pequeño pleural effusion.') without
    the required 'derrame pleural' (measured 2026-12-04; evals/bench_translation.py: 1 term repaired out of 20). So the
    check is on the pipeline around it: a reply that repairs nothing is not taken, and the miss is flagged for review.
    Whether a real repair is kept is not shown here: no offline model repairs this draft."""
    from assistant.config import get_settings
    from assistant.models.registry import load_chat_model

    refiner = load_chat_model(get_settings(), name="qwen2.5-coder-0.5b")
    text = "A small pleural effusion."
    sources = [GlossaryTermSource(glossary)]
    plain = translate_text(text, "es", term_sources=sources, protect_terms=False, engine="apertium")
    [draft] = plain.sentences
    assert draft.missing == ["derrame pleural"] and "pleural effusion" in draft.text  # the broken draft
    result = translate_text(text, "es", term_sources=sources, protect_terms=False, refiner=refiner, engine="apertium")
    [sentence] = result.sentences
    assert sentence.steps == ["refine"], "the model must answer with the JSON the schema asks for"
    assert sentence.text == draft.text and sentence.missing == ["derrame pleural"]
    assert not term_present("derrame pleural", sentence.text) and result.term_success_rate == plain.term_success_rate
    assert "lacks derrame pleural" in result.message
    assert "⚠ *missing: derrame pleural*" in result.highlighted_markdown()


@pytest.mark.slow
def test_local_seq2seq_engine_bans_the_words_it_is_told_to(tmp_path):
    engine = Seq2SeqEngine(model_dir=_tiny_marian(tmp_path / "tiny-marian"), pairs=frozenset({("en", "es")}),
                           num_beams=2, max_new_tokens=8)
    source = "the patient has a pulmonary embolism"
    first = engine.translate_batch([source], "en", "es")[0].text
    assert first.split(), "the random model should emit some words"
    banned = first.split()[0]
    second = engine.translate_batch([source], "en", "es", banned_phrases=[banned])[0].text
    assert banned not in second.split()
    result = translate_text(source, "es", engine=str(engine.model_dir), term_sources=[Icd10TitleSource()])
    assert result.engine == "seq2seq:tiny-marian"
    assert result.sentences[0].required == ["embolia pulmonar"]
    [sentence] = result.sentences
    # the random model misses the term; its rendering of the term alone gives the words to ban
    assert sentence.missing == ["embolia pulmonar"] and sentence.steps == ["redecode"] and result.flagged_sentences


@needs_apertium
def test_tool_and_cli_report_engine_terms_and_flags(glossary, capsys, monkeypatch, request):
    from tools.translate_text import TranslateTextTool  # before assistant.session: tools/__init__ imports it
    from assistant.cli import main
    from assistant.config import get_settings
    from assistant.session import ScanSession

    monkeypatch.setenv("SCANCHAT_GLOSSARY_DIR", str(Path(glossary.path).parent))  # the tool reads glossaries only there
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    tool = TranslateTextTool(session=ScanSession())
    message = tool.invoke({"type": "tool_call", "id": "1", "name": "translate_text",
                           "args": {"text": "A small pleural effusion.", "target_language": "es",
                                    "glossary_path": glossary.path}})
    assert json.loads(message.content)["required_terms"]["pleural effusion"] == {"target": "derrame pleural", "found": True}
    assert message.artifact.engine == "bergamot+apertium"  # the en->es default

    assert main(["translate", "A small pleural effusion.", "--to", "es", "--glossary", glossary.path, "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["engine"] == "bergamot+apertium" and output["flagged_sentences"] == []
    assert output["terms"][0]["found"] is True and "derrame pleural" in output["translation"]
    assert main(["translate", "Pulmonary embolism.", "--to", "fr"]) == 1


@needs_apertium
def test_the_agent_shows_a_translation_exactly_with_its_term_checks():
    """The translation is the answer (no model rewording), with each required term marked found or missing."""
    from tools.translate_text import run_translation

    answer = run_translation("The patient has a pulmonary embolism.", "es").direct_answer()
    assert answer.splitlines()[0].startswith("El paciente") and "embolia pulmonar ✓" in answer
    refused = run_translation("The patient has a pulmonary embolism.", "de").direct_answer()
    assert "no translation was made" in refused and "Lungenembolie" in refused
