"""Anomaly detection on controlled in-silico lesions in held-out real brain MRs, per method and lesion size.

Leave-one-subject-out over the normal subjects (MNI152 average, Colin27, ITK T1): each fold fits
every method on the other subjects (its thresholds calibrated leave-one-subject-out among them) and
tests on the held-out subject. Test cases are built in the subject's native space, as a real scan
arrives: augmented re-scans, with and without a synthetic lesion (hyper/hypo, sphere/ellipsoid/
irregular, 5-30 mm, half with mass effect) inserted inside the native brain, then registered to the
template like any input. Prints a table and writes JSON to evals/results/bench_anomaly.json.

Image scores are divided by each fold's calibrated image threshold (voxel scores by the voxel
threshold) before pooling the folds, so that AUROC measures the calibrated operating scale.

    nice python evals/bench_anomaly.py [--methods zscore normative feature_memory autoencoder] [--per-size 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice, compute_roc_auc
from tqdm import tqdm

from assistant.anomaly.detector import detect_anomalies, fit_normal_model, image_score
from assistant.anomaly.lesions import LesionSpec, insert_lesion
from assistant.anomaly.methods import METHODS
from assistant.anomaly.normal_data import NORMAL_MR_SCANS, augment, load_normal_scan, warp_to_template, warped_normal_scan
from assistant.anomaly.template import template_space

SIZES_MM = (5, 10, 20, 30)
VOXEL_SAMPLE = 200_000


@dataclass(frozen=True)
class Case:
    """One held-out test scan on the template grid (not yet intensity-normalised) and its lesion mask there."""

    subject: str
    size_mm: int | None  # None: a normal scan
    warped: np.ndarray
    lesion: np.ndarray
    registration_seconds: float


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(compute_roc_auc(torch.from_numpy(scores.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))))


def best_dice(maps: list[np.ndarray], masks: list[np.ndarray], region: np.ndarray) -> float:
    """Dice of the pooled thresholded maps at the best of 20 thresholds (an upper bound, as in MedIAnomaly)."""
    scores = np.concatenate([m[region] for m in maps])
    truth = torch.from_numpy(np.concatenate([m[region] for m in masks]))[None, None].float()
    best = 0.0
    for threshold in np.quantile(scores, np.linspace(0.9, 0.9999, 20)):
        prediction = torch.from_numpy(scores > threshold)[None, None].float()
        best = max(best, float(compute_dice(prediction, truth, include_background=True)))
    return best


def held_out_cases(subject: str, per_size: int, seed: int) -> list[Case]:
    """Normal re-scans and lesioned re-scans of `subject`, built in native space and registered one by one."""
    space = template_space()
    volume = load_normal_scan(subject)
    native_brain = warped_normal_scan(subject).registration.warp_labels(space.brain_mask).astype(bool)
    rng = np.random.default_rng(seed)
    shapes = cycle(("sphere", "ellipsoid", "irregular"))
    specs: list[LesionSpec | None] = [None] * per_size
    for size in SIZES_MM:
        specs += [LesionSpec(diameter_mm=size, shape=next(shapes), polarity=("hyper", "hypo")[index % 2],
                             mass_effect_mm=size / 5 if index % 4 >= 2 else 0.0) for index in range(per_size)]
    cases = []
    for spec in tqdm(specs, desc=f"registering {subject} test scans", leave=False):
        native = augment(volume.data, rng)
        lesion_mask = np.zeros(volume.shape, bool)
        if spec is not None:
            lesion = insert_lesion(native, native_brain, volume.spacing, spec, rng)
            native, lesion_mask = lesion.image, lesion.mask
        started = time.perf_counter()
        warped = warp_to_template(dataclasses.replace(volume, data=native), space)
        seconds = time.perf_counter() - started
        lesion_on_template = warped.registration.warp_to_template(lesion_mask.astype(np.float32)) > 0.5
        cases.append(Case(subject, spec and int(spec.diameter_mm), warped.image, lesion_on_template, seconds))
    return cases


def evaluate(method: str, cases_by_subject: dict[str, list[Case]]) -> dict:
    """Fit per fold, score every held-out case, and pool the folds on the calibrated scale."""
    space = template_space()
    mask = space.brain_mask
    rows = {size: {"image_scores": [], "labels": [], "maps": [], "masks": [], "detected": []} for size in SIZES_MM}
    fit_seconds, score_seconds, false_positives, normals = [], [], 0, 0
    for subject, cases in cases_by_subject.items():
        started = time.perf_counter()
        model = fit_normal_model(method, scans=tuple(s for s in cases_by_subject if s != subject))
        fit_seconds.append(time.perf_counter() - started)
        for case in cases:
            started = time.perf_counter()
            score_map = model.method.score(space.normalize_intensity(case.warped), mask)
            score = image_score(score_map, mask, model.voxel_threshold)
            score_seconds.append(time.perf_counter() - started)
            relative_score = score / max(model.image_threshold, 1e-3)
            if case.size_mm is None:
                normals += 1
                false_positives += score > model.image_threshold
                for row in rows.values():
                    row["image_scores"].append(relative_score)
                    row["labels"].append(0)
                continue
            row = rows[case.size_mm]
            row["image_scores"].append(relative_score)
            row["labels"].append(1)
            row["maps"].append(score_map / model.voxel_threshold)
            row["masks"].append(case.lesion)
            row["detected"].append(score > model.image_threshold)
    rng = np.random.default_rng(0)
    per_size = {}
    for size, row in rows.items():
        voxel_scores = np.concatenate([m[mask] for m in row["maps"]])
        voxel_labels = np.concatenate([m[mask] for m in row["masks"]])
        keep = np.union1d(np.flatnonzero(voxel_labels), rng.choice(len(voxel_scores), VOXEL_SAMPLE, replace=False))
        per_size[size] = {
            "image_auroc": auroc(np.array(row["image_scores"]), np.array(row["labels"])),
            "voxel_auroc": auroc(voxel_scores[keep], voxel_labels[keep]),
            "best_dice": best_dice(row["maps"], row["masks"], mask),
            "detected_at_threshold": float(np.mean(row["detected"])),
        }
    return {
        "per_size": per_size,
        "false_positive_rate_on_held_out_normals": false_positives / max(normals, 1),
        "held_out_normals": normals,
        "fit_seconds_per_fold": float(np.mean(fit_seconds)),
        "score_seconds_per_volume": float(np.median(score_seconds)),
    }


def end_to_end_seconds(method: str) -> float:
    """Full tool path on a native scan: registration, scoring, warping back and regions (model already cached)."""
    volume = load_normal_scan("mr-t1-colin27")
    detect_anomalies(volume, method=method)  # fits and caches the model if missing; not timed
    started = time.perf_counter()
    detect_anomalies(volume, method=method)
    return time.perf_counter() - started


def print_table(results: dict) -> None:
    print(f"subjects (leave-one-out folds): {', '.join(results['subjects'])}; "
          f"registration {results['registration_seconds_per_volume']:.1f} s/volume")
    print(f"{'method':15} {'size':>5} {'img AUROC':>9} {'vox AUROC':>9} {'best Dice':>9} {'det@thr':>7}")
    for method, info in results["methods"].items():
        print_method(method, info)


def print_method(method: str, info: dict) -> None:
    for size, m in info["per_size"].items():
        print(f"{method:15} {size:>4}mm {m['image_auroc']:9.3f} {m['voxel_auroc']:9.3f} {m['best_dice']:9.3f} {m['detected_at_threshold']:7.2f}")
    if "false_positive_rate_on_held_out_normals" in info:
        print(f"{method:15} FPR on {info['held_out_normals']} held-out normals {info['false_positive_rate_on_held_out_normals']:.2f}, "
              f"fit {info['fit_seconds_per_fold']:.0f} s/fold, score {info['score_seconds_per_volume']:.1f} s/volume"
              + (f", end-to-end {info['end_to_end_seconds']:.1f} s" if "end_to_end_seconds" in info else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS), choices=sorted(METHODS))
    parser.add_argument("--subjects", nargs="+", default=list(NORMAL_MR_SCANS), choices=NORMAL_MR_SCANS)
    parser.add_argument("--per-size", type=int, default=4, help="lesioned (and normal) volumes per size and fold")
    parser.add_argument("--end-to-end", nargs="*", default=[], help="methods to time through the full tool path")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cases = {subject: held_out_cases(subject, args.per_size, seed=7) for subject in args.subjects}
    results: dict = {
        "subjects": args.subjects, "per_size": args.per_size, "methods": {},
        "registration_seconds_per_volume": float(np.median([c.registration_seconds for cs in cases.values() for c in cs])),
    }
    for method in args.methods:
        results["methods"][method] = evaluate(method, cases)
        print_method(method, results["methods"][method])
    for method in args.end_to_end:
        results["methods"].setdefault(method, {"per_size": {}})["end_to_end_seconds"] = end_to_end_seconds(method)
    print_table(results)
    output = Path(__file__).parent / "results" / "bench_anomaly.json"
    output.parent.mkdir(exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
