"""Fusion settings on a development sample: held-out synonyms and cross-lingual labels drawn with
another seed than the benchmarks', their concepts excluded, so the settings are never chosen on
the figures reported. Each setting (RRF k, candidates per retriever, n-gram and embedding weights)
re-fuses the same queries (query vectors computed once); each retriever alone (lexical, semantic)
is a row too, so a product path other than fusion is chosen here as well. Then, for the index's
current setting, where the right concept ranks in each retriever when the fused list misses it
(ranks up to 100).

    python -m evals.terms.dev_fusion_weights [--seed 7] [--targets 1000 --pool 8000] [--embedder minilm-synonyms]
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import Future
from pathlib import Path

import numpy as np

import assistant.terminology.index as term_index
from assistant.terminology.embeddings import DEFAULT_EMBEDDER, EMBEDDERS
from assistant.terminology.index import IndexOptions, SearchMethod, TermIndex
from assistant.terminology.sources import read_concepts
from evals.terms.bench_crosslingual import LANGUAGES
from evals.terms.bench_synonyms import SOURCES, held_out_sample
from evals.terms.common import print_table, rank_buckets, rank_metrics, rng, write_results

# (RRF k, candidates per retriever, n-gram weight, embedding weight); exact matches keep 10
GRID = [(60, 50, 1.0, 1.0), (60, 50, 1.0, 1.5), (60, 50, 0.5, 1.0), (60, 100, 1.0, 1.0),
        (30, 50, 1.0, 1.0), (20, 50, 1.0, 1.0), (10, 50, 1.0, 1.0), (10, 100, 1.0, 1.0),
        (10, 100, 0.5, 1.0), (10, 100, 0.25, 1.0), (10, 100, 0.0, 1.0), (5, 100, 1.0, 1.0),
        (10, 100, 1.0, 2.0), (5, 100, 0.5, 1.0)]
BENCHMARK_SEED = 13
DEEP_K = 100
# The setting `assistant.terminology.index` ships, kept before the grid overwrites it.
SHIPPED = (term_index.FUSION_K, term_index.CANDIDATES, term_index.FUSION_WEIGHTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--targets", type=int, default=1000, help="held-out synonym queries before exclusion")
    parser.add_argument("--pool", type=int, default=8000, help="concepts in the synonym index")
    parser.add_argument("--embedder", choices=EMBEDDERS, default=DEFAULT_EMBEDDER)
    args = parser.parse_args(argv)
    if args.seed == BENCHMARK_SEED:
        parser.error("use another seed than the benchmarks' (13)")

    _, benchmark_queries = held_out_sample(1000, 8000, BENCHMARK_SEED)
    excluded = {concept_id for _, concept_id in benchmark_queries}
    concepts, queries = held_out_sample(args.targets, args.pool, args.seed)
    queries = [(query, concept_id) for query, concept_id in queries if concept_id not in excluded]

    labelled = [c for c in read_concepts(["icd10"]) if all(lang in c.labels for lang in LANGUAGES)]
    excluded = {c.id for c in rng(BENCHMARK_SEED).sample(labelled, 1500)[:150]}
    pool = rng(args.seed).sample(labelled, 1500)
    targets = [c for c in pool if c.id not in excluded][:150]
    english_only = [c.model_copy(update={"labels": {}, "synonyms": []}) for c in pool]

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        synonyms = TermIndex.build(Path(folder) / "synonyms", IndexOptions(
            sources=SOURCES, embedder=args.embedder, embedded_synonyms=100, embedded_icd10cm_length=9),
            concepts=concepts)
        crosslingual = TermIndex.build(Path(folder) / "crosslingual",
                                       IndexOptions(sources=["icd10"], embedder=args.embedder),
                                       concepts=english_only)
        tasks = {"synonyms": (synonyms, queries)}
        tasks |= {f"labels {lang}": (crosslingual, [(c.labels[lang], c.id) for c in targets]) for lang in LANGUAGES}
        vectors = {task: index._embed_queries([query for query, _ in task_queries])
                   for task, (index, task_queries) in tasks.items()}
        for rrf_k, candidates, ngram_weight, embedding_weight in GRID:
            term_index.FUSION_K, term_index.CANDIDATES = rrf_k, candidates
            term_index.FUSION_WEIGHTS = (10.0, ngram_weight, embedding_weight)
            for task, (index, task_queries) in tasks.items():
                ranks = _ranks(index, task_queries, vectors[task], "fused", 10)
                rows.append({"task": task, "RRF k": rrf_k, "candidates": candidates, "n-gram weight": ngram_weight,
                             "embedding weight": embedding_weight, **rank_metrics(ranks)})
        term_index.FUSION_K, term_index.CANDIDATES, term_index.FUSION_WEIGHTS = SHIPPED
        alone = [{"task": task, "retriever": method,
                  **rank_metrics(_ranks(index, task_queries, vectors[task], method, 10))}
                 for method in ("lexical", "semantic") for task, (index, task_queries) in tasks.items()]
        fused = _ranks(synonyms, queries, vectors["synonyms"], "fused", DEEP_K)
        misses = [i for i, rank in enumerate(fused) if rank is None or rank > 10]
        missed, missed_vectors = [queries[i] for i in misses], vectors["synonyms"][misses]
        deep = [{"retriever": "fused", "queries": len(misses), **rank_buckets([fused[i] for i in misses])}]
        term_index.CANDIDATES = DEEP_K  # each retriever alone, as deep as the fused list
        deep += [{"retriever": method, "queries": len(misses),
                  **rank_buckets(_ranks(synonyms, missed, missed_vectors, method, DEEP_K))}
                 for method in ("lexical", "semantic")]
    print_table(rows, f"Fused retrieval by setting, {args.embedder}, development sample (seed {args.seed}, "
                      f"{len(queries)} synonyms in {len(concepts)} concepts; 150 labels per language in 1,500 "
                      "concepts)")
    print_table(alone, f"Each retriever alone ({SHIPPED[1]} candidates), the same queries")
    print_table(deep, f"Where the right concept ranks when fused retrieval misses the top 10 (shipped setting: "
                      f"RRF k {SHIPPED[0]}, {SHIPPED[1]} candidates, weights {SHIPPED[2]})")
    path = write_results("terms_dev_fusion_weights", {"seed": args.seed, "embedder": args.embedder,
                                                      "queries": len(queries), "concepts": len(concepts),
                                                      "rows": rows, "alone": alone, "misses": deep})
    print(f"\nwrote {path}")
    return 0


def _ranks(index: TermIndex, queries: list[tuple[str, str]], vectors: np.ndarray, method: SearchMethod,
           k: int) -> list[int | None]:
    """1-based rank of the right concept among `k` hits (None when absent), reusing query vectors."""
    ranks = []
    for (query, concept_id), vector in zip(queries, vectors):
        embedded: Future = Future()
        embedded.set_result(vector[None, :])
        ids = [hit.concept.id for hit in index._search(query, k, "en", None, embedded, method)]
        ranks.append(ids.index(concept_id) + 1 if concept_id in ids else None)
    return ranks


if __name__ == "__main__":
    raise SystemExit(main())
