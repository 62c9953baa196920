"""What the term benchmarks share: result files, tables and the held-out samples."""

from __future__ import annotations

import json
import platform
import random
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def write_results(name: str, payload: dict) -> Path:
    """Write `evals/results/<name>.json` with the machine it ran on."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(),
               "python": platform.python_version(), **payload}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    return path


def print_table(rows: list[dict], title: str) -> None:
    if not rows:
        return
    columns = list(rows[0])
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(cell[i]) for cell in cells)) for i, column in enumerate(columns)]
    print(f"\n## {title}")
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
    for cell in cells:
        print("  ".join(value.ljust(width) for value, width in zip(cell, widths)))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return "" if value is None else str(value)


def rng(seed: int = 13) -> random.Random:
    return random.Random(seed)


def rank_metrics(ranks: list[int | None]) -> dict[str, float]:
    """Recall@1/@10 and MRR from the 1-based rank of the right answer (None = not in the list)."""
    n = len(ranks)
    return {
        "recall@1": sum(1 for r in ranks if r == 1) / n,
        "recall@10": sum(1 for r in ranks if r is not None and r <= 10) / n,
        "mrr": float(np.mean([1.0 / r if r else 0.0 for r in ranks])),
        "queries": n,
    }


def rank_buckets(ranks: list[int | None]) -> dict[str, float]:
    """Share of queries whose right answer sits at each depth: how far a miss is from the top 10."""
    n = len(ranks) or 1
    edges = [(1, 1, "rank 1"), (2, 10, "2-10"), (11, 20, "11-20"), (21, 50, "21-50"), (51, 100, "51-100")]
    shares = {name: sum(1 for r in ranks if r is not None and low <= r <= high) / n for low, high, name in edges}
    return {**shares, "absent": sum(1 for r in ranks if r is None) / n}
