"""Answers rendered from named fields: each result field's declared meaning, the field matcher, the claim check."""

import re

import pytest
from pydantic import BaseModel

from assistant.anomaly.result import AnomalyRegion, AnomalyResult
from assistant.segmentation.result import Segmentation
from tools.describe_scan import IntensityStats, ScanDescription
from tools.lookup_term import TermLookup
from tools.measure_distance import DistanceMeasurement
from tools.normalize_terms import NormalizedTerms
from tools.probe_intensity import IntensityProbe
from tools.segment import SegmentResult

RESULT_TYPES = [ScanDescription, IntensityStats, IntensityProbe, DistanceMeasurement, Segmentation, SegmentResult,
                AnomalyResult, AnomalyRegion, TermLookup, NormalizedTerms]


@pytest.mark.parametrize("model", RESULT_TYPES, ids=lambda m: m.__name__)
def test_every_result_field_says_what_it_means_or_that_it_is_no_claim(model: type[BaseModel]):
    for name, info in model.model_fields.items():
        if info.exclude:
            continue  # arrays shown in the viewer, never in an answer
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        nested = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        assert info.description or nested, f"{model.__name__}.{name} has no description"
        assert "answer" in extra or info.description, f"{model.__name__}.{name} declares no meaning"
        if extra.get("answer") is not None:  # the description is read to the clinician as the meaning of the value
            assert not re.search(r"\be\.g\.|\bi\.e\.", info.description or ""), f"{model.__name__}.{name}: a documentation example in an answer"


def _description(**overrides) -> ScanDescription:
    values = dict(name="x", modality="CT", source_format="dicom", dimensions=(512, 512, 40), orientation="LPS",
                  spacing_mm=(0.49, 0.49, 5.0), slice_thickness_mm=2.5, number_of_slices=40,
                  field_of_view_mm=(250.9, 250.9, 200.0), voxel_count=512 * 512 * 40,
                  intensity=IntensityStats(unit="HU", minimum=-1024, maximum=3071, mean=-400, std=500, p1=-1000, p50=-50, p99=1500))
    return ScanDescription(**(values | overrides))


def test_slice_spacing_and_in_plane_spacing_are_different_named_claims():
    claims = {c.path: c for c in _description().claims("describe_scan")}
    assert claims["spacing_mm.2"].text == "5.00 mm" and "between slices" in claims["spacing_mm.2"].meaning
    assert claims["spacing_mm.0"].text == "0.49 mm" and "in-plane" in claims["spacing_mm.0"].meaning
    assert claims["dimensions"].text == "512 x 512 x 40" and "matrix" in claims["dimensions"].meaning.lower()
    assert claims["slice_thickness_mm"].text == "2.50 mm"


@pytest.mark.parametrize("question, path", [
    ("What is the spacing between slices?", "spacing_mm.2"),
    ("slice gap?", "spacing_mm.2"),
    ("what's the matrix?", "dimensions"),
    ("How thick are the slices?", "slice_thickness_mm"),
    ("in-plane resolution please", "spacing_mm.0"),
    ("How many slices are there?", "number_of_slices"),
    ("what is the field of view", "field_of_view_mm"),
])
def test_the_field_that_answers_is_chosen_by_meaning(question, path):
    from assistant.claims import pick_claims

    picked, matched = pick_claims(question, _description().claims("describe_scan"))
    assert matched and picked[0].path == path, [c.path for c in picked]


def test_two_fields_named_in_one_question_are_both_answered():
    from assistant.claims import pick_claims

    picked, _ = pick_claims("field of view and slice thickness?", _description().claims("describe_scan"))
    assert {c.path for c in picked} == {"field_of_view_mm", "slice_thickness_mm"}


def test_a_question_no_field_answers_is_not_matched():
    from assistant.claims import pick_claims

    _, matched = pick_claims("what is the patient's blood pressure?", _description().claims("describe_scan"))
    assert not matched


def test_a_real_number_under_the_wrong_name_fails_the_check():
    from assistant.claims import check_claims

    claims = _description().claims("describe_scan")
    assert check_claims("The spacing between slices is 5.00 mm.", claims) == []
    problems = check_claims("The spacing between slices is 0.49 mm.", claims)
    assert problems and "0.49" in problems[0]
    assert check_claims("The matrix is 250.9 x 250.9 mm.", claims)  # the field of view, said as the matrix


def _screen(exceeds: bool) -> AnomalyResult:
    region = AnomalyRegion(rank=1, centroid_mm=(-30.0, -20.0, -10.0), centroid_voxel=(60, 90, 60), size_ml=4.2,
                           peak_score=9.1, mean_score=3.2, label="Hippocampus_L")
    return AnomalyResult(method="ensemble", body_model="brain MR (T1)", image_score=7.5 if exceeds else 0.4,
                         threshold=2.1, exceeds_threshold=exceeds, voxel_threshold=1.0, regions=[region] if exceeds else [])


def test_a_verdict_against_the_flag_fails_the_check():
    from assistant.claims import check_claims

    positive = _screen(True).claims("detect_anomalies")
    assert check_claims("The brain is not abnormal.", positive)
    assert check_claims("Score 7.50, below the threshold.", positive)
    assert check_claims("The scan looks normal.", positive)
    assert check_claims("Score 0.40, above the calibrated threshold.", _screen(False).claims("detect_anomalies"))
    assert check_claims("Screening verdict: " + next(c.text for c in positive if c.kind == "verdict") + ".", positive) == []


def test_the_rendered_screening_answer_states_verdict_score_threshold_and_side():
    from assistant.claims import check_claims, pick_claims, render

    claims = _screen(True).claims("detect_anomalies")
    picked, _ = pick_claims("is this brain normal?", claims)
    text = render(picked)
    assert "ABOVE the calibrated threshold" in text and "7.50" in text and "2.10" in text
    assert check_claims(text, claims) == []
    assert check_claims("The deviating area is in the right hippocampus.", claims)  # the atlas label says left


def test_a_code_is_stated_only_for_a_confident_match():
    from assistant.terminology.models import Concept, TermHit
    from tools.lookup_term import CONFIDENT_MATCH

    stroke = Concept(id="icd10:I63", preferred="Cerebral infarction", codes={"ICD-10": "I63"}, source="icd10")
    exact = TermLookup(query="stroke", language="en", hits=[TermHit(concept=stroke, matched="stroke", score=1.0)])
    weak = TermLookup(query="brain attack", language="en",
                      hits=[TermHit(concept=stroke, matched="brain infarct", score=CONFIDENT_MATCH - 0.1)])
    assert any(c.kind == "code" and c.text == "I63" for c in exact.claims("lookup_term"))
    [hedged] = weak.claims("lookup_term")
    assert hedged.kind == "text" and "no confident match" in hedged.meaning and "I63" in hedged.text


def test_a_code_no_lookup_gave_fails_the_check():
    from assistant.claims import check_claims

    assert check_claims("The ICD-10 code is I21.9.", [], ["What is the code for a heart attack?"])


def test_a_result_that_contradicts_itself_is_said_plainly():
    from assistant.claims import contradictions

    broken = _screen(False).model_copy(update={"image_score": 9.0})  # flagged below, scored far above
    [problem] = contradictions(broken.claims("detect_anomalies"))
    assert "contradicts itself" in problem and "9.00" in problem
    assert contradictions(_screen(True).claims("detect_anomalies")) == []


def test_an_earlier_result_that_contradicts_itself_is_said_plainly_when_quoted():
    from assistant.claims import contradictions

    broken = _screen(True).model_copy(update={"image_score": 0.3})  # flagged above, scored below
    quoted = [c.model_copy(update={"earlier": True}) for c in broken.claims("detect_anomalies")]
    [problem] = contradictions(quoted)
    assert "contradicts itself" in problem and "0.30" in problem and "2.10" in problem
    assert contradictions([c.model_copy(update={"earlier": True}) for c in _screen(True).claims("detect_anomalies")]) == []


def test_one_field_with_two_values_from_two_calls_is_said_plainly():
    from assistant.claims import contradictions

    now = _description().claims("describe_scan")
    before = [c.model_copy(update={"earlier": True}) for c in _description(slice_thickness_mm=5.0).claims("describe_scan")]
    problems = contradictions([*now, *before])
    assert len(problems) == 1 and "5.00 mm earlier" in problems[0] and "2.50 mm now" in problems[0]


@pytest.mark.parametrize("question", [
    "what is the patient's blood pressure?", "how much did the scanner cost?", "¿Cuál es el peso del paciente?",
    "Wie ist der Blutzucker?",
])
def test_a_question_no_field_holds_is_recognised(question):
    from assistant.no_field import asks_for_no_field

    assert asks_for_no_field(question)


@pytest.mark.parametrize("question", [
    "what is the slice thickness?", "how far apart are the slices?", "volume of the left hippocampus?",
    "ICD-10 code for stroke?", "¿Cuál es el grosor de corte?", "Wie groß ist das Sichtfeld?",
])
def test_a_question_a_field_answers_is_not_refused(question):
    from assistant.no_field import asks_for_no_field

    assert not asks_for_no_field(question)
