"""Do the VLM's frozen encoder features carry the answers? Logistic probes, split by base volume.

    python evals/probe_vlm_features.py [--data DIR] [--encoder symmetry-grid]

Cheap check before training the LLM on the features: for every closed question (presence, count,
side, lobe, size band, modality, coverage), a logistic probe on the flattened feature grid is fitted
on all bases but one and scored on the one left out, for each base in turn (cases that do not ask the
question are skipped); the accuracies are pooled over the folds, with the majority answer of the
training folds beside them. Run it on a development sample (another seed than the benchmark's),
since features are designed with it. Reads the feature cache that training uses (computes what is
missing). Writes evals/results/probe_vlm_features.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.vlm.cases import Case, default_data_dir, read_cases  # noqa: E402
from assistant.vlm.encoder import encoder_info  # noqa: E402
from assistant.vlm.train import case_features  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "probe_vlm_features.json"
TOPICS = ("presence", "count", "side", "lobe", "size_band", "modality", "coverage")


def answers(cases: list[Case], topic: str) -> list[tuple[Case, str]]:
    return [(case, pair.answer) for case in cases for pair in case.qa if pair.topic == topic]


def leave_one_base_out(cases: list[Case], features: dict[str, torch.Tensor], topic: str) -> dict:
    """Pooled accuracy of a probe fitted without each base and scored on it, and of the training folds' commonest answer."""
    right = majority_right = total = 0
    for base in sorted({case.base for case in cases}):
        fit = answers([c for c in cases if c.base != base], topic)
        test = answers([c for c in cases if c.base == base], topic)
        if not test or len({answer for _, answer in fit}) < 2:
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=5000))
        probe.fit(np.array([features[c.case_id].float().flatten().numpy() for c, _ in fit]), [answer for _, answer in fit])
        predicted = probe.predict(np.array([features[c.case_id].float().flatten().numpy() for c, _ in test]))
        commonest = Counter(answer for _, answer in fit).most_common(1)[0][0]
        right += sum(p == answer for p, (_, answer) in zip(predicted, test))
        majority_right += sum(answer == commonest for _, answer in test)
        total += len(test)
    return {"accuracy": round(right / total, 3), "majority": round(majority_right / total, 3), "n": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--encoder", default="symmetry-grid")
    args = parser.parse_args()
    data = args.data or default_data_dir()
    cases = read_cases(data / "cases.jsonl")
    features = case_features(data, cases, args.encoder)
    report = {"encoder": encoder_info(args.encoder).name, "encoder_version": encoder_info(args.encoder).version,
              "data": str(data), "bases": sorted({c.base for c in cases}), "topics": {}}
    print(f"{'topic':10s} {'probe':>8s} {'majority':>9s} {'n':>4s}")
    for topic in TOPICS:
        result = leave_one_base_out(cases, features, topic)
        report["topics"][topic] = result
        print(f"{topic:10s} {result['accuracy']:8.3f} {result['majority']:9.3f} {result['n']:4d}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
