"""Fusion weights on a development sample: held-out synonyms and cross-lingual labels drawn with
another seed than the benchmarks', their concepts excluded, so the weights are never chosen on
the figures reported. Each weight setting re-fuses the same retrievals (query vectors computed once).

    python -m evals.terms.dev_fusion_weights [--seed 7]
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import Future
from pathlib import Path

import assistant.terminology.index as term_index
from assistant.terminology.index import IndexOptions, TermIndex
from assistant.terminology.sources import read_concepts
from evals.terms.bench_crosslingual import LANGUAGES
from evals.terms.bench_synonyms import SOURCES, held_out_sample
from evals.terms.common import print_table, rank_metrics, rng, write_results

# (character n-gram weight, embedding weight); exact matches keep 10
GRID = [(1.0, 1.0), (1.0, 1.5), (1.0, 2.0), (1.0, 3.0), (0.5, 1.0)]
BENCHMARK_SEED = 13


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.seed == BENCHMARK_SEED:
        parser.error("use another seed than the benchmarks' (13)")

    _, benchmark_queries = held_out_sample(1000, 8000, BENCHMARK_SEED)
    excluded = {concept_id for _, concept_id in benchmark_queries}
    concepts, queries = held_out_sample(400, 3000, args.seed)
    queries = [(query, concept_id) for query, concept_id in queries if concept_id not in excluded]

    labelled = [c for c in read_concepts(["icd10"]) if all(lang in c.labels for lang in LANGUAGES)]
    excluded = {c.id for c in rng(BENCHMARK_SEED).sample(labelled, 1500)[:150]}
    pool = rng(args.seed).sample(labelled, 1500)
    targets = [c for c in pool if c.id not in excluded][:150]
    english_only = [c.model_copy(update={"labels": {}, "synonyms": []}) for c in pool]

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        synonyms = TermIndex.build(Path(folder) / "synonyms", IndexOptions(
            sources=SOURCES, embedded_synonyms=100, embedded_icd10cm_length=9), concepts=concepts)
        crosslingual = TermIndex.build(Path(folder) / "crosslingual", IndexOptions(sources=["icd10"]),
                                       concepts=english_only)
        tasks = {"synonyms": (synonyms, queries)}
        tasks |= {f"labels {lang}": (crosslingual, [(c.labels[lang], c.id) for c in targets]) for lang in LANGUAGES}
        for task, (index, task_queries) in tasks.items():
            vectors = index._embed_queries([query for query, _ in task_queries])
            for ngram_weight, embedding_weight in GRID:
                term_index.FUSION_WEIGHTS = (10.0, ngram_weight, embedding_weight)
                ranks = []
                for (query, concept_id), vector in zip(task_queries, vectors):
                    embedded: Future = Future()
                    embedded.set_result(vector[None, :])
                    ids = [hit.concept.id for hit in index._search(query, 10, "en", None, embedded, "fused")]
                    ranks.append(ids.index(concept_id) + 1 if concept_id in ids else None)
                rows.append({"task": task, "n-gram weight": ngram_weight, "embedding weight": embedding_weight,
                             **rank_metrics(ranks)})
    print_table(rows, f"Fused retrieval by weight, development sample (seed {args.seed})")
    path = write_results("terms_dev_fusion_weights", {"seed": args.seed, "rows": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
