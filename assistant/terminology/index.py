"""The term index: concepts from every source, searchable by meaning (FAISS over sentence
embeddings) and by string (exact, code, character n-gram TF-IDF), fused by reciprocal rank.

Built once into ``Settings.cache_dir/terms/<key>/`` with a metadata file (sources and their
versions and licences, embedding model, fingerprint); loaded lazily and memory-mapped where FAISS
allows; rebuilt when a source version or option changes or a file is missing or corrupt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import pickle
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from filelock import FileLock
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from pydantic import BaseModel, Field

from assistant.config import Settings, get_settings
from assistant.terminology.concepts import ConceptGraph, open_concept_graph
from assistant.terminology.embeddings import DEFAULT_EMBEDDER, get_embedder
from assistant.terminology.fusion import reciprocal_rank_fusion
from assistant.terminology.glossary import GLOSSARY_SOURCE, glossary_concepts, glossary_info, load_glossary
from assistant.terminology.languages import INDEX_LANGUAGES, normalize_lang
from assistant.terminology.lexical import (
    CharNgramIndex, is_abbreviation, looks_like_code, normalize_code, normalize_text,
)
from assistant.terminology.models import Concept, LinkedConcept, SourceInfo, TermHit, TermMention
from assistant.terminology.sources import SOURCE_NAMES, check_sources, read_concepts, source_infos
from assistant.terminology.variants import spellings

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 3: ICD-10-CM coding instructions are no longer synonyms
MAX_QUERY_CHARS = 500
MAX_TEXT_CHARS = 20_000
MAX_K = 100
# Candidates per retriever. With the fine-tuned embedder, 100 instead of 50 lets a concept that the
# n-gram list ranks low still be lifted by its embedding rank (development sample, not the benchmark's).
CANDIDATES = 100
# Exact matches, character n-grams, embeddings. Heavier embeddings or lighter n-grams help held-out
# synonyms a little with the fine-tuned embedder but cost German, Spanish and French labels up to 0.2
# recall@10 (dev sample, not the benchmark's; see evals/terms/README.md).
FUSION_WEIGHTS = (10.0, 1.0, 1.0)
# Reciprocal rank fusion's k. Cormack et al.'s 60 flattens the top of each ranking; for the fine-tuned
# embedder 5 gave the best held-out synonym recall among the settings that keep each language's label
# recall within 0.02 of the previous setting (k 10; development sample, not the benchmark's:
# evals/terms/dev_fusion_weights.py, figures in evals/terms/README.md).
FUSION_K = 5
# Sources whose strings are embedded; drug names are matched lexically (embedding a brand name
# says nothing a string match would not).
SEMANTIC_SOURCES = {"icd10", "icd10cm", "hpo", "dicom", GLOSSARY_SOURCE}
_QUERY_EMBEDDING = ThreadPoolExecutor(max_workers=2, thread_name_prefix="term-query-embedding")
IndexType = Literal["flat", "hnsw"]
SearchMethod = Literal["fused", "lexical", "semantic"]
Progress = Callable[[str, int, int], None]


class IndexOptions(BaseModel):
    """What an index is built from; any change gives a new fingerprint and a rebuild."""

    sources: list[str] | None = None
    embedder: str = DEFAULT_EMBEDDER
    index_type: IndexType = "hnsw"
    embedded_synonyms: int = Field(1, ge=0, description="Synonyms embedded per concept besides the preferred term.")
    embedded_icd10cm_length: int = Field(
        4, ge=3, description="ICD-10-CM codes longer than this (without the dot) are matched by string only; "
                             "their parents carry the meaning, and embedding all 47k would take CI many minutes.")
    limit: int | None = Field(None, ge=1, description="Concepts per source (small test and benchmark indexes).")
    code_prefixes: list[str] | None = Field(
        None, description="Keep only concepts with a code starting with one of these (small test indexes).")
    glossary: Path | None = Field(
        None, description="A user's CSV or TBX glossary, added as concepts of source 'glossary' (its targets as "
                          "labels); its content hash is part of the fingerprint, so editing it triggers a rebuild.")

    def key(self) -> str:
        return "default" if self == IndexOptions() else hashlib.sha1(self.model_dump_json().encode()).hexdigest()[:12]


class IndexMetadata(BaseModel):
    format_version: int
    fingerprint: str
    options: IndexOptions
    sources: list[SourceInfo]
    embedder: str
    embedder_version: str
    concepts: int
    entries: int
    embedded: int
    build_seconds: float


@dataclass
class Entry:
    """One searchable string: a preferred term, synonym, label (kind ``label:de``) or code."""

    text: str
    concept: int
    kind: str


@dataclass
class EntryTable:
    """The entries column by column (loading 450k small objects would take seconds); `keys` are
    the exact-match forms, computed once at build time."""

    texts: list[str]
    concepts: np.ndarray
    kinds: list[str]
    keys: list[str]

    @classmethod
    def from_entries(cls, entries: list[Entry]) -> EntryTable:
        return cls(texts=[e.text for e in entries], concepts=np.array([e.concept for e in entries], dtype=np.int64),
                   kinds=[e.kind for e in entries],
                   keys=[normalize_code(e.text) if e.kind == "code" else normalize_text(e.text) for e in entries])

    def __len__(self) -> int:
        return len(self.texts)


class ConceptStore:
    """Concepts as JSON lines read on demand through a memory map: only hits are ever parsed."""

    def __init__(self, path: Path, offsets: np.ndarray, ids: list[str], sources: list[str]) -> None:
        if path.stat().st_size != offsets[-1] or len(offsets) != len(ids) + 1:
            raise ValueError(f"{path} does not match its offsets (truncated or rewritten)")
        self._file = path.open("rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if offsets[-1] else None
        self._offsets = offsets
        self.ids = ids
        self.sources = np.array(sources)

    @staticmethod
    def write(folder: Path, concepts: list[Concept]) -> None:
        lines = [concept.model_dump_json().encode() + b"\n" for concept in concepts]
        (folder / "concepts.jsonl").write_bytes(b"".join(lines))
        np.save(folder / "concept_offsets.npy", np.cumsum([0] + [len(line) for line in lines], dtype=np.int64))
        (folder / "concept_keys.json").write_text(json.dumps({"ids": [c.id for c in concepts],
                                                              "sources": [c.source for c in concepts]}))

    @classmethod
    def open(cls, folder: Path) -> ConceptStore:
        keys = json.loads((folder / "concept_keys.json").read_text())
        return cls(folder / "concepts.jsonl", np.load(folder / "concept_offsets.npy"), keys["ids"], keys["sources"])

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, index: int) -> Concept:
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        return Concept.model_validate_json(self._map[start:end])


def fingerprint(options: IndexOptions, sources: list[SourceInfo], embedder_version: str) -> str:
    # The glossary option counts only when given, so indexes without one keep their fingerprint.
    chosen = options.model_dump(mode="json", exclude={"glossary"} if options.glossary is None else None)
    payload = json.dumps([FORMAT_VERSION, chosen, [s.model_dump(exclude={"concepts"}) for s in sources],
                          embedder_version], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _entries_for(concept: Concept, index: int) -> list[Entry]:
    entries = [Entry(concept.preferred, index, "preferred")]
    entries += [Entry(synonym, index, "synonym") for synonym in concept.synonyms]
    entries += [Entry(label, index, f"label:{lang}") for lang, label in concept.labels.items()]
    entries += [Entry(code, index, "code") for code in concept.codes.values()]
    return entries


class TermIndex:
    """Search and normalise medical terms; obtain one with `get_term_index()` or `TermIndex.build`."""

    def __init__(self, folder: Path, metadata: IndexMetadata, concepts: ConceptStore, entries: EntryTable,
                 embedded_rows: np.ndarray, vectors: faiss.Index, ngrams: CharNgramIndex) -> None:
        self.folder = folder
        self.metadata = metadata
        self._concepts = concepts
        self._texts = entries.texts
        self._entry_concepts = entries.concepts
        self._embedded_rows = embedded_rows  # FAISS row -> entry id
        self._vectors, self.vector_device = _to_gpu(vectors)
        self._ngrams = ngrams
        self._sources = concepts.sources
        self._by_text: dict[str, list[int]] = {}
        self._by_code: dict[str, list[int]] = {}
        for entry_id, (kind, key) in enumerate(zip(entries.kinds, entries.keys)):
            (self._by_code if kind == "code" else self._by_text).setdefault(key, []).append(entry_id)
        self._concept_ids = {concept_id: i for i, concept_id in enumerate(concepts.ids)}
        self._graph: ConceptGraph | None = None
        self._graph_lock = threading.Lock()

    # --- building and loading --------------------------------------------------------------

    @classmethod
    def build(cls, folder: Path, options: IndexOptions, progress: Progress | None = None,
              concepts: list[Concept] | None = None) -> TermIndex:
        """Read the sources (or take `concepts`, e.g. a benchmark's with held-out synonyms), embed
        and index them, and save everything under `folder`."""
        started = time.perf_counter()
        infos = index_sources(options)
        user_concepts = glossary_concepts(load_glossary(options.glossary)) if options.glossary else []
        embedder = get_embedder(options.embedder)
        concepts = read_concepts(check_sources(options.sources)) if concepts is None else concepts
        if options.code_prefixes:
            prefixes = tuple(options.code_prefixes)
            concepts = [c for c in concepts if any(code.startswith(prefixes) for code in c.codes.values())]
        if options.limit:
            concepts = _first_per_source(concepts, options.limit)
        concepts += _linked(user_concepts, concepts)
        for info in infos:
            info.concepts = sum(1 for c in concepts if c.source == info.name)
        entries = [entry for i, concept in enumerate(concepts) for entry in _entries_for(concept, i)]
        embedded_rows = _rows_to_embed(concepts, entries, options)
        texts = [entries[row].text for row in embedded_rows]
        vectors_of = _reusable_vectors(folder.parent / _without_glossary(options).key(), embedder.version) \
            if options.glossary else {}
        unique_texts = [text for text in dict.fromkeys(texts) if text not in vectors_of]
        vectors_of.update(zip(unique_texts, embedder.encode(
            unique_texts, progress=(lambda done, total: progress("embedding", done, total)) if progress else None)))
        matrix = np.stack([vectors_of[text] for text in texts]) if texts else np.zeros((0, embedder.dim), np.float32)
        vectors = _faiss_index(matrix, options.index_type)
        ngrams = CharNgramIndex.build([entry.text for entry in entries])
        metadata = IndexMetadata(
            format_version=FORMAT_VERSION, fingerprint=fingerprint(options, infos, embedder.version), options=options,
            sources=infos, embedder=embedder.name, embedder_version=embedder.version, concepts=len(concepts),
            entries=len(entries), embedded=len(embedded_rows), build_seconds=round(time.perf_counter() - started, 1))
        _save(folder, metadata, concepts, EntryTable.from_entries(entries), embedded_rows, vectors, ngrams)
        return cls.load(folder)

    @classmethod
    def load(cls, folder: Path) -> TermIndex:
        """Open a saved index (FAISS file memory-mapped); raises on any missing or corrupt file."""
        metadata = IndexMetadata.model_validate_json((folder / "metadata.json").read_text())
        concepts = ConceptStore.open(folder)
        with (folder / "entries.json").open() as handle:
            columns = json.load(handle)
        entries = EntryTable(columns["texts"], np.load(folder / "entry_concepts.npy"), columns["kinds"], columns["keys"])
        embedded_rows = np.load(folder / "embedded_rows.npy")
        vectors = _read_faiss(folder / "vectors.faiss")
        with (folder / "ngrams.pkl").open("rb") as handle:
            ngrams = pickle.load(handle)  # written by `_save` into our own cache folder
        if (len(concepts), len(entries), vectors.ntotal) != (metadata.concepts, metadata.entries, metadata.embedded) \
                or len(embedded_rows) != vectors.ntotal or ngrams.matrix.shape[0] != len(entries):
            raise ValueError(f"term index in {folder} is inconsistent with its metadata")
        return cls(folder, metadata, concepts, entries, embedded_rows, vectors, ngrams)

    # --- look-ups ----------------------------------------------------------------------------

    def entry_text(self, entry_id: int) -> str:
        return self._texts[entry_id]

    def knows(self, term: str) -> bool:
        """Whether `term` is a preferred term, synonym or label of some concept (exact, normalised)."""
        return normalize_text(term) in self._by_text

    @property
    def graph(self) -> ConceptGraph:
        """The concepts linked across sources (built beside the index on first use, then cached)."""
        with self._graph_lock:
            if self._graph is None:
                embedder = get_embedder(self.metadata.options.embedder)
                self._graph = open_concept_graph(self.folder, self.metadata.fingerprint, self.all_concepts,
                                                 lambda texts: embedder.encode(texts))
            return self._graph

    def all_concepts(self) -> list[Concept]:
        return [self._concept(i) for i in range(len(self._concepts))]

    def linked(self, concept: Concept) -> LinkedConcept:
        return self.graph.linked(concept)

    def exact_entries(self, term: str) -> list[int]:
        """Entry ids whose text equals `term` or one of its spelling variants (US/UK, plural, hyphens)."""
        found: list[int] = []
        for form in spellings(term):
            found += [e for e in self._by_text.get(normalize_text(form), []) if e not in found]
        return found

    def concept(self, concept_id: str) -> Concept | None:
        index = self._concept_ids.get(concept_id)
        return None if index is None else self._concept(index)

    def _concept(self, index: int) -> Concept:
        return self._concepts.get(index)

    def search(self, query: str, k: int = 10, lang: str = "en", sources: list[str] | None = None,
               method: SearchMethod = "fused") -> list[TermHit]:
        """Concepts for a term, code or abbreviation, best first, with labels in `lang`.

        `method` "lexical" or "semantic" uses one retriever alone (benchmarks compare them)."""
        query, lang = check_search(query, k, lang, sources)
        allowed_sources = self._check_sources(sources)
        allowed = None if allowed_sources is None else np.isin(self._sources, allowed_sources)
        # A code's embedding means nothing; otherwise the query is embedded on a second core while
        # the lexical part runs here (onnxruntime and numpy release the GIL).
        semantic = method == "semantic" or (method == "fused" and not looks_like_code(query))
        query_vector = _QUERY_EMBEDDING.submit(self._embed_queries, [query]) if semantic else None
        return self._search(query, k, lang, allowed, query_vector, method)

    def _search(self, query: str, k: int, lang: str, allowed: np.ndarray | None,
                query_vector: Future[np.ndarray] | None, method: SearchMethod = "fused") -> list[TermHit]:
        def keep(entry_ids: list[int]) -> list[int]:
            return [e for e in entry_ids if allowed is None or allowed[self._entry_concepts[e]]]

        exact, ngram_rows, ngram_scores, semantic_entries, semantic_scores = [], [], [], [], []
        if method != "semantic":
            exact = keep(self._by_code.get(normalize_code(query), []) if looks_like_code(query) else [])
            exact += keep(self.exact_entries(query))
            entry_allowed = None if allowed is None else allowed[self._entry_concepts]
            ngram_rows, ngram_scores = self._ngrams.search(query, CANDIDATES, entry_allowed)
        if method != "lexical" and query_vector is not None:
            semantic_entries, semantic_scores = self._semantic(query_vector.result()[0], CANDIDATES, allowed)

        best_entry: dict[int, tuple[float, int]] = {}  # concept -> (confidence, entry id)

        def note(entry_id: int, confidence: float) -> int:
            concept = self._entry_concepts[entry_id]
            if confidence > best_entry.get(concept, (-1.0, -1))[0]:
                best_entry[concept] = (confidence, entry_id)
            return concept

        exact_ranking = [note(e, 1.0) for e in exact]
        ngram_ranking = [note(int(e), float(s)) for e, s in zip(ngram_rows, ngram_scores)]
        semantic_ranking = [note(int(e), float(s)) for e, s in zip(semantic_entries, semantic_scores)]
        fused = reciprocal_rank_fusion([list(dict.fromkeys(r)) for r in (exact_ranking, ngram_ranking, semantic_ranking)],
                                       k=FUSION_K, weights=FUSION_WEIGHTS)
        ranked = sorted(fused, key=lambda c: (fused[c], best_entry[c][0]), reverse=True)[:k * 2]
        hits = []
        for concept_index in ranked:
            confidence, entry_id = best_entry[concept_index]
            concept = self._concept(concept_index)
            hits.append(TermHit(concept=concept, matched=self._texts[entry_id],
                                score=round(min(max(confidence, 0.0), 1.0), 4), label=concept.label(lang),
                                linked=self.linked(concept)))
        # Asked in another language, an equally good concept with a label in it comes first.
        hits.sort(key=lambda hit: hit.score == 1.0 and hit.label is not None, reverse=True)
        return hits[:k]

    def _semantic(self, query_vector: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[list[int], list[float]]:
        if self._vectors.ntotal == 0:
            return [], []
        want = k if allowed is None else min(self._vectors.ntotal, k * 8)
        scores, rows = self._vectors.search(query_vector[None, :].astype(np.float32), want)
        pairs = [(int(self._embedded_rows[r]), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]
        if allowed is not None:
            pairs = [(e, s) for e, s in pairs if allowed[self._entry_concepts[e]]]
        pairs = pairs[:k]
        return [e for e, _ in pairs], [s for _, s in pairs]

    def _embed_queries(self, texts: list[str]) -> np.ndarray:
        return get_embedder(self.metadata.options.embedder).encode(texts, query=True)

    def _check_sources(self, sources: list[str] | None) -> list[str] | None:
        if sources is None:
            return None
        names = check_source_filter(sources)
        indexed = {info.name for info in self.metadata.sources}
        if missing := [name for name in names if name not in indexed]:
            raise ValueError(f"Source(s) {', '.join(missing)} are not in this index (it holds {', '.join(sorted(indexed))}).")
        return names

    # --- normalisation ------------------------------------------------------------------------

    def normalize(self, text: str, lang: str = "en", threshold: float = 0.85, max_words: int = 6) -> list[TermMention]:
        """Concepts mentioned in `text` with character spans, longest confident match first.

        Candidate spans are word n-grams; a span counts when it matches a term exactly
        (abbreviations only in their capitalised form) or its embedding is within `threshold`
        cosine of an indexed term."""
        check_text(text, lang)
        words = list(re.finditer(r"\w[\w'\-/]*", text))
        candidates: list[tuple[float, int, int, int, int]] = []  # (score, length, start, end, concept)
        semantic_spans = []
        for i, first in enumerate(words):
            if first.group().casefold() in FILLER_WORDS:
                continue
            for j in range(i, min(i + max_words, len(words))):
                start, end = first.start(), words[j].end()
                surface = text[start:end]
                exact = [e for e in self.exact_entries(surface)
                         if not is_abbreviation(self._texts[e]) or self._texts[e] == surface]
                if exact and (len(surface) >= 3 or is_abbreviation(surface)):
                    candidates.append((1.0, end - start, start, end, self._entry_concepts[exact[0]]))
                elif (not exact and j - i < SEMANTIC_SPAN_WORDS and len(surface) >= 4
                      and words[j].group().casefold() not in FILLER_WORDS):
                    semantic_spans.append((start, end))
        if semantic_spans and self._vectors.ntotal:
            vectors = self._embed_queries([text[s:e] for s, e in semantic_spans])
            scores, rows = self._vectors.search(vectors, 1)
            for (start, end), score, row in zip(semantic_spans, scores[:, 0], rows[:, 0]):
                if row >= 0 and score >= threshold:
                    candidates.append((float(score), end - start, start, end, self._entry_concepts[self._embedded_rows[row]]))
        chosen: list[TermMention] = []
        for score, _, start, end, concept in sorted(candidates, key=lambda c: (-c[0], -c[1])):
            if all(end <= m.start or start >= m.end for m in chosen):
                chosen.append(TermMention(start=start, end=end, text=text[start:end], concept=self._concept(concept),
                                          score=round(score, 4)))
        return sorted(chosen, key=lambda m: m.start)


# Words that never start or end a term mention (they may sit inside one: "fracture of the femur").
FILLER_WORDS = frozenset(ENGLISH_STOP_WORDS | {"patient", "showed", "shows", "scan", "history", "signs", "normal",
                                              "left", "right", "small", "large", "mild", "seen", "noted"})
SEMANTIC_SPAN_WORDS = 4  # longer spans are matched exactly only: embedding every 6-gram is slow


def check_search(query: str, k: int, lang: str, sources: list[str] | None) -> tuple[str, str]:
    """The stripped query and language code, or a ValueError saying what is wrong; cheap, so callers
    can refuse bad input before the index is loaded."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}.")
    if sources is not None:
        check_source_filter(sources)
    return _check_query(query), _check_lang(lang)


def check_source_filter(sources: list[str]) -> list[str]:
    """The terminologies a search may be restricted to: the built-in ones and a user glossary."""
    if unknown := sorted(set(sources) - {*SOURCE_NAMES, GLOSSARY_SOURCE}):
        raise ValueError(f"Unknown term source(s) {', '.join(unknown)}; choose from "
                         f"{', '.join([*SOURCE_NAMES, GLOSSARY_SOURCE])}.")
    return list(dict.fromkeys(sources))


def check_text(text: str, lang: str) -> None:
    """ValueError unless `text` is a non-empty text of acceptable length and `lang` has labels."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("The text to normalise is empty.")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"The text is {len(text)} characters long; normalise at most {MAX_TEXT_CHARS} at a time.")
    _check_lang(lang)


def _check_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise ValueError("The search query is empty; give a term, abbreviation or code.")
    query = query.strip()
    if len(query) > MAX_QUERY_CHARS:
        raise ValueError(f"The query is {len(query)} characters long; search for one term (at most "
                         f"{MAX_QUERY_CHARS} characters), or use normalize_terms for a whole text.")
    return query


def _check_lang(lang: str) -> str:
    code = normalize_lang(lang)
    if code not in INDEX_LANGUAGES:
        raise ValueError(f"Language {lang!r} has no labels in the term index; use one of {', '.join(INDEX_LANGUAGES)}.")
    return code


def index_sources(options: IndexOptions) -> list[SourceInfo]:
    """Provenance of everything `options` puts into the index (raises on unknown sources or an
    unreadable glossary)."""
    infos = source_infos(check_sources(options.sources))
    return infos + [glossary_info(options.glossary)] if options.glossary else infos


def _linked(user_concepts: list[Concept], concepts: list[Concept]) -> list[Concept]:
    """Glossary concepts, each related to the concepts whose preferred term or synonym it is."""
    if not user_concepts:
        return []
    wanted = {normalize_text(c.preferred): c for c in user_concepts}
    for concept in concepts:
        for term in (concept.preferred, *concept.synonyms):
            if (match := wanted.get(normalize_text(term))) and concept.id not in match.related:
                match.related.append(concept.id)
    return user_concepts


def _without_glossary(options: IndexOptions) -> IndexOptions:
    return options.model_copy(update={"glossary": None})


def _reusable_vectors(base: Path, embedder_version: str) -> dict[str, np.ndarray]:
    """Text -> vector of the index in `base` (the same options without the glossary) when it
    used the same model: adding a glossary then embeds only the glossary's terms, not every term."""
    try:
        metadata = IndexMetadata.model_validate_json((base / "metadata.json").read_text())
        if metadata.embedder_version != embedder_version:
            return {}
        texts = json.loads((base / "entries.json").read_text())["texts"]
        rows = np.load(base / "embedded_rows.npy")
        vectors = faiss.read_index(str(base / "vectors.faiss"))
        return dict(zip((texts[row] for row in rows), vectors.reconstruct_n(0, vectors.ntotal)))
    except Exception as exc:  # noqa: BLE001 - only a shortcut; without it every term is embedded
        log.info("not reusing the vectors of %s (%s)", base, exc)
        return {}


def _first_per_source(concepts: list[Concept], limit: int) -> list[Concept]:
    kept: dict[str, int] = {}
    chosen = []
    for concept in concepts:
        if kept.get(concept.source, 0) < limit:
            kept[concept.source] = kept.get(concept.source, 0) + 1
            chosen.append(concept)
    return chosen


def _is_embedded(concept: Concept, options: IndexOptions) -> bool:
    if concept.source not in SEMANTIC_SOURCES:
        return False
    cm_code = concept.codes.get("ICD-10-CM", "") if concept.source == "icd10cm" else ""
    return len(cm_code.replace(".", "")) <= options.embedded_icd10cm_length


def _rows_to_embed(concepts: list[Concept], entries: list[Entry], options: IndexOptions) -> np.ndarray:
    """Entry ids of preferred terms plus the first few synonyms of the concepts worth embedding."""
    taken: dict[int, int] = {}
    rows = []
    embedded = [_is_embedded(concept, options) for concept in concepts]
    for entry_id, entry in enumerate(entries):
        if not embedded[entry.concept]:
            continue
        if entry.kind == "preferred":
            rows.append(entry_id)
        elif entry.kind == "synonym" and taken.get(entry.concept, 0) < options.embedded_synonyms:
            taken[entry.concept] = taken.get(entry.concept, 0) + 1
            rows.append(entry_id)
    return np.array(rows, dtype=np.int64)


def _faiss_index(matrix: np.ndarray, index_type: IndexType) -> faiss.Index:
    dim = matrix.shape[1]
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 96
    else:
        index = faiss.IndexFlatIP(dim)
    if len(matrix):
        index.add(np.ascontiguousarray(matrix, dtype=np.float32))
    return index


def _read_faiss(path: Path) -> faiss.Index:
    """Memory-mapped when the index type allows it, read into memory otherwise."""
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    except RuntimeError:
        return faiss.read_index(str(path))


def _to_gpu(index: faiss.Index) -> tuple[faiss.Index, str]:
    """The index to search and where it runs: on a faiss GPU build that sees GPUs, exact search on all
    of them (an HNSW graph cannot move to a GPU, so its stored vectors do, searched exhaustively:
    exact and still fast there); else the index as built, on the CPU."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    cpu = f"CPU ({type(index).__name__})"
    if gpus == 0:
        return index, cpu
    flat = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSW) else index
    if not isinstance(flat, faiss.IndexFlat):
        return index, cpu
    return faiss.index_cpu_to_all_gpus(flat), f"{gpus} GPU(s) (exact {type(flat).__name__})"


def _save(folder: Path, metadata: IndexMetadata, concepts: list[Concept], entries: EntryTable,
          embedded_rows: np.ndarray, vectors: faiss.Index, ngrams: CharNgramIndex) -> None:
    """Write into a temporary sibling folder, then swap it in, so a crash never leaves half an index."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".building", dir=folder.parent))
    ConceptStore.write(staging, concepts)
    (staging / "entries.json").write_text(json.dumps({"texts": entries.texts, "kinds": entries.kinds,
                                                      "keys": entries.keys}, ensure_ascii=False))
    np.save(staging / "entry_concepts.npy", entries.concepts)
    np.save(staging / "embedded_rows.npy", embedded_rows)
    faiss.write_index(vectors, str(staging / "vectors.faiss"))
    with (staging / "ngrams.pkl").open("wb") as handle:
        pickle.dump(ngrams, handle, protocol=pickle.HIGHEST_PROTOCOL)
    (staging / "metadata.json").write_text(metadata.model_dump_json(indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def index_folder(options: IndexOptions, settings: Settings | None = None) -> Path:
    return (settings or get_settings()).cache_dir / "terms" / options.key()


def open_term_index(options: IndexOptions | None = None, settings: Settings | None = None,
                    progress: Progress | None = None, rebuild: bool = False) -> TermIndex:
    """Load the saved index for `options`, rebuilding it when missing, stale or corrupt.

    A file lock makes concurrent processes wait for one build instead of each building."""
    options = options or IndexOptions()
    folder = index_folder(options, settings)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        return _load_or_build(folder, options, progress, rebuild)


def _load_or_build(folder: Path, options: IndexOptions, progress: Progress | None, rebuild: bool) -> TermIndex:
    if not rebuild:
        try:
            index = TermIndex.load(folder)
            expected = fingerprint(options, index_sources(options), get_embedder(options.embedder).version)
            recorded = index.metadata
            if recorded.fingerprint == expected == fingerprint(recorded.options, recorded.sources,
                                                               recorded.embedder_version):
                return index
            log.warning("term index in %s is stale (a source or option changed); rebuilding", folder)
        except FileNotFoundError:
            log.info("no term index in %s yet; building it", folder)
        except Exception as exc:  # any unreadable file means the cache cannot be trusted
            log.warning("term index in %s is unreadable (%s); rebuilding", folder, exc)
    return TermIndex.build(folder, options, progress)
