"""Anomaly detection on controlled in-silico lesions in held-out real brain MRs, per method and lesion size.

Leave-one-subject-out: each fold fits every method on one normal subject (with augmentation) and
tests on augmented copies of the other, with and without synthetic lesions (hyper/hypo, sphere/
ellipsoid/irregular, 5-30 mm, half with mass effect) inserted before intensity normalisation, in
template space. Prints a table and writes JSON to evals/results/bench_anomaly.json.

    python evals/bench_anomaly.py [--methods zscore normative feature_memory autoencoder] [--per-size 6]
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import cycle
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice, compute_roc_auc

from assistant.anomaly.detector import detect_anomalies, fit_normal_model, image_score, normalized_augmentations
from assistant.anomaly.lesions import LesionSpec, insert_lesion
from assistant.anomaly.methods import METHODS
from assistant.anomaly.normal_data import augment, load_normal_scan, warped_normal_scan
from assistant.anomaly.template import TEMPLATE_RESOLUTION_MM, template_space

FOLDS = (("mr-t1-mni152", "mr-t1-colin27"), ("mr-t1-colin27", "mr-t1-mni152"))  # (train, held out)
SIZES_MM = (5, 10, 20, 30)
VOXEL_SAMPLE = 200_000


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


def evaluation_cases(train: str, held_out: str, per_size: int, seed: int):
    """(size or None, normalised image, lesion mask) for normals and lesioned copies of the held-out subject."""
    space = template_space()
    scan = warped_normal_scan(held_out)
    rng = np.random.default_rng(seed)
    normals = normalized_augmentations(scan, space, per_size, seed=seed)
    cases = [(None, image, np.zeros(space.shape, bool)) for image in normals]
    shapes = cycle(("sphere", "ellipsoid", "irregular"))
    for size in SIZES_MM:
        for index in range(per_size):
            spec = LesionSpec(diameter_mm=size, shape=next(shapes), polarity=("hyper", "hypo")[index % 2],
                              mass_effect_mm=size / 5 if index % 4 >= 2 else 0.0)
            lesion = insert_lesion(augment(scan.image, rng), space.brain_mask, (TEMPLATE_RESOLUTION_MM,) * 3, spec, rng)
            cases.append((size, space.normalize_intensity(lesion.image), lesion.mask))
    return cases


def run(methods: list[str], per_size: int) -> dict:
    space = template_space()
    mask = space.brain_mask
    results: dict = {"methods": {}, "per_size": per_size, "folds": FOLDS}
    fold_cases = {held_out: evaluation_cases(train, held_out, per_size, seed=7) for train, held_out in FOLDS}
    for method in methods:
        rows = {size: {"image_scores": [], "labels": [], "maps": [], "masks": []} for size in SIZES_MM}
        fit_seconds, score_seconds, false_positives, normals = 0.0, [], 0, 0
        for train, held_out in FOLDS:
            started = time.perf_counter()
            model = fit_normal_model(method, scans=(train,))
            fit_seconds += time.perf_counter() - started
            for size, image, lesion_mask in fold_cases[held_out]:
                started = time.perf_counter()
                score_map = model.method.score(image, mask)
                score_seconds.append(time.perf_counter() - started)
                score = image_score(score_map, mask)
                if size is None:
                    normals += 1
                    false_positives += score > model.image_threshold
                    for row in rows.values():
                        row["image_scores"].append(score)
                        row["labels"].append(0)
                else:
                    row = rows[size]
                    row["image_scores"].append(score)
                    row["labels"].append(1)
                    row["maps"].append(score_map)
                    row["masks"].append(lesion_mask)
        per_size_metrics = {}
        rng = np.random.default_rng(0)
        for size, row in rows.items():
            voxel_scores = np.concatenate([m[mask] for m in row["maps"]])
            voxel_labels = np.concatenate([m[mask] for m in row["masks"]])
            keep = np.union1d(np.flatnonzero(voxel_labels), rng.choice(len(voxel_scores), VOXEL_SAMPLE, replace=False))
            per_size_metrics[size] = {
                "image_auroc": auroc(np.array(row["image_scores"]), np.array(row["labels"])),
                "voxel_auroc": auroc(voxel_scores[keep], voxel_labels[keep]),
                "best_dice": best_dice(row["maps"], row["masks"], mask),
                "detected_at_threshold": float(np.mean([s > model.image_threshold for s, l in zip(row["image_scores"], row["labels"]) if l])),
            }
        results["methods"][method] = {
            "per_size": per_size_metrics,
            "false_positive_rate_on_held_out_normals": false_positives / max(normals, 1),
            "fit_seconds_per_fold": fit_seconds / len(FOLDS),
            "score_seconds_per_volume": float(np.median(score_seconds)),
        }
    return results


def end_to_end_seconds(method: str) -> float:
    """Full tool path on a native scan: registration, scoring, warping back and regions (model already cached)."""
    volume = load_normal_scan("mr-t1-colin27")
    detect_anomalies(volume, method=method)  # fits and caches the model if missing; not timed
    started = time.perf_counter()
    detect_anomalies(volume, method=method)
    return time.perf_counter() - started


def print_table(results: dict) -> None:
    print(f"{'method':15} {'size':>5} {'img AUROC':>9} {'vox AUROC':>9} {'best Dice':>9} {'det@thr':>7}")
    for method, info in results["methods"].items():
        for size, m in info["per_size"].items():
            print(f"{method:15} {size:>4}mm {m['image_auroc']:9.3f} {m['voxel_auroc']:9.3f} {m['best_dice']:9.3f} {m['detected_at_threshold']:7.2f}")
        print(f"{method:15} FPR on held-out normals {info['false_positive_rate_on_held_out_normals']:.2f}, "
              f"fit {info['fit_seconds_per_fold']:.0f} s/fold, score {info['score_seconds_per_volume']:.1f} s/volume"
              + (f", end-to-end {info['end_to_end_seconds']:.1f} s" if "end_to_end_seconds" in info else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS), choices=sorted(METHODS))
    parser.add_argument("--per-size", type=int, default=6, help="lesioned (and normal) volumes per size and fold")
    parser.add_argument("--end-to-end", nargs="*", default=[], help="methods to time through the full tool path")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = run(args.methods, args.per_size)
    for method in args.end_to_end:
        results["methods"].setdefault(method, {"per_size": {}})["end_to_end_seconds"] = end_to_end_seconds(method)
    print_table(results)
    output = Path(__file__).parent / "results" / "bench_anomaly.json"
    output.parent.mkdir(exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
