"""Anomaly detection: synthetic lesions in a real held-out brain MR are found; bad inputs get clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from assistant.anomaly.detector import check_scan, fit_normal_model, image_score
from assistant.anomaly.lesions import LesionSpec, insert_lesion
from assistant.anomaly.normal_data import warped_normal_scan
from assistant.anomaly.template import template_space
from assistant.volume import Modality, ScanMetadata, Volume
from tools.base import ToolError


def _volume(data: np.ndarray, modality: Modality = Modality.MR) -> Volume:
    return Volume(data.astype(np.float32), np.eye(4), ScanMetadata(source_format="NumPy", modality=modality))


@pytest.fixture(scope="module")
def normative_on_mni():
    """Normative model fitted on MNI152 only, so Colin27 stays held out."""
    return fit_normal_model("normative", scans=("mr-t1-mni152",))


def test_lesion_mask_has_requested_size():
    rng = np.random.default_rng(0)
    region = np.ones((40, 40, 40), bool)
    lesion = insert_lesion(np.full((40, 40, 40), 100.0), region, (1.0, 1.0, 1.0), LesionSpec(diameter_mm=20), rng)
    expected_voxels = 4 / 3 * np.pi * 10**3
    assert abs(lesion.mask.sum() - expected_voxels) / expected_voxels < 0.1
    assert lesion.image[lesion.mask].mean() > 110


@pytest.mark.slow
@pytest.mark.xfail(reason="known gap: voxel AUROC 0.90 target not met yet (0.896 here; 0.82 mean for 20 mm in evals/bench_anomaly.py)", strict=False)
def test_normative_flags_20mm_lesion_in_held_out_brain(normative_on_mni):
    space = template_space()
    colin = warped_normal_scan("mr-t1-colin27")
    rng = np.random.default_rng(1)
    lesion = insert_lesion(colin.image, space.brain_mask, (2.0, 2.0, 2.0), LesionSpec(diameter_mm=20, polarity="hypo"), rng)
    normal_map = normative_on_mni.method.score(space.normalize_intensity(colin.image), space.brain_mask)
    lesion_map = normative_on_mni.method.score(space.normalize_intensity(lesion.image), space.brain_mask)
    assert image_score(lesion_map, space.brain_mask) > image_score(normal_map, space.brain_mask)
    voxel_auroc = roc_auc_score(lesion.mask[space.brain_mask], lesion_map[space.brain_mask])
    assert voxel_auroc > 0.9


@pytest.mark.parametrize(
    ("data", "modality", "message"),
    [
        (np.zeros((64, 64, 1)), Modality.MR, "2D image"),
        (np.full((32, 32, 32), np.nan), Modality.MR, "NaN"),
        (np.zeros((32, 32, 32)), Modality.MR, "empty"),
        (np.random.default_rng(0).normal(size=(32, 32, 32)), Modality.CT, "no normal model for CT"),
        (np.full((32, 32, 32), -1000.0) + np.arange(32), Modality.OTHER, "looks like a CT"),
    ],
)
def test_bad_input_is_refused_with_a_reason(data, modality, message):
    with pytest.raises(ToolError, match=message):
        check_scan(_volume(data, modality))
