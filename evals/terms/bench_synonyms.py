"""Synonym retrieval with held-out synonyms, and synonym-pair classification (AUROC).

Concepts of ICD-10-CM (inclusion terms) and HPO that have synonyms are sampled from the 20%
evaluation part (`assistant.terminology.finetune.is_evaluation_concept`: no name of these concepts
is in the `minilm-synonyms` training pairs); one synonym of each is removed from the index and
used as the query. The rest of the index is drawn from all concepts. Reported per retriever
(lexical only, semantic only, fused) and per embedder: recall@1, recall@10 and MRR of the right
concept. Then a binary pair set in the style of Schulz & Juric (AAAI 2020): (held-out synonym,
preferred term) positives against random negatives and hard, string-similar negatives (the most
similar other preferred term by character 3-gram TF-IDF), scored by each embedder's cosine and the
lexical one.

    python -m evals.terms.bench_synonyms [--targets 300] [--pool 3000] [--models minilm-onnx e5-small]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from assistant.terminology.embeddings import get_embedder
from assistant.terminology.finetune import is_evaluation_concept
from assistant.terminology.index import IndexOptions, TermIndex
from assistant.terminology.lexical import CharNgramIndex
from assistant.terminology.models import Concept
from assistant.terminology.sources import read_concepts
from evals.terms.common import print_table, rank_metrics, rng, write_results

SOURCES = ["icd10cm", "hpo"]


def held_out_sample(targets: int, pool: int, seed: int) -> tuple[list[Concept], list[tuple[str, str]]]:
    """`pool` concepts (half per source) of which `targets`, all evaluation concepts, lose one
    synonym; returns the concepts to index and (query synonym, concept id) pairs."""
    random = rng(seed)
    by_source = {name: [c for c in read_concepts([name]) if c.source == name] for name in SOURCES}
    chosen: list[Concept] = []
    queries: list[tuple[str, str]] = []
    for name, concepts in by_source.items():
        with_synonyms = [c for c in concepts if c.synonyms and is_evaluation_concept(c.id)]
        target_concepts = random.sample(with_synonyms, targets // len(SOURCES))
        target_ids = {c.id for c in target_concepts}
        others = random.sample([c for c in concepts if c.id not in target_ids], pool // len(SOURCES) - len(target_ids))
        for concept in target_concepts:
            held_out = random.choice(concept.synonyms)
            queries.append((held_out, concept.id))
            chosen.append(concept.model_copy(update={"synonyms": [s for s in concept.synonyms if s != held_out],
                                                     "labels": {}}))
        chosen += [c.model_copy(update={"labels": {}}) for c in others]
    return chosen, queries


def retrieval_rows(concepts: list[Concept], queries: list[tuple[str, str]], model: str, folder: Path) -> list[dict]:
    options = IndexOptions(sources=SOURCES, embedder=model, embedded_synonyms=100, embedded_icd10cm_length=9)
    index = TermIndex.build(folder / model, options, concepts=concepts)
    rows = []
    for method in ("lexical", "semantic", "fused"):
        if method == "lexical" and model != "minilm-onnx":
            continue  # the same with every embedder
        ranks = []
        for query, concept_id in queries:
            ids = [hit.concept.id for hit in index.search(query, k=10, method=method)]
            ranks.append(ids.index(concept_id) + 1 if concept_id in ids else None)
        rows.append({"retriever": method if method == "lexical" else f"{method} ({model})", **rank_metrics(ranks),
                     "index build s": index.metadata.build_seconds, "embedded": index.metadata.embedded})
    return rows


def pair_rows(concepts: list[Concept], queries: list[tuple[str, str]], models: list[str], seed: int) -> list[dict]:
    random = rng(seed + 1)
    preferred = {c.id: c.preferred for c in concepts}
    ids = list(preferred)
    ngrams = CharNgramIndex.build([preferred[i] for i in ids])
    positives, random_negatives, hard_negatives = [], [], []
    for query, concept_id in queries:
        positives.append((query, preferred[concept_id]))
        other = random.choice(ids)
        while other == concept_id:
            other = random.choice(ids)
        random_negatives.append((query, preferred[other]))
        rows, _ = ngrams.search(query, 5)
        hard = next((ids[r] for r in rows if ids[r] != concept_id), random.choice(ids))
        hard_negatives.append((query, preferred[hard]))
    results = []
    scorers = {model: _cosine_scorer(model) for model in models}
    scorers["lexical (char 3-gram TF-IDF)"] = _tfidf_scorer([preferred[i] for i in ids] + [q for q, _ in queries])
    for name, score in scorers.items():
        pos = score(positives)
        row = {"scorer": name}
        for negatives_name, negatives in (("random", random_negatives), ("hard", hard_negatives)):
            neg = score(negatives)
            labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
            row[f"AUROC vs {negatives_name}"] = float(roc_auc_score(labels, np.r_[pos, neg]))
        results.append(row)
    return results


def _cosine_scorer(model: str):
    embedder = get_embedder(model)

    def score(pairs: list[tuple[str, str]]) -> np.ndarray:
        a = embedder.encode([p[0] for p in pairs], query=True)
        b = embedder.encode([p[1] for p in pairs])
        return (a * b).sum(1)

    return score


def _tfidf_scorer(corpus: list[str]):
    ngrams = CharNgramIndex.build(corpus)

    def score(pairs: list[tuple[str, str]]) -> np.ndarray:
        a = ngrams.vectorizer.transform([p[0] for p in pairs])
        b = ngrams.vectorizer.transform([p[1] for p in pairs])
        return np.asarray(a.multiply(b).sum(1)).ravel()

    return score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=300, help="held-out queries (half ICD-10-CM, half HPO)")
    parser.add_argument("--pool", type=int, default=3000, help="concepts in the benchmark index")
    parser.add_argument("--models", nargs="+", default=["minilm-onnx", "e5-small"])
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)

    concepts, queries = held_out_sample(args.targets, args.pool, args.seed)
    retrieval = []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            retrieval += retrieval_rows(concepts, queries, model, Path(folder))
    print_table(retrieval, f"Held-out synonym retrieval: {len(queries)} queries, {len(concepts)} concepts indexed")
    pairs = pair_rows(concepts, queries, args.models, args.seed)
    print_table(pairs, f"Synonym pairs: {len(queries)} positives vs as many random / hard (string-similar) negatives")
    path = write_results("terms_synonyms", {"queries": len(queries), "concepts": len(concepts), "sources": SOURCES,
                                            "retrieval": retrieval, "pairs": pairs,
                                            "target_recall@10": 0.90})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
