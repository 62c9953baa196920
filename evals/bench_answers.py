"""What a clinician could be misled by, counted over an eval run's report: pass rate (95% Wilson interval),
verdicts that contradict a tool's flag, numbers stated under a field of another meaning, decisions given, and the
median turn latency; with `--old`, the same figures for a run of the previous answer path on the same conversations.

Each answer is re-read against the typed results its conversation produced (rebuilt from the report's JSON), with
the same claim check the agent runs (`assistant.claims.check_claims`), so the counts cover old and new answers alike.

    python -m evals.bench_answers evals/results/<run>/report.json [--old evals/results/<old run>/report.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import numpy as np

from assistant.anomaly.result import AnomalyResult
from assistant.claims import check_claims
from assistant.decisions import asks_for_a_decision
from assistant.findings import Claim
from evals.harness.report import RunReport
from evals.harness.stats import wilson_interval
from tools.describe_scan import ScanDescription
from tools.lookup_term import TermLookup
from tools.measure_distance import DistanceMeasurement
from tools.normalize_terms import NormalizedTerms
from tools.probe_intensity import IntensityProbe
from tools.segment import SegmentResult

RESULT_TYPES = {"describe_scan": ScanDescription, "probe_intensity": IntensityProbe, "measure_distance": DistanceMeasurement,
                "detect_anomalies": AnomalyResult, "lookup_term": TermLookup, "normalize_terms": NormalizedTerms}
# "No confident match for ..." (a look-up's hedge) is not a "no"
_YES_NO = re.compile(r"^\s*(yes|no|sí|si|oui|non|ja|nein|sim|não)\b(?! confident match)", re.IGNORECASE)


def _claims(name: str, result: dict) -> list[Claim]:
    if name == "segment":
        segmentation = {**result["segmentation"], "mask": np.zeros((1, 1, 1), bool)}  # the mask is not in reports
        return SegmentResult.model_validate({**result, "segmentation": segmentation}).claims(name)
    kind = RESULT_TYPES.get(name)
    return kind.model_validate(result).claims(name) if kind else []


def audit(report: RunReport) -> dict:
    passed = sum(r.status == "passed" for r in report.results)
    counted = [r for r in report.results if r.status != "skipped"]
    verdicts, fields, decisions, latencies, problems = 0, 0, 0, [], []
    for scenario in counted:
        claims: list[Claim] = []
        conversation: list[str] = []
        for turn in scenario.turns:
            claims += [c for call in turn.tool_calls if call.result for c in _claims(call.name, call.result)]
            conversation.append(turn.user)
            if turn.error:
                continue
            latencies.append((scenario.name, turn.seconds))
            found = check_claims(turn.answer, claims, conversation)
            verdicts += any("contradicts" in p for p in found)
            fields += any("is stated as" in p for p in found)
            if asks_for_a_decision(turn.user) and ("treating clinician" not in turn.answer or _YES_NO.match(turn.answer)):
                decisions += 1
                found.append("decision given or not left to the clinician")
            problems += [f"{scenario.key} turn {turn.index}: {p}" for p in found
                         if "contradicts" in p or "is stated as" in p or "decision" in p]
            conversation.append(turn.answer)
    low, high = wilson_interval(passed, len(counted))
    return {"conversations": len(counted), "passed": passed, "pass_rate": passed / max(1, len(counted)),
            "pass_rate_95": [low, high], "contradicting_verdicts": verdicts, "wrong_field_numbers": fields,
            "decisions_given": decisions, "turns": len(latencies),
            "p50_turn_seconds": statistics.median(t for _, t in latencies) if latencies else None,
            "turn_seconds": latencies, "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--old", type=Path, help="a run of the previous answer path on the same conversations")
    args = parser.parse_args()
    runs = {"new": args.report, **({"old": args.old} if args.old else {})}
    audits = {name: audit(RunReport.model_validate_json(path.read_text(encoding="utf-8"))) for name, path in runs.items()}
    print("| run | conversations | pass rate (95% CI) | contradicting verdicts | wrong-field numbers | decisions given | p50 turn s |")
    print("|---|---|---|---|---|---|---|")
    for name, a in audits.items():
        low, high = a["pass_rate_95"]
        print(f"| {name} | {a['conversations']} | {a['passed']}/{a['conversations']} = {a['pass_rate']:.3f} ({low:.3f}-{high:.3f}) "
              f"| {a['contradicting_verdicts']} | {a['wrong_field_numbers']} | {a['decisions_given']} | {a['p50_turn_seconds']:.2f} |")
    if "old" in audits:  # latency on the very conversations both ran (the old harness cannot transform scans)
        shared = {name for name, _ in audits["old"]["turn_seconds"]}
        for name, a in audits.items():
            times = [t for n, t in a["turn_seconds"] if n in shared]
            print(f"{name}: p50 turn latency on the {len(shared)} shared conversations: {statistics.median(times):.2f} s "
                  f"over {len(times)} turns")
    for name, a in audits.items():
        for problem in a["problems"][:20]:
            print(f"{name}: {problem}")
    out = args.report.with_name("answers_audit.json")
    out.write_text(json.dumps(audits, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
