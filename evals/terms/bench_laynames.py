"""Lay name -> code: recall@1 / recall@10 of the right code per system, before and after the
concept graph, and the precision of the codes the answer states (calibrated confidence >= bound).

"before" is the index's hits read as they were (each hit's own source codes, best first); "after"
is `answer_code`: the concept first, then its code in the asked system through the concept graph.
ICD-10 is judged at category level (the hand-written set lists accepted categories), the other
systems by exact code. Wilson 95% intervals; the sets are in `evals/terms/laynames.py`.

    python -m evals.terms.bench_laynames --split dev [--fit]      # tune and calibrate on dev only
    python -m evals.terms.bench_laynames --split test             # report once
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path

from evals.terms.laynames import LayPair, load_pairs

RESULTS = Path(__file__).resolve().parents[1] / "results" / "terms_laynames.json"
TARGET_PRECISION = 0.95


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(centre - half, 3), round(centre + half, 3))


def correct(system: str, code: str, gold: list[str]) -> bool:
    return code[:3] in gold if system == "ICD-10" else code in gold


def before_codes(index, query: str, system: str) -> list[str]:
    codes = []
    for hit in index.search(query, k=10):
        code = hit.concept.codes.get(system)
        if code and code not in codes:
            codes.append(code)
    return codes


def evaluate(index, pairs: list[LayPair], limit: int | None) -> tuple[list[dict], list[tuple[list[float], bool]]]:
    from assistant.terminology.coding import answer_code, features

    records, training = [], []
    for pair in pairs[:limit]:
        for system, gold in pair.gold.items():
            answer = answer_code(index, pair.query, system, k=10)
            codes = [c.code for c in answer.candidates]
            old = before_codes(index, pair.query, system)
            records.append({"query": pair.query, "kind": pair.kind, "system": system, "gold": gold,
                            "after": codes[:10], "before": old[:10], "stated": answer.code,
                            "confidence": answer.confidence,
                            "after@1": bool(codes) and correct(system, codes[0], gold),
                            "after@10": any(correct(system, c, gold) for c in codes[:10]),
                            "before@1": bool(old) and correct(system, old[0], gold),
                            "before@10": any(correct(system, c, gold) for c in old[:10])})
            for candidate in answer.candidates:
                others = [c.match_score * c.link_confidence for c in answer.candidates if c is not candidate]
                margin = candidate.match_score * candidate.link_confidence - max(others, default=0.0)
                training.append((features(candidate, margin), correct(system, candidate.code, gold)))
    return records, training


def fit(training: list[tuple[list[float], bool]], records: list[dict], index, pairs, limit) -> None:
    """Logistic regression on every candidate of the development pairs, then the smallest bound at
    which the stated top-1 codes reach TARGET_PRECISION on the same pairs."""
    from sklearn.linear_model import LogisticRegression

    from assistant.terminology.coding import calibration, write_calibration

    x = [f[1:] for f, _ in training]
    y = [int(label) for _, label in training]
    model = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    weights = [float(model.intercept_[0]), *map(float, model.coef_[0])]
    write_calibration(weights, 0.5, "fitting")
    calibration.cache_clear()
    rescored, _ = evaluate(index, pairs, limit)
    top = sorted(((r["confidence"], r["after@1"]) for r in rescored), reverse=True)
    bound, best = 1.0, None
    for threshold in sorted({c for c, _ in top}):
        stated = [ok for c, ok in top if c >= threshold]
        if stated and sum(stated) / len(stated) >= TARGET_PRECISION:
            bound, best = threshold, (sum(stated), len(stated))
            break
    note = (f"logistic model on {len(training)} candidates of {len(rescored)} development lay-name queries "
            f"(evals/terms/bench_laynames.py --fit); bound = smallest confidence whose stated top-1 codes are "
            f">= {TARGET_PRECISION:.0%} right on development ({best[0]}/{best[1]} stated)" if best else "no bound met")
    write_calibration(weights, bound, note)
    calibration.cache_clear()
    print(f"fitted weights {[round(w, 3) for w in weights]}, bound {bound:.4f}: {note}")


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
                                     "stated_precision": round(stated_right / len(stated), 3) if stated else None,
                                     "stated_precision_ci": wilson(stated_right, len(stated))}
        print(f"{system:<10} {kind:<18} {n:>4} {counts['before@1'] / n:>9.3f} {counts['before@10'] / n:>9.3f} "
              f"{counts['after@1'] / n:>8.3f} {counts['after@10'] / n:>8.3f} {f'{low:.2f}-{high:.2f}':>13} "
              f"{len(stated):>7} {f'{stated_right}/{len(stated)}':>12}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("dev", "test"), required=True)
    parser.add_argument("--fit", action="store_true", help="fit the confidence model and bound (dev only)")
    parser.add_argument("--limit", type=int, help="at most this many pairs (a quick run)")
    parser.add_argument("--embedder", help="index embedder (default: the configured one)")
    parser.add_argument("--misses", action="store_true", help="print the queries whose code is not in the top 10")
    args = parser.parse_args(argv)
    if args.fit and args.split != "dev":
        parser.error("--fit only on the development split")
    from assistant.config import get_settings
    from assistant.terminology.index import IndexOptions, open_term_index

    settings = get_settings()
    index = open_term_index(IndexOptions(embedder=args.embedder or settings.term_embedder), settings)
    started = time.perf_counter()
    index.graph  # noqa: B018 - built or loaded before timing the queries
    print(f"concept graph ready in {time.perf_counter() - started:.1f} s")
    pairs = load_pairs(args.split)
    records, training = evaluate(index, pairs, args.limit)
    if args.fit:
        fit(training, records, index, pairs, args.limit)
        records, _ = evaluate(index, pairs, args.limit)
    table = report(records)
    if args.misses:
        for r in records:
            if not r["after@10"] or not r["after@1"]:
                print(f"  {r['system']} {r['query']!r} gold {r['gold']} -> {r['after'][:5]} (stated {r['stated']})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"split": args.split, "embedder": index.metadata.embedder, "table": table,
                                   "records": records}, indent=2), encoding="utf-8")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
