"""Speed and size of the term index: build time, size on disk, load time, and query latency
(p50/p95) and throughput of each FAISS index type against a NumPy brute-force baseline over the
same vectors, in the same run; then end-to-end `search()` and `normalize()` latency.

The vectors are those of the saved default index (built first if needed: see `scanchat terms build`).
Query vectors are embeddings of real terms from the index, perturbed so that no query is an exact
copy of a stored row.

    python -m evals.terms.bench_speed [--queries 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from assistant.terminology.index import CANDIDATES, IndexOptions, TermIndex, _faiss_index, index_folder, open_term_index
from evals.terms.common import print_table, rng, write_results

K = 10


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def latency_row(name: str, search_one, search_batch, queries: np.ndarray, extra: dict | None = None) -> dict:
    timings = []
    for query in queries:
        started = time.perf_counter()
        search_one(query[None, :])
        timings.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    search_batch(queries)
    batch_seconds = time.perf_counter() - started
    return {"method": name, "p50 ms": float(np.percentile(timings, 50)), "p95 ms": float(np.percentile(timings, 95)),
            "batch queries/s": len(queries) / batch_seconds, **(extra or {})}


def timing_row(name: str, run, texts: list[str]) -> dict:
    """Wall-clock and CPU milliseconds per call (CPU time shows the work when a shared machine is
    busy, wall time what a user waits), and sequential calls per second."""
    wall, cpu = [], []
    for text in texts:
        started, started_cpu = time.perf_counter(), time.process_time()
        run(text)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return {"stage": name, "p50 ms": float(np.percentile(wall, 50)), "p95 ms": float(np.percentile(wall, 95)),
            "CPU p50 ms": float(np.percentile(cpu, 50)), "CPU p95 ms": float(np.percentile(cpu, 95)),
            "queries/s": 1000 * len(wall) / sum(wall)}


def _sparse_product_top_k(ngrams, text: str, k: int) -> np.ndarray:
    """The previous lexical search, kept here as the baseline: scikit-learn's transform, a sparse
    product over every row and a selection over all of them."""
    query = ngrams.vectorizer.transform([text])
    scores = np.asarray(ngrams.matrix[:, query.indices] @ query.data).ravel()
    return np.argpartition(-scores, k)[:k]


def recall_against(exact_ids: np.ndarray, ids: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(exact_ids, ids)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)  # single-query latency as one chat turn sees it; batches use the same setting
    load_before = os.getloadavg()

    options = IndexOptions()
    started = time.perf_counter()
    index = open_term_index(options)
    first_open = time.perf_counter() - started
    folder = index_folder(options)
    started = time.perf_counter()
    TermIndex.load(folder)
    load_seconds = time.perf_counter() - started
    meta = index.metadata
    print(f"default index: {meta.concepts} concepts, {meta.entries} strings, {meta.embedded} vectors "
          f"({meta.embedder}); build {meta.build_seconds} s (recorded), {folder_size(folder) / 1e6:.1f} MB on disk, "
          f"load {load_seconds:.2f} s (memory-mapped FAISS)")

    flat = faiss.read_index(str(folder / "vectors.faiss"))
    vectors = flat.reconstruct_n(0, flat.ntotal)
    random = np.random.default_rng(args.seed)
    picks = random.choice(len(vectors), args.queries, replace=False)
    queries = vectors[picks] + random.normal(0, 0.02, (args.queries, vectors.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def numpy_search(q: np.ndarray) -> np.ndarray:
        scores = q @ vectors.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)

    exact_ids = numpy_search(queries)
    rows = [latency_row("numpy brute force (baseline)", numpy_search, numpy_search, queries,
                        {"build s": 0.0, "size MB": vectors.nbytes / 1e6, "recall@10 vs exact": 1.0})]
    for index_type in ("flat", "hnsw"):
        started = time.perf_counter()
        built = _faiss_index(vectors, index_type)
        build_seconds = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            faiss.write_index(built, f"{tmp}/i.faiss")
            size = Path(f"{tmp}/i.faiss").stat().st_size
        _, ids = built.search(queries, K)
        rows.append(latency_row(f"faiss {index_type}", lambda q: built.search(q, K), lambda q: built.search(q, K), queries,
                                {"build s": build_seconds, "size MB": size / 1e6,
                                 "recall@10 vs exact": recall_against(exact_ids, ids)}))
    baseline_p95 = rows[0]["p95 ms"]
    for row in rows:
        row["p95 speed-up vs numpy"] = baseline_p95 / row["p95 ms"]
    print_table(rows, f"Vector search over {len(vectors)} vectors, k={K}, {args.queries} queries, 1 thread")

    terms = [entry for entry in rng(args.seed).sample(range(meta.entries), args.queries)]
    texts = [index.entry_text(i)[:200] for i in terms]
    ngrams = index._ngrams
    stages = [
        ("query embedding alone", lambda text: index._embed_queries([text])),
        (f"char 3-gram top-{CANDIDATES} (search()'s candidates): posting lists (now)", lambda text: ngrams.search(text, CANDIDATES)),
        (f"char 3-gram top-{CANDIDATES}: sklearn transform + sparse product (before)",
         lambda text: _sparse_product_top_k(ngrams, text, CANDIDATES)),
    ]
    end_to_end = [timing_row(name, run, texts) for name, run in stages]
    end_to_end += [timing_row(f"search() {method}", lambda text, m=method: index.search(text, k=K, method=m), texts)
                   for method in ("lexical", "semantic", "fused")]
    report = ("CT of the chest showed a pulmonary embolism in the right lower lobe and a small pleural effusion. "
              "History of MI and type 2 diabetes; on apixaban.")
    started = time.perf_counter()
    mentions = index.normalize(report)
    end_to_end.append({"stage": f"normalize() of a {len(report)}-character report ({len(mentions)} mentions)",
                       "p50 ms": (time.perf_counter() - started) * 1000})
    print_table(end_to_end, f"End-to-end and its stages, {len(texts)} indexed strings as queries "
                            f"(wall clock; CPU = this process, all threads)")
    load_after = os.getloadavg()
    print(f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores")
    path = write_results("terms_speed", {
        "concepts": meta.concepts, "entries": meta.entries, "vectors": meta.embedded, "embedder": meta.embedder,
        "build_seconds_recorded": meta.build_seconds, "first_open_seconds": first_open, "load_seconds": load_seconds,
        "disk_mb": folder_size(folder) / 1e6, "vector_search": rows, "end_to_end": end_to_end,
        "load_average_before": load_before, "load_average_after": load_after, "cores": os.cpu_count(),
        "target_p95_ms": 20.0})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
