"""Do the VLM's frozen encoder features carry lesion presence and side? Logistic probes, split by base volume.

    python evals/probe_vlm_features.py [--data DIR] [--encoder symmetry-grid]

Cheap check before training the LLM on the features: a logistic probe fitted on the training bases is
scored on the held-out evaluation base (Colin27), and leave-one-base-out among the training bases
(the figure to design features with, since the evaluation base must not be tuned on). Two probes per
question: on the whole flattened grid, and on a summary (largest asymmetry for presence; per-side
maximum of the odd-blob channel for side, symmetry-grid only). Lesions of 15 mm or more, as in the
targets. Reads the feature cache that training uses (computes what is missing). Writes
evals/results/probe_vlm_features.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.vlm.cases import Case, default_data_dir, read_cases  # noqa: E402
from assistant.vlm.train import case_features  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "probe_vlm_features.json"
MIN_DIAMETER_MM = 15.0


def label(case: Case, question: str) -> int | None:
    """1 = lesion (presence) or right (side); None where the case does not count for the question."""
    if case.lesion is not None and case.lesion.diameter_mm < MIN_DIAMETER_MM:
        return None
    if question == "presence":
        return int(case.lesion is not None)
    return None if case.lesion is None else int(case.lesion.side == "right")


def summary(grid: torch.Tensor, question: str) -> np.ndarray:
    """[C, z, x, y] -> the largest asymmetry (channel 0), or the odd-blob evidence (channel 1) per side."""
    return np.array([float(grid[0].max())]) if question == "presence" else grid[1].amax(dim=(0, 2)).numpy()


def probe_accuracy(train: list[Case], test: list[Case], features: dict[str, torch.Tensor], question: str, summarised: bool) -> dict:
    def arrays(cases: list[Case]) -> tuple[np.ndarray, np.ndarray]:
        rows = [(features[c.case_id].float(), label(c, question)) for c in cases if label(c, question) is not None]
        inputs = [summary(grid, question) if summarised else grid.flatten().numpy() for grid, _ in rows]
        return np.array(inputs), np.array([value for _, value in rows])

    (x_train, y_train), (x_test, y_test) = arrays(train), arrays(test)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=10.0 if summarised else 0.3, max_iter=5000)).fit(x_train, y_train)
    return {"accuracy": round(float(probe.score(x_test, y_test)), 3), "cases": len(y_test),
            "majority_class": round(float(max(y_test.mean(), 1 - y_test.mean())), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--encoder", default="symmetry-grid")
    args = parser.parse_args()
    data = args.data or default_data_dir()
    cases = read_cases(data / "cases.jsonl")
    features = case_features(data, cases, args.encoder)
    train = [c for c in cases if c.split == "train"]
    splits = {f"leave out {base}": ([c for c in train if c.base != base], [c for c in train if c.base == base])
              for base in sorted({c.base for c in train})}
    splits["train bases -> held-out " + "+".join(sorted({c.base for c in cases if c.split == "eval"}))] = (
        train, [c for c in cases if c.split == "eval"])
    probes = ["full grid"] + (["summary"] if args.encoder == "symmetry-grid" else [])
    report = {"encoder": args.encoder, "min_diameter_mm": MIN_DIAMETER_MM, "results": []}
    print(f"{'question':9s} {'probe':9s} " + " | ".join(f"{name:>40s}" for name in splits))
    for question in ("presence", "side"):
        for probe in probes:
            scores = {name: probe_accuracy(fit, test, features, question, probe == "summary") for name, (fit, test) in splits.items()}
            report["results"].append({"question": question, "probe": probe, "splits": scores})
            print(f"{question:9s} {probe:9s} " + " | ".join(
                f"{s['accuracy']:>6.3f} (n={s['cases']}, majority {s['majority_class']:.3f})".rjust(40) for s in scores.values()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
