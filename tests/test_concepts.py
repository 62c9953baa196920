"""Concepts linked across terminologies, code requests answered by concept, spelling variants.

A small real index (codes filtered by prefix, the packaged int8 MiniLM so it does not depend on
the fine-tune) and its concept graph, built from the real source files.
"""

from __future__ import annotations

import pytest

from assistant.config import Settings
from assistant.terminology.coding import answer_code, calibration
from assistant.terminology.concepts import EXCLUSIVE_SYSTEMS, build_concept_graph, graph_folder
from assistant.terminology.index import IndexOptions, TermIndex, index_folder, open_term_index
from assistant.terminology.models import Concept
from assistant.terminology.variants import spellings, variant_key
from tools.base import ToolError
from tools.lookup_term import lookup_term

# ICD-10 I2x and I10 (WHO and ICD-10-CM), N20; HPO myocardial infarction, hypertension, pleural
# effusion; SNOMED pleural effusion and myocardial infarction.
PREFIXES = ["I2", "I10", "N20", "HP:0001658", "HP:0000822", "HP:0002202", "60046008", "22298006"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings(cache_dir=tmp_path_factory.mktemp("cache"), term_embedder="minilm-onnx")


@pytest.fixture(scope="module")
def index(settings) -> TermIndex:
    return open_term_index(IndexOptions(code_prefixes=PREFIXES, embedder="minilm-onnx"), settings)


@pytest.fixture
def small_index(index, monkeypatch) -> TermIndex:
    """The tool reads this small real index instead of building the full one."""
    monkeypatch.setattr("tools.lookup_term.get_term_index", lambda settings=None: index)
    return index


# --- the graph -------------------------------------------------------------------------------------

def test_a_layperson_hit_carries_every_terminologys_code_and_labels(index):
    """HPO says 'heart attack' is its myocardial infarction; WHO ICD-10 and ICD-10-CM share I21."""
    hit = next(h for h in index.search("heart attack", k=5) if h.concept.source == "hpo")
    linked = hit.linked
    assert linked.code("ICD-10") == "I21" and linked.code("ICD-10-CM") == "I21"
    assert linked.code("HPO") == "HP:0001658" and linked.code("SNOMED") == "22298006"
    assert "infarto" in linked.labels["es"].lower() and linked.labels["en"]
    methods = {link.method for link in linked.links}
    assert "shared-code" in methods and methods & {"label-exact", "label-variant"}
    assert all(0 < link.confidence <= 1 and link.evidence for link in linked.links)


def test_an_icd10cm_code_without_a_who_code_points_at_its_who_parent(index):
    linked = index.linked(index.concept("icd10cm:I21.01"))
    assert "ICD-10" not in linked.codes and linked.broader == {"ICD-10": "I21.0"}
    assert [link.method for link in linked.links] == ["code-parent"]


def test_no_linked_concept_holds_two_codes_of_one_system(index):
    for group in index.graph.groups:
        for system in EXCLUSIVE_SYSTEMS:
            assert len(group.codes.get(system, [])) <= 1, (group.id, system, group.codes[system])


def test_a_name_match_never_merges_concepts_with_conflicting_codes():
    concepts = [
        Concept(id="icd10:X01", preferred="Foo disease", codes={"ICD-10": "X01"}, source="icd10"),
        Concept(id="icd10:X02", preferred="Bar disease", synonyms=["Baz"], codes={"ICD-10": "X02"}, source="icd10"),
        Concept(id="hpo:HP:1", preferred="Foo disease", synonyms=["Baz"], codes={"HPO": "HP:1"}, source="hpo"),
    ]
    graph = build_concept_graph(concepts)
    foo = graph.linked(concepts[2])
    assert foo.codes == {"ICD-10": ["X01"], "HPO": ["HP:1"]}  # 'Baz' would also tie it to X02: refused
    assert graph.linked(concepts[1]).members == ["icd10:X02"]


def test_the_graph_is_saved_beside_the_index_not_inside_it(index):
    folder = graph_folder(index.folder, index.metadata.fingerprint)
    assert (folder / "graph.pkl").is_file() and folder.parent == index.folder.parent
    assert not (index.folder / "graph.pkl").exists()


def test_an_unreadable_graph_is_rebuilt(settings):
    options = IndexOptions(sources=["icd10", "icd10cm"], code_prefixes=["N20"], embedder="minilm-onnx")
    index = open_term_index(options, settings)
    folder = graph_folder(index_folder(options, settings), index.metadata.fingerprint)
    index.graph  # noqa: B018 - builds and saves it
    (folder / "graph.pkl").write_bytes(b"garbage")
    again = open_term_index(options, settings)
    assert again.linked(again.concept("icd10cm:N20.0")).code("ICD-10") == "N20.0"


# --- code requests ----------------------------------------------------------------------------------

def test_an_icd10_request_in_lay_words_states_the_code_above_the_bound(small_index):
    result = lookup_term("heart attack", system="icd10")
    answer = result.code_answer
    assert answer.code == "I21" and answer.confidence >= answer.confidence_bound
    assert "The ICD-10 code for 'heart attack' is I21" in result.summary()
    [claim] = result.claims("lookup_term")  # the answer step states exactly this code, bound to its field
    assert claim.path == "code_answer.code" and claim.value == "I21" and claim.kind == "code"


def test_no_code_is_stated_below_the_bound(small_index):
    result = lookup_term("purple elephant syndrome", system="icd10")
    answer = result.code_answer
    assert answer.code is None and answer.confidence < answer.confidence_bound
    assert result.summary().startswith("No confident ICD-10 match")
    [claim] = result.claims("lookup_term")  # the candidates, never one of them as the code
    assert claim.kind == "text" and claim.path == "code_answer.candidates"
    assert result.findings({}) == []


def test_a_search_restricted_to_icd10_is_answered_by_concept(small_index):
    """How the agent asks today ('the ICD-10 code for X' -> sources=['icd10'])."""
    result = lookup_term("high blood pressure", sources=["icd10"])
    assert result.code_answer is not None and result.code_answer.system == "ICD-10"
    assert result.code_answer.candidates[0].code == "I10"


def test_every_candidate_says_how_it_was_reached(index):
    answer = answer_code(index, "heart attack", "SNOMED")
    assert answer.candidates[0].code == "22298006"
    assert all(c.via in {"concept", "parent", "system-search"} and 0 <= c.confidence <= 1 for c in answer.candidates)
    assert answer.confidence_bound == calibration().bound


def test_unknown_code_system_is_refused():
    with pytest.raises(ToolError, match="Unknown code system"):
        lookup_term("heart attack", system="icd-11")


# --- spelling variants ----------------------------------------------------------------------------

@pytest.mark.parametrize("a, b", [("Intracranial haemorrhage", "intracranial hemorrhage"),
                                  ("Anaemia, unspecified", "anemia"), ("kidney stones", "Kidney stone"),
                                  ("oedema (localised)", "edema"),
                                  ("non-small-cell carcinoma", "non small cell carcinoma"),
                                  ("Abscess of lungs", "lung abscess")])
def test_spelling_and_form_variants_share_a_key(a, b):
    assert variant_key(a) == variant_key(b)


@pytest.mark.parametrize("a, b", [("hemisphere", "hemorrhage"), ("herpes", "herpe"), ("diabetes", "diabete")])
def test_different_words_keep_different_keys(a, b):
    assert variant_key(a) != variant_key(b)


def test_us_spelling_finds_the_uk_title_and_back():
    assert "haemorrhage" in spellings("hemorrhage") and "hemorrhage" in spellings("haemorrhage")
    assert "haemisphere" not in spellings("hemisphere")


def test_a_plural_finds_the_singular_term_exactly(index):
    top = index.search("kidney stones", k=3)[0]
    assert top.score == 1.0 and top.concept.codes["ICD-10"] == "N20"
