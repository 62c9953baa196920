"""Cross-lingual look-up: a German, Spanish or French ICD-10 label -> the English concept.

ICD-10 concepts with gnuhealth labels are sampled; the benchmark index holds the English
preferred terms only (the labels are removed, otherwise an exact label match would make this
trivial). Each label is a query; recall@1/@10 and MRR of the right concept, per retriever and
embedder: the English MiniLM and lexical matching are the baselines for the multilingual E5.

    python -m evals.terms.bench_crosslingual [--targets 150] [--pool 1500]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from assistant.terminology.index import IndexOptions, TermIndex
from assistant.terminology.sources import read_concepts
from evals.terms.common import print_table, rank_metrics, rng, write_results

LANGUAGES = ("de", "es", "fr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=150, help="concepts queried, in each language")
    parser.add_argument("--pool", type=int, default=1500, help="English concepts in the benchmark index")
    parser.add_argument("--models", nargs="+", default=["minilm-onnx", "e5-small"])
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)

    random = rng(args.seed)
    labelled = [c for c in read_concepts(["icd10"]) if all(lang in c.labels for lang in LANGUAGES)]
    pool = random.sample(labelled, args.pool)
    targets = pool[: args.targets]
    english_only = [c.model_copy(update={"labels": {}, "synonyms": []}) for c in pool]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            options = IndexOptions(sources=["icd10"], embedder=model)
            index = TermIndex.build(Path(folder) / model, options, concepts=english_only)
            for method in ("lexical", "semantic", "fused"):
                if method == "lexical" and model != args.models[0]:
                    continue
                for lang in LANGUAGES:
                    ranks = []
                    for concept in targets:
                        ids = [hit.concept.id for hit in index.search(concept.labels[lang], k=10, method=method)]
                        ranks.append(ids.index(concept.id) + 1 if concept.id in ids else None)
                    name = method if method == "lexical" else f"{method} ({model})"
                    rows.append({"retriever": name, "language": lang, **rank_metrics(ranks),
                                 "index build s": index.metadata.build_seconds, "embedded": index.metadata.embedded})
    print_table(rows, f"Cross-lingual: label -> English ICD-10 concept among {len(pool)}")
    path = write_results("terms_crosslingual", {"pool": len(pool), "targets": len(targets), "rows": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
