"""`scanchat terms build|info|search|normalize`: the term index from the command line."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from assistant.terminology.embeddings import EMBEDDERS
from assistant.terminology.sources import SOURCE_NAMES


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    terms = subparsers.add_parser("terms", help="medical term index: build it, search it, normalise text")
    commands = terms.add_subparsers(dest="terms_command", required=True, metavar="ACTION")

    build = commands.add_parser("build", help="build (or rebuild) the term index in the cache folder")
    build.add_argument("--sources", nargs="+", choices=SOURCE_NAMES, help="only these terminologies")
    build.add_argument("--limit", type=int, help="at most this many concepts per source (quick test index)")
    build.add_argument("--embedder", choices=EMBEDDERS,
                       help="embedding model (default: SCANCHAT_TERM_EMBEDDER, else the benchmark's choice)")
    build.add_argument("--index-type", choices=("flat", "hnsw"), help="FAISS index type")
    build.add_argument("--glossary", type=Path, help="merge this CSV or TBX glossary into the index (source "
                       "'glossary'); set SCANCHAT_TERM_GLOSSARY to the same file for the agent and `terms search`")
    build.add_argument("--force", action="store_true", help="rebuild even when the saved index is current")
    build.set_defaults(func=_build)

    info = commands.add_parser("info", help="what the term index holds and where its vectors are searched (CPU or GPU)")
    info.set_defaults(func=_build, sources=None, limit=None, embedder=None, index_type=None, glossary=None, force=False)

    search = commands.add_parser("search", help="concepts for a term, abbreviation or code")
    search.add_argument("query")
    search.add_argument("--lang", default="en", help="language of the labels (en, de, es, fr, pt)")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--sources", nargs="+", help=f"restrict to some of: {', '.join(SOURCE_NAMES)}")
    search.add_argument("--system", help="report the concept's code in this system (icd10, icd10cm, snomed, hpo, "
                        "radlex, loinc), stated only above the calibrated match confidence")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.add_argument("--glossary", type=Path, help="search the index with this glossary merged in")
    search.set_defaults(func=_search)

    normalize = commands.add_parser("normalize", help="the concepts a text mentions, with spans")
    normalize.add_argument("text")
    normalize.add_argument("--lang", default="en", help="language of the labels to show")
    normalize.add_argument("--json", action="store_true")
    normalize.set_defaults(func=_normalize)


def _build(args: argparse.Namespace) -> int:
    from assistant.config import get_settings
    from assistant.terminology.index import IndexOptions, index_folder, open_term_index

    settings = get_settings()
    chosen = {"sources": args.sources, "limit": args.limit, "embedder": args.embedder or settings.term_embedder,
              "index_type": args.index_type, "glossary": args.glossary or settings.term_glossary}
    options = IndexOptions(**{key: value for key, value in chosen.items() if value is not None})
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.setdefault(stage, tqdm(total=total, desc=stage, unit="term"))
        bar.update(done - bar.n)

    index = open_term_index(options, progress=progress, rebuild=args.force)
    for bar in bars.values():
        bar.close()
    meta = index.metadata
    print(f"term index in {index_folder(options)}: {meta.concepts} concepts, {meta.entries} strings, "
          f"{meta.embedded} embedded with {meta.embedder} ({meta.options.index_type}); built in {meta.build_seconds} s; "
          f"vectors searched on {index.vector_device}")
    for source in meta.sources:
        print(f"  {source.name}: {source.concepts} concepts, {source.package} {source.version}; {source.licence}")
    methods = Counter(link.method for link in index.graph.links())  # built now, not on the first search
    print(f"concept graph: {len(index.graph.groups)} linked concepts; links by method: "
          + ", ".join(f"{method} {count}" for method, count in methods.most_common()))
    return 0


def _search(args: argparse.Namespace) -> int:
    from assistant.config import get_settings
    from tools.lookup_term import lookup_term

    settings = get_settings().model_copy(update={"term_glossary": args.glossary}) if args.glossary else None
    result = lookup_term(args.query, k=args.k, language=args.lang, sources=args.sources, settings=settings,
                         system=args.system)
    if args.json and result.code_answer is not None:
        print(result.code_answer.model_dump_json(indent=2))
    elif args.json:
        print(json.dumps([{"concept_id": hit.concept.id, "preferred": hit.concept.preferred, "codes": hit.concept.codes,
                           "matched": hit.matched, "source": hit.concept.source, "score": hit.score,
                           "label": hit.label, "lang": result.language,
                           "linked": hit.linked.model_dump() if hit.linked else None} for hit in result.hits],
                         ensure_ascii=False, indent=2))
    else:
        print(result.summary())
    return 0


def _normalize(args: argparse.Namespace) -> int:
    from tools.normalize_terms import normalize_terms

    result = normalize_terms(args.text, language=args.lang)
    print(result.model_dump_json(indent=2) if args.json else result.summary())
    return 0
