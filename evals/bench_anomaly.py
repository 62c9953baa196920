"""Anomaly detection on controlled in-silico lesions in held-out real brain MRs, per method, lesion size and kind.

Leave-one-subject-out over the normal subjects (MNI152 average, Colin27, ITK T1, pycortex S1, ROBEX reference): each
fold fits every method on the other subjects (its thresholds calibrated leave-one-subject-out among them) and
tests on the held-out subject. Test cases are built in the subject's native space, as a real scan
arrives: augmented re-scans, with and without a synthetic lesion (hyper/hypo, sphere/ellipsoid/
irregular, 5-30 mm, one in three hyperintense ones with mass effect) inserted inside the native brain,
then registered to the template like any input. Rows per size, and for lesions >= 10 mm (the target
sizes) split by polarity and mass effect. Prints a table and writes JSON to evals/results/bench_anomaly.json.

Image scores are taken as their margin over each fold's image threshold (the highest score among its
held-out normals; voxel scores are already in multiples of the voxel threshold) before pooling the folds, so
that AUROC measures the calibrated operating scale; each image AUROC comes with a 95% bootstrap interval.
Each image-score component (per method: deviation, one-sided deviation, one-sided blob) also gets its own
image AUROC per size. Several seeds run in one process share the fold models (which do not depend on the cases);
each seed's run stores its per-case margins in its own file, and `--pool` adds them up, also per held-out subject
against its own normal re-scans.

`--baseline SUBJECT ...` scores the same cases a second time with fold models fitted on only those subjects (minus
the held-out one), e.g. the three subjects of model v8, and prints the paired difference in image AUROC with a
bootstrap interval that resamples the same cases for both configurations.

    OMP_NUM_THREADS=1 nice -n 19 python evals/bench_anomaly.py --per-size 3 --seed 7 23 --cases /tmp/anomaly_cases \
        --methods ensemble --baseline mr-t1-mni152 mr-t1-colin27 mr-t1-itk
    python evals/bench_anomaly.py --pool evals/results/bench_anomaly.json evals/results/bench_anomaly_seed23.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import time
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice, compute_roc_auc
from tqdm import tqdm

from assistant.anomaly.detector import ENSEMBLES, SCREENING_METHODS, NormalModel, detect_anomalies, ensemble_model, fit_normal_model
from assistant.anomaly.lesions import LesionSpec, insert_lesion
from assistant.anomaly.normal_data import DEFAULT_NORMAL_SUBJECTS, augment, load_normal_scan, warp_to_template, warped_normal_scan
from assistant.anomaly.template import template_space

SIZES_MM = (5, 10, 20, 30)
REPORTED_SEED = 7  # the reported test set; other seeds (development or confirmation sets) are written to their own results file
VOXEL_SAMPLE = 200_000
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Case:
    """One held-out test scan on the template grid (not yet intensity-normalised) and its lesion mask there."""

    subject: str
    spec: LesionSpec | None  # None: a normal scan
    warped: np.ndarray
    lesion: np.ndarray
    registration_seconds: float

    @property
    def size_mm(self) -> int | None:
        return None if self.spec is None else int(self.spec.diameter_mm)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(compute_roc_auc(torch.from_numpy(scores.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))))


def wins(normal_margins: list[float], lesion_margins: list[float]) -> np.ndarray:
    """1 where a lesion (row) scores above a normal (column), 0.5 on a tie: the image AUROC is the mean."""
    lesions, normals = np.asarray(lesion_margins)[:, None], np.asarray(normal_margins)[None, :]
    return (lesions > normals) + 0.5 * (lesions == normals)


def bootstrap_aurocs(*win_matrices: np.ndarray) -> np.ndarray:
    """AUROC of each matrix under the same resampled lesions (rows) and normals (columns), one row per draw.

    Matrices of two configurations on the same cases are resampled together, so their difference is paired.
    """
    rng = np.random.default_rng(0)
    rows, columns = win_matrices[0].shape
    draws = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        lesions, normals = rng.integers(rows, size=rows), rng.integers(columns, size=columns)
        draws.append([matrix[lesions][:, normals].mean() for matrix in win_matrices])
    return np.asarray(draws)


def image_auroc_with_interval(normal_margins: list[float], lesion_margins: list[float]) -> tuple[float, list[float]]:
    """Image AUROC (ties count half) and its 95% bootstrap interval, resampling normals and lesions separately.

    With 9 normals and 9 lesions per size one case moves the AUROC by up to 0.11: the interval says how far
    a figure can be trusted, and pooling runs on several seeds (`--pool`) narrows it.
    """
    matrix = wins(normal_margins, lesion_margins)
    draws = bootstrap_aurocs(matrix)[:, 0]
    return float(matrix.mean()), [float(bound) for bound in np.percentile(draws, [2.5, 97.5])]


def paired_difference(cases: list[dict]) -> dict:
    """Image AUROC of the margins and of the baseline margins on the same cases, and their difference with a
    95% paired bootstrap interval (each draw resamples the same lesions and normals for both)."""
    normals = [case for case in cases if case["lesion"] is None]
    lesions = [case for case in cases if case["lesion"] is not None]
    matrices = [wins([case[key] for case in normals], [case[key] for case in lesions]) for key in ("margin", "baseline_margin")]
    draws = bootstrap_aurocs(*matrices)
    return {"cases": len(lesions), "image_auroc": float(matrices[0].mean()), "baseline_image_auroc": float(matrices[1].mean()),
            "difference": float(matrices[0].mean() - matrices[1].mean()),
            "difference_95ci": [float(bound) for bound in np.percentile(draws[:, 0] - draws[:, 1], [2.5, 97.5])]}


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
        cases.append(Case(subject, spec, warped.image, lesion_on_template, seconds))
    return cases


GROUPS = {  # lesion subsets of the target sizes (>= 10 mm), reported beside the per-size rows
    ">=10mm hyper": lambda spec: spec.diameter_mm >= 10 and spec.polarity == "hyper",
    ">=10mm hypo": lambda spec: spec.diameter_mm >= 10 and spec.polarity == "hypo",
    ">=10mm mass effect": lambda spec: spec.diameter_mm >= 10 and spec.mass_effect_mm > 0,
    ">=10mm no mass effect": lambda spec: spec.diameter_mm >= 10 and spec.mass_effect_mm == 0,
}


@dataclass
class Scored:
    """One held-out case scored by a fold's model, on that fold's calibrated scale (margin over the threshold)."""

    case: Case
    margin: float  # image score minus the fold's image threshold: above 0 is flagged
    baseline_margin: float | None  # the same under the baseline configuration's fold model (--baseline)
    relative_map: np.ndarray  # voxel scores in multiples of the voxel threshold
    parts: dict[str, float]  # each image-score component, standardised against the fold's held-out normals


def metrics(normals: list[Scored], lesioned: list[Scored], mask: np.ndarray, rng: np.random.Generator) -> dict:
    """Image AUROC against all held-out normals; voxel AUROC and best Dice over the lesioned maps."""
    voxel_scores = np.concatenate([s.relative_map[mask] for s in lesioned])
    voxel_labels = np.concatenate([s.case.lesion[mask] for s in lesioned])
    keep = np.union1d(np.flatnonzero(voxel_labels), rng.choice(len(voxel_scores), VOXEL_SAMPLE, replace=False))
    image_auroc, interval = image_auroc_with_interval([s.margin for s in normals], [s.margin for s in lesioned])
    return {
        "cases": len(lesioned),
        "image_auroc": image_auroc,
        "image_auroc_95ci": interval,
        "voxel_auroc": auroc(voxel_scores[keep], voxel_labels[keep]),
        "best_dice": best_dice([s.relative_map for s in lesioned], [s.case.lesion for s in lesioned], mask),
        "detected_at_threshold": float(np.mean([s.margin > 0.0 for s in lesioned])),
    }


FOLD_MODELS: dict[tuple[str, tuple[str, ...]], NormalModel] = {}  # (method, training subjects): shared by seeds and members
FIT_SECONDS: dict[tuple[str, tuple[str, ...]], float] = {}


def fold_model(method: str, held_out: str, subjects: list[str]) -> NormalModel:
    """`method`'s normal model fitted and calibrated on `subjects` without `held_out`, fitted once per run."""
    training = tuple(s for s in subjects if s != held_out)
    if (method, training) not in FOLD_MODELS:
        if method in ENSEMBLES:
            members = ENSEMBLES[method].members
            FOLD_MODELS[method, training] = ensemble_model(method, [fold_model(m, held_out, subjects) for m in members])
            FIT_SECONDS[method, training] = sum(FIT_SECONDS[m, training] for m in members)
        else:
            started = time.perf_counter()
            FOLD_MODELS[method, training] = fit_normal_model(method, scans=training)
            FIT_SECONDS[method, training] = time.perf_counter() - started
    return FOLD_MODELS[method, training]


def evaluate(method: str, cases_by_subject: dict[str, list[Case]], subjects: list[str], baseline: list[str] | None = None) -> dict:
    """Score every held-out case with its fold's model (fitted on the other `subjects`; and the baseline's), and pool
    the folds on the calibrated scale."""
    space = template_space()
    mask = space.brain_mask
    scored: list[Scored] = []
    score_seconds = []
    for subject, cases in cases_by_subject.items():
        model = fold_model(method, subject, subjects)
        baseline_model = fold_model(method, subject, baseline) if baseline else None
        for case in cases:
            image = space.normalize_intensity(case.warped)
            started = time.perf_counter()
            score, parts, relative_map = model.score(image)
            score_seconds.append(time.perf_counter() - started)
            baseline_margin = baseline_model.score(image)[0] - baseline_model.image_threshold if baseline_model else None
            scored.append(Scored(case, score - model.image_threshold, baseline_margin, relative_map, parts))
    normals = [s for s in scored if s.case.spec is None]
    lesioned = [s for s in scored if s.case.spec is not None]
    rng = np.random.default_rng(0)
    per_size = {size: metrics(normals, [s for s in lesioned if s.case.size_mm == size], mask, rng) for size in SIZES_MM}
    grouped = {name: [s for s in lesioned if keep(s.case.spec)] for name, keep in GROUPS.items()}
    groups = {name: metrics(normals, members, mask, rng) for name, members in grouped.items() if members}  # small runs miss some
    part_auroc = {part: {size: auroc(np.array([s.parts[part] for s in normals + sized]),
                                     np.array([0] * len(normals) + [1] * len(sized)))
                         for size in SIZES_MM for sized in [[s for s in lesioned if s.case.size_mm == size]]}
                  for part in scored[0].parts}
    margins = [{"subject": s.case.subject, "lesion": None if s.case.spec is None else dataclasses.asdict(s.case.spec),
                "margin": s.margin, "parts": s.parts} | ({"baseline_margin": s.baseline_margin} if baseline else {})
               for s in scored]  # per case, so runs on several seeds can be pooled
    return {
        "per_size": per_size,
        "groups": groups,
        "image_auroc_per_component": part_auroc,
        "false_positive_rate_on_held_out_normals": float(np.mean([s.margin > 0.0 for s in normals])),
        "held_out_normals": len(normals),
        "fit_seconds_per_fold": float(np.mean([FIT_SECONDS[method, tuple(s for s in subjects if s != subject)]
                                               for subject in cases_by_subject])),
        "score_seconds_per_volume": float(np.median(score_seconds)),
        "margins": margins,
    } | ({"baseline": {"subjects": baseline, "paired": paired_rows(margins),
                       "false_positive_rate_on_held_out_normals": float(np.mean([s.baseline_margin > 0.0 for s in normals]))}}
         if baseline else {})


def end_to_end_seconds(method: str) -> float:
    """Full tool path on a native scan: registration, scoring, warping back and regions (model already cached).

    Fits the default normal model first if it is not cached; in the process that fitted the fold models that reuses
    their fits (one subject held out of five is the default model's calibration fold)."""
    volume = load_normal_scan("mr-t1-colin27")
    detect_anomalies(volume, method=method)  # fits and caches the model if missing; not timed
    started = time.perf_counter()
    detect_anomalies(volume, method=method)
    return time.perf_counter() - started


def print_table(results: dict) -> None:
    print(f"subjects: {', '.join(results['subjects'])}; held out (one fold each): {', '.join(results['held_out'])}; "
          f"registration {results['registration_seconds_per_volume']:.1f} s/volume")
    print(f"{'method':15} {'lesions':>21} {'cases':>5} {'img AUROC':>9} {'95% interval':>13} {'vox AUROC':>9} {'best Dice':>9} {'det@thr':>7}")
    for method, info in results["methods"].items():
        print_method(method, info)


def print_method(method: str, info: dict) -> None:
    rows = {f"{size}mm": m for size, m in info["per_size"].items()} | info.get("groups", {})
    for name, m in rows.items():
        low, high = m["image_auroc_95ci"]
        print(f"{method:15} {name:>21} {m['cases']:5} {m['image_auroc']:9.3f} {f'{low:.2f}-{high:.2f}':>13} "
              f"{m['voxel_auroc']:9.3f} {m['best_dice']:9.3f} {m['detected_at_threshold']:7.2f}")
    for part, by_size in info.get("image_auroc_per_component", {}).items():
        print(f"{method:15} image AUROC of {part} alone: "
              + ", ".join(f"{size}mm {value:.3f}" for size, value in by_size.items()))
    if "false_positive_rate_on_held_out_normals" in info:
        print(f"{method:15} FPR on {info['held_out_normals']} held-out normals {info['false_positive_rate_on_held_out_normals']:.2f}, "
              f"fit {info['fit_seconds_per_fold']:.0f} s/fold, score {info['score_seconds_per_volume']:.1f} s/volume"
              + (f", end-to-end {info['end_to_end_seconds']:.1f} s" if "end_to_end_seconds" in info else ""), flush=True)
    if "baseline" in info:
        print_paired(method, info["baseline"])


def print_paired(method: str, baseline: dict) -> None:
    print(f"{method:15} paired against the baseline fitted on {', '.join(baseline['subjects'])} (same cases), "
          f"baseline FPR {baseline['false_positive_rate_on_held_out_normals']:.2f}:")
    for name, row in baseline["paired"].items():
        low, high = row["difference_95ci"]
        print(f"{method:15} {name:>8} {row['cases']:5} img AUROC {row['image_auroc']:.3f} vs baseline {row['baseline_image_auroc']:.3f}: "
              f"difference {row['difference']:+.3f} ({low:+.2f} to {high:+.2f})", flush=True)


def pooled(paths: list[Path]) -> dict:
    """Image AUROC per method and lesion size over the cases of several runs (seeds), from their stored margins.

    Every run scores its cases with the same leave-one-subject-out fold models, so margins over the folds'
    thresholds are on one scale across runs.
    """
    runs = [json.loads(path.read_text()) for path in paths]
    methods = [m for m in runs[0]["methods"] if all("margins" in run["methods"].get(m, {}) for run in runs)]
    results: dict = {"runs": [str(path) for path in paths], "methods": {}}
    for method in methods:
        cases = [case for run in runs for case in run["methods"][method]["margins"]]
        normals = [case["margin"] for case in cases if case["lesion"] is None]
        subjects = dict.fromkeys(case["subject"] for case in cases)
        results["methods"][method] = {
            "rows": pooled_rows(cases),
            **({"baseline": {"subjects": runs[0]["methods"][method]["baseline"]["subjects"], "paired": paired_rows(cases),
                             "false_positive_rate_on_held_out_normals":
                                 float(np.mean([case["baseline_margin"] > 0.0 for case in cases if case["lesion"] is None]))}}
               if all("baseline_margin" in case for case in cases) else {}),
            "within_subject": {subject: {name: row["image_auroc"] for name, row in
                                         pooled_rows([case for case in cases if case["subject"] == subject]).items()}
                               for subject in subjects},
            "held_out_normals": len(normals),
            "false_positive_rate_on_held_out_normals": float(np.mean([m > 0.0 for m in normals])),
        }
    return results


SIZE_ROWS = {f"{size}mm": lambda d, size=size: d == size for size in SIZES_MM} | {">=10mm": lambda d: d >= 10}


def paired_rows(cases: list[dict]) -> dict[str, dict]:
    """The paired comparison with the baseline configuration per lesion size (and all >= 10 mm)."""
    normals = [case for case in cases if case["lesion"] is None]
    return {name: paired_difference(normals + sized) for name, keep in SIZE_ROWS.items()
            for sized in [[case for case in cases if case["lesion"] and keep(case["lesion"]["diameter_mm"])]] if sized and normals}


def pooled_rows(cases: list[dict]) -> dict[str, dict]:
    """Image AUROC with interval and detection rate per lesion size (and all >= 10 mm), against the normals among `cases`.

    Over one subject's cases alone this is the within-subject AUROC: its lesions against its own normal re-scans,
    free of how the folds' calibrated scales line up, so it shows which held-out brains the misses come from.
    """
    normals = [case["margin"] for case in cases if case["lesion"] is None]
    rows = {}
    for name, keep in SIZE_ROWS.items():
        lesions = [case["margin"] for case in cases if case["lesion"] and keep(case["lesion"]["diameter_mm"])]
        if not lesions or not normals:
            continue
        image_auroc, interval = image_auroc_with_interval(normals, lesions)
        rows[name] = {"cases": len(lesions), "image_auroc": image_auroc, "image_auroc_95ci": interval,
                      "detected_at_threshold": float(np.mean([m > 0.0 for m in lesions]))}
    return rows


def print_pooled(results: dict) -> None:
    print(f"pooled over {len(results['runs'])} runs: {', '.join(results['runs'])}")
    print(f"{'method':15} {'lesions':>8} {'cases':>5} {'img AUROC':>9} {'95% interval':>13} {'det@thr':>7}")
    for method, info in results["methods"].items():
        for name, m in info["rows"].items():
            low, high = m["image_auroc_95ci"]
            print(f"{method:15} {name:>8} {m['cases']:5} {m['image_auroc']:9.3f} {f'{low:.2f}-{high:.2f}':>13} "
                  f"{m['detected_at_threshold']:7.2f}")
        for subject, by_size in info["within_subject"].items():
            print(f"{method:15} within {subject}: " + ", ".join(f"{name} {value:.3f}" for name, value in by_size.items()))
        print(f"{method:15} false alarms on {info['held_out_normals']} held-out normals: "
              f"{info['false_positive_rate_on_held_out_normals']:.2f}")
        if "baseline" in info:
            print_paired(method, info["baseline"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(SCREENING_METHODS), choices=SCREENING_METHODS)
    parser.add_argument("--subjects", nargs="+", default=list(DEFAULT_NORMAL_SUBJECTS), choices=DEFAULT_NORMAL_SUBJECTS)
    parser.add_argument("--per-size", type=int, default=4, help="lesioned (and normal) volumes per size and fold")
    parser.add_argument("--end-to-end", nargs="*", default=[], choices=SCREENING_METHODS,
                        help="methods (of --methods) to time through the full tool path; fits and caches their normal model")
    parser.add_argument("--cases", type=Path, help="folder of registered test cases, one pickle per subject, seed and --per-size: "
                                                   "read if present, else written (registration is most of the run time; the "
                                                   "cases do not depend on the methods, so a second process can build them)")
    parser.add_argument("--cases-only", action="store_true", help="build (and with --cases store) the test cases, then stop")
    parser.add_argument("--seed", type=int, nargs="+", default=[REPORTED_SEED],
                        help="augmentation and lesion placement seeds, run one after the other on the same fold models: 7 is the "
                             "reported test set; choose anything on other seeds (development sets)")
    parser.add_argument("--held-out", nargs="+", choices=DEFAULT_NORMAL_SUBJECTS, metavar="SUBJECT",
                        help="run only these subjects' folds (default: all of --subjects); runs on complementary subsets "
                             "(e.g. two processes on a 2-core machine) write their own results files and `--pool` joins them")
    parser.add_argument("--folds", type=Path, help="pickle of the fitted fold models: read if present, else written once "
                                                   "they are fitted (a later run on other seeds skips the fitting)")
    parser.add_argument("--baseline", nargs="+", choices=DEFAULT_NORMAL_SUBJECTS, metavar="SUBJECT",
                        help="also score every case with fold models fitted on only these subjects (minus the held-out one) "
                             "and print the paired difference in image AUROC")
    parser.add_argument("--pool", nargs="+", type=Path, metavar="RESULTS_JSON",
                        help="pool the stored margins of earlier runs (several seeds) instead of running; writes bench_anomaly_pooled.json")
    args = parser.parse_args()
    if args.pool:
        missing = [str(path) for path in args.pool if not path.exists()]
        if missing:
            parser.error(f"no results file at {', '.join(missing)}")
        results = pooled(args.pool)
        print_pooled(results)
        output = Path(__file__).parent / "results" / "bench_anomaly_pooled.json"
        output.parent.mkdir(exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
        print(f"wrote {output}")
        return
    if not args.cases_only:  # the fold models first: meanwhile `--cases-only` in another process can register the cases
        fit_fold_models(args)
    for seed in args.seed:
        cases = {subject: stored_cases(args.cases, subject, args.per_size, seed) for subject in args.held_out or args.subjects}
        if not args.cases_only:
            run_seed(args, seed, cases)


def fit_fold_models(args: argparse.Namespace) -> None:
    """Every fold model of the run (and of the baseline), read from `--folds` if stored there, else fitted (and stored)."""
    if args.folds and args.folds.exists():
        stored = pickle.loads(args.folds.read_bytes())  # our own file, written below
        # ensembles are assembled again from their stored members, so a change to ENSEMBLES is measured without refitting
        FOLD_MODELS.update({key: model for key, model in stored["models"].items() if key[0] not in ENSEMBLES})
        FIT_SECONDS.update(stored["fit_seconds"])
    for method in args.methods:
        for subject in args.held_out or args.subjects:
            fold_model(method, subject, args.subjects)
            if args.baseline:
                fold_model(method, subject, args.baseline)
    if args.folds:
        temporary = args.folds.with_suffix(".tmp")
        temporary.write_bytes(pickle.dumps({"models": FOLD_MODELS, "fit_seconds": FIT_SECONDS}))
        temporary.replace(args.folds)


def stored_cases(folder: Path | None, subject: str, per_size: int, seed: int) -> list[Case]:
    """`subject`'s test cases for `seed`, read from `folder` if an earlier run stored them, else built (and stored)."""
    path = folder / f"{subject}-seed{seed}-per{per_size}.pkl" if folder else None
    if path and path.exists():
        return pickle.loads(path.read_bytes())  # our own file, written below
    cases = held_out_cases(subject, per_size, seed=seed)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(pickle.dumps(cases))
        temporary.replace(path)  # whole or absent, for a second process reading the folder
    return cases


def run_seed(args: argparse.Namespace, seed: int, cases: dict[str, list[Case]]) -> None:
    results: dict = {
        "seed": seed, "subjects": args.subjects, "held_out": list(cases), "per_size": args.per_size, "methods": {},
        "registration_seconds_per_volume": float(np.median([c.registration_seconds for cs in cases.values() for c in cs])),
    }
    name = "bench_anomaly" + ("" if seed == REPORTED_SEED else f"_seed{seed}")
    if args.held_out:
        name += "_held-out-" + "-".join(subject.removeprefix("mr-t1-") for subject in args.held_out)
    output = Path(__file__).parent / "results" / f"{name}.json"
    output.parent.mkdir(exist_ok=True)
    for method in args.methods:  # the JSON is rewritten after each method, so a long run keeps what it measured
        results["methods"][method] = evaluate(method, cases, args.subjects, args.baseline)
        print_method(method, results["methods"][method])
        output.write_text(json.dumps(results, indent=2, default=str))
        if method in args.end_to_end and seed == args.seed[0]:  # after the first seed's figures are safe
            results["methods"][method]["end_to_end_seconds"] = end_to_end_seconds(method)
            print(f"{method:15} end-to-end {results['methods'][method]['end_to_end_seconds']:.1f} s", flush=True)
            output.write_text(json.dumps(results, indent=2, default=str))
    print(f"seed {seed}:")
    print_table(results)
    print(f"wrote {output}", flush=True)


if __name__ == "__main__":
    main()
