"""Anomaly detection: normal brains align to the template, a synthetic lesion in a held-out brain stands out
against thresholds calibrated on other subjects, and bad inputs get clear refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from assistant.anomaly.detector import (AUGMENTATIONS_PER_SCAN, CALIBRATION_AUGMENTATIONS, DEFAULT_METHOD, blob_peaks,
                                        check_scan, compact_area_excesses, detect_anomalies, Ensemble, ENSEMBLES, ensemble_model,
                                        fit_normal_model, model_path, normal_images, one_sided_deviation,
                                        save_normal_model, standout)
from assistant.anomaly.lesions import LesionSpec, insert_lesion
from assistant.anomaly.normal_data import load_normal_scan, warp_to_template, warped_normal_scan
from assistant.anomaly.template import template_space
from assistant.config import Settings
from assistant.imaging.registration import register_to_template
from assistant.volume import Modality, ScanMetadata, Volume
from tools.base import ToolError


def _volume(data: np.ndarray, modality: Modality = Modality.MR) -> Volume:
    return Volume(data.astype(np.float32), np.eye(4), ScanMetadata(source_format="NumPy", modality=modality))


@pytest.fixture(scope="module")
def normative_without_colin():
    """Normative model fitted and calibrated on MNI152 and the ITK T1, so Colin27 stays a held-out subject."""
    return fit_normal_model("normative", scans=("mr-t1-mni152", "mr-t1-itk"))


def test_lesion_mask_has_requested_size():
    rng = np.random.default_rng(0)
    region = np.ones((40, 40, 40), bool)
    lesion = insert_lesion(np.full((40, 40, 40), 100.0), region, (1.0, 1.0, 1.0), LesionSpec(diameter_mm=20), rng)
    expected_voxels = 4 / 3 * np.pi * 10**3
    assert abs(lesion.mask.sum() - expected_voxels) / expected_voxels < 0.1
    assert lesion.image[lesion.mask].mean() > 110


def test_image_score_counts_one_connected_area_not_scattered_voxels():
    mask = np.ones((30, 30, 30), bool)
    scattered = np.zeros(mask.shape, np.float32)
    scattered[::4, ::4, ::4] = 10.0  # 512 isolated voxels far above threshold
    blob = np.zeros(mask.shape, np.float32)
    blob[10:15, 10:15, 10:15] = 3.0  # 125 connected voxels just above it
    assert compact_area_excesses(scattered, mask, 2.0).size == 0
    assert compact_area_excesses(blob, mask, 2.0)[0] > 0.0
    assert compact_area_excesses(np.ones(mask.shape, np.float32), mask, 2.0).size == 0


def test_one_area_far_above_the_scans_others_stands_out_more_than_the_largest_of_several_similar_ones():
    mask = np.ones((40, 40, 40), bool)
    lone = np.zeros(mask.shape, np.float32)
    lone[5:10, 5:10, 5:10] = 3.0
    lone[20:23, 20:23, 20:23] = 3.0  # a small second area
    crowded = lone.copy()
    crowded[30:35, 30:35, 5:10] = 3.0  # a second area as large as the first
    crowded[5:10, 30:35, 30:35] = 3.0
    lone_areas, crowded_areas = compact_area_excesses(lone, mask, 2.0), compact_area_excesses(crowded, mask, 2.0)
    assert lone_areas[0] == crowded_areas[0]
    assert standout(lone_areas, floor=0.01) > 2 * standout(crowded_areas, floor=0.01)
    assert standout(np.zeros(0), floor=0.01) == 0.0


def test_blob_detector_scores_a_ball_of_deviation_above_a_sheet_and_a_tube_of_the_same_volume():
    """Misfit along a ventricle wall (sheet) or a sulcus (tube) is as large as a lesion to the compact-area step."""
    space = template_space()
    offset = np.indices(space.shape) - np.array([30, 60, 45])[:, None, None, None]  # left hemisphere, inside the brain
    shapes = {
        "ball": (offset**2).sum(axis=0) <= 5**2,  # 20 mm across
        "sheet": (np.abs(offset[0]) <= 1) & (np.abs(offset[1]) <= 6) & (np.abs(offset[2]) <= 6),
        "tube": (np.abs(offset[0]) <= 2) & (np.abs(offset[1]) <= 2) & (np.abs(offset[2]) <= 10),
    }
    maps = {name: np.where(space.brain_mask, ndimage.gaussian_filter(shape * 3.0, 1.0), 0.0).astype(np.float32)
            for name, shape in shapes.items()}
    assert all(abs(int(shape.sum()) - 515) < 20 and np.all(space.brain_mask[shape]) for shape in shapes.values())
    areas = {name: compact_area_excesses(m, space.brain_mask, 0.5)[0] for name, m in maps.items()}
    peaks = {name: blob_peaks(m, space.brain_mask)[0] for name, m in maps.items()}
    assert min(areas.values()) > 0.8 * areas["ball"]
    assert peaks["ball"] > 2 * max(peaks["sheet"], peaks["tube"])


def test_template_mirror_is_the_reflection_about_the_mid_sagittal_plane():
    space = template_space()
    assert np.allclose(space.mirror(space.reference), space.reference, atol=1e-3)  # the MNI152 template is symmetric
    centre_x = space.template.volume.voxel_to_world(np.array([space.shape[0] // 2, 0, 0]))[0]
    assert abs(centre_x) < 1e-6


def test_one_sided_deviation_keeps_a_blob_on_one_side_and_drops_its_bilateral_twin():
    space = template_space()
    unilateral = np.zeros(space.shape, np.float32)
    unilateral[25:32, 55:62, 40:47] = 3.0
    bilateral = unilateral + space.mirror(unilateral)
    assert one_sided_deviation(unilateral, space).max() == 3.0
    assert one_sided_deviation(bilateral, space).max() == 0.0


@pytest.mark.slow
def test_registration_of_the_template_subject_to_itself_is_identity():
    space = template_space()
    mni = load_normal_scan("mr-t1-mni152")
    registration = register_to_template(mni, space.template)
    moved = np.asarray(registration.forward.TransformPoint((10.0, -20.0, 30.0)))
    assert np.linalg.norm(moved - (10.0, -20.0, 30.0)) < 1.0


@pytest.mark.slow
def test_registering_the_same_scan_twice_gives_the_same_alignment():
    """The same upload must give the same anomaly map and regions every time (ITK's threaded metric sums did not)."""
    itk = load_normal_scan("mr-t1-itk")
    first, second = (register_to_template(itk, template_space().template) for _ in range(2))
    assert first.affine.GetParameters() == second.affine.GetParameters()


@pytest.mark.slow
def test_whole_head_scan_aligns_to_the_skull_stripped_template():
    assert warped_normal_scan("mr-t1-itk").template_correlation > 0.5


@pytest.mark.slow
def test_thresholds_are_calibrated_on_copies_the_model_was_not_fitted_on(normative_without_colin):
    fitted = normal_images("mr-t1-itk", AUGMENTATIONS_PER_SCAN)
    calibration = normal_images("mr-t1-itk", CALIBRATION_AUGMENTATIONS, calibration=True)
    assert len(normative_without_colin.calibration_scores) == 2 * (CALIBRATION_AUGMENTATIONS + 1)
    assert not any(np.allclose(copy, seen) for copy in calibration[1:] for seen in fitted[1:])


@pytest.fixture(scope="module")
def colin_with_and_without_lesion(normative_without_colin):
    """Held-out Colin27 as it arrives (native space), plain and with a 20 mm hypointense lesion: maps, scores, truth."""
    model = normative_without_colin
    space = template_space()
    colin = load_normal_scan("mr-t1-colin27")
    native_brain = warped_normal_scan("mr-t1-colin27").registration.warp_labels(space.brain_mask).astype(bool)
    lesion = insert_lesion(colin.data, native_brain, colin.spacing, LesionSpec(diameter_mm=20, polarity="hypo"),
                           np.random.default_rng(1))
    scores, maps = [], []
    for data in (colin.data, lesion.image):
        warped = warp_to_template(dataclasses.replace(colin, data=data), space)
        score, _, relative_map = model.score(space.normalize_intensity(warped.image))
        scores.append(score)
        maps.append(relative_map)
    truth = warped.registration.warp_to_template(lesion.mask.astype(np.float32)) > 0.5
    return scores, maps, truth


@pytest.mark.slow
def test_normative_localises_20mm_lesion_inserted_in_native_held_out_brain(colin_with_and_without_lesion):
    _, maps, truth = colin_with_and_without_lesion
    mask = template_space().brain_mask
    assert roc_auc_score(truth[mask], maps[1][mask]) > 0.9


@pytest.mark.slow
@pytest.mark.xfail(reason="known gap, deterministic since registration is: this 20 mm hypointense lesion darkens "
                          "grey-matter-like tissue to CSF-like intensity (mean 83 -> 50), as dark as normal sulci; it "
                          "scores 1.20 against 1.45 without it (threshold 3.26), and the ensemble's "
                          "feature_memory parts stay below too. Image AUROC for 20 mm lesions: normative 0.988, ensemble "
                          "0.975 in evals/bench_anomaly.py (2026-11-28 08:40)", strict=True)
def test_20mm_lesion_scores_above_the_same_brain_without_it(colin_with_and_without_lesion):
    scores, _, _ = colin_with_and_without_lesion
    assert scores[1] > scores[0]


@pytest.mark.slow
def test_held_out_normal_brain_stays_below_the_calibrated_threshold(normative_without_colin, colin_with_and_without_lesion):
    scores, _, _ = colin_with_and_without_lesion
    assert scores[0] <= normative_without_colin.image_threshold


@pytest.mark.slow
@pytest.mark.xfail(reason="known gap: the same lesion (see above) stays below normative's threshold; 7 of 9 20 mm "
                          "lesions exceed it in evals/bench_anomaly.py (8 of 9 with the default ensemble)", strict=True)
def test_20mm_lesion_exceeds_the_calibrated_threshold(normative_without_colin, colin_with_and_without_lesion):
    scores, _, _ = colin_with_and_without_lesion
    assert scores[1] > normative_without_colin.image_threshold


@pytest.fixture(scope="module")
def held_out_ensemble_settings(normative_without_colin, tmp_path_factory) -> Settings:
    """Settings whose cache holds the default method (the ensemble) fitted without Colin27, so the tool itself
    screens Colin27 as a subject it never saw: the benchmark's leave-one-subject-out fold for Colin27."""
    feature_memory = fit_normal_model("feature_memory", scans=normative_without_colin.training_scans)
    settings = Settings(cache_dir=tmp_path_factory.mktemp("held-out-anomaly-model"))
    save_normal_model(ensemble_model(DEFAULT_METHOD, [normative_without_colin, feature_memory]),
                      model_path(DEFAULT_METHOD, settings))
    return settings


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_the_tool_flags_a_30mm_lesion_in_a_held_out_brain_and_points_at_it(held_out_ensemble_settings, seed):
    """evals/bench_anomaly.py: the default ensemble finds 30 mm lesions in held-out Colin27 (within-subject image AUROC
    1.000; pooled det@thr 0.93). Here two 30 mm hyperintense lesions (seeds 2 and 3; measured scores 5.23 and 4.73
    against the threshold 3.26, 2026-12-04) must each exceed the threshold, with the top region centred in the lesion."""
    colin = load_normal_scan("mr-t1-colin27")
    native_brain = warped_normal_scan("mr-t1-colin27").registration.warp_labels(template_space().brain_mask).astype(bool)
    lesion = insert_lesion(colin.data, native_brain, colin.spacing, LesionSpec(diameter_mm=30), np.random.default_rng(seed))
    result = detect_anomalies(dataclasses.replace(colin, data=lesion.image), settings=held_out_ensemble_settings)
    assert result.method == DEFAULT_METHOD and "mr-t1-colin27" not in result.body_model
    assert result.exceeds_threshold and result.image_score > result.threshold
    top = result.regions[0]
    assert lesion.mask[top.centroid_voxel], (top, lesion.center_voxel)
    assert top.size_ml > 5.0  # a 30 mm ball is 14 mL; measured top regions 19.3 and 15.3 mL


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


@pytest.mark.slow
def test_ensemble_flags_what_either_member_flags(normative_without_colin):
    """An ensemble's score is its members' largest, and so is each held-out normal's, which sets its threshold."""
    zscore = fit_normal_model("zscore", scans=normative_without_colin.training_scans)
    ensemble = ensemble_model("ensemble", [zscore, normative_without_colin])
    assert ensemble.calibration_scores == tuple(map(max, zscore.calibration_scores, normative_without_colin.calibration_scores))
    assert ensemble.image_threshold == max(zscore.image_threshold, normative_without_colin.image_threshold)
    image = template_space().normalize_intensity(warped_normal_scan("mr-t1-colin27").image)
    score, parts, relative_map = ensemble.score(image)
    (zscore_score, _, zscore_map), (normative_score, _, normative_map) = (zscore.score(image), normative_without_colin.score(image))
    assert score == max(zscore_score, normative_score)
    assert {name.split(":")[0] for name in parts} == {"zscore", "normative"}
    assert np.array_equal(relative_map, np.maximum(zscore_map, normative_map))
    assert ensemble.cannot_detect == ENSEMBLES["ensemble"].cannot_detect
    with pytest.raises(ValueError, match="same normal subjects"):
        ensemble_model("mismatch", [zscore, fit_normal_model("zscore", scans=("mr-t1-mni152", "mr-t1-colin27"))])


@pytest.mark.slow
def test_an_ensembles_left_out_component_neither_scores_nor_sets_the_threshold(normative_without_colin, monkeypatch):
    """The shipped ensemble leaves out feature_memory's bilateral deviation; the same rule on a cheaper pair of members."""
    monkeypatch.setitem(ENSEMBLES, "pair", Ensemble(("zscore", "normative"), cannot_detect=(), left_out=("normative: deviation",)))
    zscore = fit_normal_model("zscore", scans=normative_without_colin.training_scans)
    pair = ensemble_model("pair", [zscore, normative_without_colin])
    counted = [{name: value for name, value in parts.items() if name != "normative: deviation"}
               for parts in (zscore_parts | normative_parts for zscore_parts, normative_parts
                             in zip(zscore.calibration_parts, normative_without_colin.calibration_parts))]
    assert pair.calibration_parts == tuple(counted)
    assert pair.calibration_scores == tuple(max(parts.values()) for parts in counted)
    assert pair.image_threshold == max(pair.calibration_scores)
    assert normative_without_colin.image_threshold == max(max(parts.values()) for parts in normative_without_colin.calibration_parts)
    image = template_space().normalize_intensity(warped_normal_scan("mr-t1-colin27").image)
    score, parts, _ = pair.score(image)
    assert "normative: deviation" not in parts and "normative: one-sided deviation" in parts
    assert score == max(parts.values())
    assert "deviation" in normative_without_colin.members[0].components  # the member model itself is left whole


# --- the typed result and its regions, checked against hand-computed values ----------------------

def _result(exceeds: bool, regions: list | None = None):
    from assistant.anomaly.result import AnomalyRegion, AnomalyResult

    region = AnomalyRegion(rank=1, centroid_mm=(-30.4, 12.0, 20.6), centroid_voxel=(60, 80, 40), size_ml=4.25,
                           peak_score=3.14, mean_score=1.72, label="Putamen_L")
    return AnomalyResult(method="ensemble", body_model="brain T1 MR (mr-t1-mni152, mr-t1-itk)", image_score=4.567,
                         score_parts={"normative: deviation": 4.567, "feature_memory: blob": 1.2}, threshold=3.21,
                         exceeds_threshold=exceeds, voxel_threshold=1.0, regions=[region] if regions is None else regions,
                         cannot_detect=["lesions smaller than about 5 mm"], notes=["Thresholds calibrated on normal scans."])


def test_the_summary_states_score_threshold_verdict_and_each_region():
    summary = _result(True).summary().splitlines()
    assert summary[0] == ("Anomaly screening (ensemble, normal model: brain T1 MR (mr-t1-mni152, mr-t1-itk)): image score "
                          "4.57, ABOVE the calibrated threshold 3.21 (normative: deviation 4.57, feature_memory: blob 1.20).")
    assert summary[1] == "Areas deviating most from the normal model:"
    assert summary[2] == ("  1. 4.25 mL in/near Putamen_L, centre (-30, 12, 21) mm RAS, voxel [60, 80, 40], "
                          "peak score 3.1, mean 1.7")
    assert "not a diagnosis" in summary[3]
    assert summary[4:] == ["Cannot detect: lesions smaller than about 5 mm.", "Thresholds calibrated on normal scans."]
    quiet = _result(False, regions=[]).summary()
    assert "4.57, below the calibrated threshold 3.21" in quiet and "No area exceeds the voxel threshold." in quiet


def test_the_claims_and_findings_carry_the_score_the_threshold_the_verdict_and_the_areas():
    claims = {c.path: c for c in _result(False).claims("detect_anomalies")}
    assert (claims["image_score"].value, claims["threshold"].value) == (4.567, 3.21)
    assert claims["exceeds_threshold"].value is False and claims["exceeds_threshold"].text.startswith("below")
    assert claims["regions.0.side"].value == "left putamen"  # from the AAL label Putamen_L
    score, area = _result(True).findings({"max_regions": 5})
    assert score.what == "anomaly screening score (above threshold 3.21)" and score.kind == "measurement"
    assert [(q.value, q.unit) for q in score.quantities] == [(4.567, "score")]
    assert score.parameters == {"max_regions": 5, "method": "ensemble",
                                "normal_model": "brain T1 MR (mr-t1-mni152, mr-t1-itk)"}
    assert area.kind == "anomaly" and area.where == "Putamen_L, voxel [60, 80, 40]"
    assert [(q.value, q.unit) for q in area.quantities] == [(4.25, "mL"), (3.14, "score")]
    assert area.parameters["rank"] == 1 and area.source_tool == score.source_tool == "detect_anomalies"
    assert len(_result(True, regions=[]).findings({})) == 1


def test_regions_rank_by_summed_score_and_measure_on_the_scan_grid():
    """Three areas on voxels of 2 x 2 x 2 mm (8 uL): A, 27 voxels at 2.0 (sum 54); B, 8 voxels half at 2.0 and half at
    8.0 (sum 40, peak 8); C, 30 voxels at 1.1 (sum 33). By summed score A, B, C; by size it would be C, A, B and by
    peak B, A, C."""
    from assistant.anomaly.regions import top_regions

    score_map = np.zeros((20, 20, 20), np.float32)
    score_map[2:5, 2:5, 2:5] = 2.0
    score_map[10, 14:16, 6:8] = 2.0
    score_map[11, 14:16, 6:8] = 8.0
    score_map[15:18, 2:12, 15] = 1.1
    score_map[18, 18, 18] = 1.0  # at the voxel threshold, not above it
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -10.0
    volume = Volume(score_map, affine, ScanMetadata(source_format="NumPy", modality=Modality.MR))
    seen = []
    regions = top_regions(score_map, 1.0, volume, max_regions=5, label_for_world=lambda mm: seen.append(mm) or "here")
    assert [r.rank for r in regions] == [1, 2, 3]
    a, b, c = regions
    assert a.centroid_voxel == (3, 3, 3) and a.centroid_mm == (-4.0, -4.0, -4.0) and a.label == "here"
    assert (a.size_ml, a.peak_score, a.mean_score) == (0.216, 2.0, 2.0)
    assert b.centroid_voxel == (11, 14, 6)  # score-weighted centre (10.8, 14.5, 6.5)
    assert b.centroid_mm == (11.6, 19.0, 3.0)
    assert (b.size_ml, b.peak_score, b.mean_score) == (0.064, 8.0, 5.0)
    assert (c.size_ml, c.peak_score, c.mean_score) == (0.24, 1.1, 1.1)
    assert np.allclose(seen[0], (-4.0, -4.0, -4.0))
    assert [r.centroid_voxel for r in top_regions(score_map, 1.0, volume, max_regions=1)] == [(3, 3, 3)]
    assert top_regions(np.zeros((5, 5, 5), np.float32), 1.0, volume) == []


def test_the_tool_arguments_default_to_the_benchmarks_method_and_bound_the_regions():
    from pydantic import ValidationError

    from tools.detect_anomalies import DetectAnomaliesArgs

    schema = DetectAnomaliesArgs.model_json_schema()["properties"]
    methods = next(option["enum"] for option in schema["method"]["anyOf"] if "enum" in option)
    assert methods[0] == "ensemble" and {"normative", "feature_memory", "zscore"} <= set(methods)
    assert DetectAnomaliesArgs().method is None and DetectAnomaliesArgs().max_regions == 5
    for bad in (0, 11):
        with pytest.raises(ValidationError):
            DetectAnomaliesArgs(max_regions=bad)
