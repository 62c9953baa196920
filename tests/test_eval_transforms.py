"""The suites' own scan transforms keep the anatomy where the affine says it is, and scenarios carry a fixed split."""

import numpy as np
import pytest

from assistant.scans.samples import load_sample
from evals.harness.schema import Scenario
from evals.harness.transforms import transformed
from tools.describe_scan import describe_scan


@pytest.fixture(scope="module")
def ct():
    return load_sample("ct-head")


@pytest.mark.parametrize("steps", [["reorient"], ["resample"], ["crop"], ["reorient", "crop"]])
def test_a_transformed_scan_has_the_same_intensity_at_the_same_world_point(ct, steps):
    moved = transformed(ct, steps)
    for voxel in ([128, 128, 54], [100, 150, 60], [90, 120, 40]):
        world = ct.voxel_to_world(np.array(voxel))
        there = np.round(moved.world_to_voxel(world)).astype(int)
        assert moved.data[tuple(there)] == ct.data[tuple(voxel)]


def test_resampling_doubles_the_spacing_between_slices_and_crop_narrows_the_field_of_view(ct):
    before = describe_scan(ct)
    assert describe_scan(transformed(ct, ["resample"])).spacing_mm[2] == pytest.approx(2 * before.spacing_mm[2])
    assert describe_scan(transformed(ct, ["crop"])).field_of_view_mm[0] < before.field_of_view_mm[0]
    assert transformed(ct, ["rename"]).name == "series_0042"
    assert describe_scan(transformed(ct, ["reorient"])).orientation != before.orientation


def test_a_scenario_names_its_split_and_an_unknown_one_is_refused():
    turn = [{"user": "slice thickness?"}]
    assert Scenario.model_validate({"name": "x", "split": "test", "turns": turn}).split == "test"
    with pytest.raises(ValueError):
        Scenario.model_validate({"name": "x", "split": "train", "turns": turn})
