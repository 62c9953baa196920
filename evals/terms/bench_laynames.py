"""Lay name -> code: recall@1 / recall@10 of the right code per system, before and after the
concept graph, and the precision of the codes the answer states (calibrated confidence >= bound).

"before" is the index's hits read as they were (each hit's own source codes, best first); "after"
is `answer_code`: the concept first, then its code in the asked system through the concept graph.
ICD-10 is judged at category level (the hand-written set lists accepted categories), the other
systems by exact code. Wilson 95% intervals; the sets are in `evals/terms/laynames.py`.

Retrieval runs once per query; `--fit` (development half only) then fits the confidence model on
every candidate's features and picks the bound in memory, and the table is scored with it.

    python -m evals.terms.bench_laynames --split dev --fit     # tune and calibrate on dev only
    python -m evals.terms.bench_laynames --split test          # report once
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path

from evals.harness.stats import wilson_interval as wilson
from evals.terms.laynames import LayPair, load_pairs

RESULTS = Path(__file__).resolve().parents[1] / "results" / "terms_laynames.json"
TARGET_PRECISION = 0.95
K = 10



def correct(system: str, code: str, gold: list[str]) -> bool:
    return code[:3] in gold if system == "ICD-10" else code in gold


def before_codes(index, query: str, system: str) -> list[str]:
    codes = []
    for hit in index.search(query, k=K):
        code = hit.concept.codes.get(system)
        if code and code not in codes:
            codes.append(code)
    return codes


def retrieve(index, pairs: list[LayPair]) -> list[dict]:
    """One retrieval per (query, system): the candidates before calibration and the old codes."""
    from assistant.terminology.coding import code_candidates

    queries = []
    for pair in pairs:
        for system, gold in pair.gold.items():
            queries.append({"query": pair.query, "kind": pair.kind, "system": system, "gold": gold,
                            "candidates": code_candidates(index, pair.query, system, K),
                            "before": before_codes(index, pair.query, system)})
    return queries


def score(queries: list[dict], weights: list[float], bound: float) -> list[dict]:
    from assistant.terminology.coding import rank_candidates

    records = []
    for q in queries:
        ranked = rank_candidates(q["candidates"], weights, K)
        codes = [c.code for c in ranked]
        best = ranked[0] if ranked else None
        stated = best.code if best is not None and best.confidence >= bound else None
        system, gold, old = q["system"], q["gold"], q["before"]
        records.append({"query": q["query"], "kind": q["kind"], "system": system, "gold": gold, "after": codes,
                        "before": old, "stated": stated, "confidence": best.confidence if best else 0.0,
                        "after@1": bool(codes) and correct(system, codes[0], gold),
                        "after@10": any(correct(system, c, gold) for c in codes),
                        "before@1": bool(old) and correct(system, old[0], gold),
                        "before@10": any(correct(system, c, gold) for c in old)})
    return records


def fit(queries: list[dict]) -> tuple[list[float], float, str]:
    """Logistic regression on every candidate of the development queries, then the smallest bound at
    which the stated top-1 codes are right at least TARGET_PRECISION of the time in each set (the
    hand-written lay names are the hard part; pooled with the easy sets they would hide wrong codes)."""
    from sklearn.linear_model import LogisticRegression

    from assistant.terminology.coding import features

    x, y = [], []
    for q in queries:
        for candidate in q["candidates"]:
            others = [c.match_score * c.link_confidence for c in q["candidates"] if c is not candidate]
            margin = candidate.match_score * candidate.link_confidence - max(others, default=0.0)
            x.append(features(candidate, margin)[1:])
            y.append(int(correct(q["system"], candidate.code, q["gold"])))
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    weights = [float(model.intercept_[0]), *map(float, model.coef_[0])]
    records = score(queries, weights, 0.0)
    top = sorted(((r["confidence"], r["kind"], r["stated"] is not None and correct(r["system"], r["stated"], r["gold"]))
                  for r in records), reverse=True)
    kinds = sorted({kind for _, kind, _ in top})
    bound, best = 1.0, None
    for threshold in sorted({c for c, _, _ in top}):
        per_kind = [[ok for c, k, ok in top if c >= threshold and k == kind] for kind in kinds]
        if all(not stated or sum(stated) / len(stated) >= TARGET_PRECISION for stated in per_kind):
            stated = [ok for c, _, ok in top if c >= threshold]
            bound, best = threshold, (sum(stated), len(stated))
            break
    note = (f"logistic model on {len(x)} candidates of {len(records)} development lay-name queries "
            f"(evals/terms/bench_laynames.py --fit); bound: the smallest confidence at which the stated codes "
            f"were >= {TARGET_PRECISION:.0%} right in each development set ({', '.join(kinds)}; "
            f"{best[0]}/{best[1]} stated)" if best else "no bound reached the target precision on development")
    return weights, bound, note


def report(records: list[dict]) -> dict:
    table = {}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["system"], record["kind"])].append(record)
        groups[(record["system"], "all")].append(record)
    print(f"{'system':<10} {'set':<18} {'n':>4} {'before@1':>9} {'before@10':>9} {'after@1':>8} {'after@10':>8} "
          f"{'@10 95% CI':>13} {'stated':>7} {'stated right':>12}")
    for (system, kind), rows in sorted(groups.items()):
        n = len(rows)
        counts = {key: sum(r[key] for r in rows) for key in ("before@1", "before@10", "after@1", "after@10")}
        stated = [r for r in rows if r["stated"]]
        stated_right = sum(correct(system, r["stated"], r["gold"]) for r in stated)
        low, high = wilson(counts["after@10"], n)
        table[f"{system}/{kind}"] = {"n": n, **{k: round(v / n, 3) for k, v in counts.items()},
                                     "after@10_ci": [low, high], "stated": len(stated),
                                     "stated_right": stated_right,
                                     "stated_precision_ci": wilson(stated_right, len(stated))}
        print(f"{system:<10} {kind:<18} {n:>4} {counts['before@1'] / n:>9.3f} {counts['before@10'] / n:>9.3f} "
              f"{counts['after@1'] / n:>8.3f} {counts['after@10'] / n:>8.3f} {f'{low:.2f}-{high:.2f}':>13} "
              f"{len(stated):>7} {f'{stated_right}/{len(stated)}':>12}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("dev", "test"), required=True)
    parser.add_argument("--fit", action="store_true",
                        help="fit the confidence model and bound (dev only) and save them")
    parser.add_argument("--limit", type=int, help="at most this many pairs (a quick run)")
    parser.add_argument("--embedder", help="index embedder (default: the configured one)")
    parser.add_argument("--misses", action="store_true", help="print the queries whose right code is not ranked first")
    args = parser.parse_args(argv)
    if args.fit and args.split != "dev":
        parser.error("--fit only on the development split")
    from assistant.config import get_settings
    from assistant.terminology.coding import calibration, write_calibration
    from assistant.terminology.index import IndexOptions, open_term_index

    settings = get_settings()
    index = open_term_index(IndexOptions(embedder=args.embedder or settings.term_embedder), settings)
    started = time.perf_counter()
    index.graph  # noqa: B018 - built or loaded before the queries
    print(f"concept graph ready in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    queries = retrieve(index, load_pairs(args.split)[:args.limit])
    print(f"{len(queries)} queries retrieved in {time.perf_counter() - started:.0f} s")
    if args.fit:
        weights, bound, note = fit(queries)
        write_calibration(weights, bound, note)
        calibration.cache_clear()
        print(f"fitted weights {[round(w, 3) for w in weights]}, bound {bound:.4f}: {note}")
    model = calibration()
    records = score(queries, model.weights, model.bound)
    table = report(records)
    if args.misses:
        for r in records:
            if not r["after@1"]:
                print(f"  {r['system']} {r['query']!r} gold {r['gold']} -> {r['after'][:5]} (stated {r['stated']})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"split": args.split, "embedder": index.metadata.embedder, "bound": model.bound,
                                   "table": table, "records": records}, indent=2), encoding="utf-8")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
