"""The shared medical term index: free text -> concept (id, preferred term, synonyms, codes, labels)."""

from __future__ import annotations

import threading
from pathlib import Path

from assistant.config import Settings, get_settings
from assistant.terminology.index import IndexOptions, TermIndex, open_term_index
from assistant.terminology.models import Concept, TermHit, TermMention

__all__ = ["Concept", "IndexOptions", "TermHit", "TermIndex", "TermMention", "get_term_index"]


_indexes: dict[tuple[Path, str, Path | None], TermIndex] = {}
_lock = threading.Lock()


def get_term_index(settings: Settings | None = None) -> TermIndex:
    """The process-wide term index of the configured embedder (with the user's glossary when
    `term_glossary` is set), built on first use and cached on disk."""
    settings = settings or get_settings()
    options = IndexOptions(embedder=settings.term_embedder, glossary=settings.term_glossary)
    key = (settings.cache_dir, settings.term_embedder, settings.term_glossary)
    with _lock:
        if key not in _indexes:
            _indexes[key] = open_term_index(options, settings)
        return _indexes[key]
