"""Answers rendered from named fields: each result field's declared meaning, the field matcher, the claim check."""

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
