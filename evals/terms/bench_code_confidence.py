"""The bound above which a look-up's best hit is stated as the code (tools.lookup_term.CONFIDENT_MATCH).

Lay names with their right ICD-10 category (evals/terms/code_confidence.jsonl, a dev and a test half): for each, the
best hit's match score and whether its ICD-10 code is right. A bound is safe when no wrong best hit reaches it; the
dev half chooses the lowest such bound, the test half reports what it states wrongly (target 0) and how many right
codes it still states, with 95% Wilson intervals.

    python -m evals.terms.bench_code_confidence
"""

from __future__ import annotations

import json
from pathlib import Path

from evals.harness.stats import wilson_interval
from evals.terms.common import write_results
from tools.lookup_term import CONFIDENT_MATCH, lookup_term

BANK = Path(__file__).with_name("code_confidence.jsonl")


def main() -> None:
    rows = [json.loads(line) for line in BANK.read_text(encoding="utf-8").splitlines() if line.strip()]
    scored = []
    for row in rows:
        hits = lookup_term(row["query"], k=5, sources=["icd10"]).hits
        code = hits[0].concept.codes.get("ICD-10", "") if hits else ""
        scored.append({**row, "score": hits[0].score if hits else 0.0, "code": code, "label": hits[0].concept.preferred if hits else "",
                       "right": code.startswith(row["icd10"])})
    dev = [r for r in scored if r["split"] == "dev"]
    wrong_dev = [r["score"] for r in dev if not r["right"]]
    chosen = round(max(wrong_dev, default=0.0) + 0.005, 3)
    print(f"dev: lowest bound above every wrong best hit: {chosen} (shipped CONFIDENT_MATCH = {CONFIDENT_MATCH})")
    for split in ("dev", "test"):
        part = [r for r in scored if r["split"] == split]
        stated = [r for r in part if r["score"] >= CONFIDENT_MATCH]
        wrong = [r for r in stated if not r["right"]]
        right_total = sum(r["right"] for r in part)
        kept = sum(r["right"] for r in stated)
        lo, hi = wilson_interval(len(wrong), max(1, len(stated)))
        print(f"{split}: {len(part)} queries, codes stated {len(stated)}, wrong among them {len(wrong)} "
              f"({lo:.2f}-{hi:.2f}), right codes kept {kept}/{right_total}")
        for r in part:
            print(f"  {r['query']!r:40} score {r['score']:.3f} -> {r['code']:8} {'right' if r['right'] else 'WRONG'} "
                  f"{'stated' if r['score'] >= CONFIDENT_MATCH else 'hedged'} ({r['label']})")
    write_results("code_confidence", {"bound": CONFIDENT_MATCH, "dev_lowest_safe_bound": chosen, "rows": scored})


if __name__ == "__main__":
    main()
