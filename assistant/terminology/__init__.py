"""The shared medical term index: free text -> concept (id, preferred term, synonyms, codes, labels)."""

from __future__ import annotations

import threading
from pathlib import Path

from assistant.config import Settings, get_settings
from assistant.terminology.index import IndexOptions, TermIndex, open_term_index
from assistant.terminology.models import Concept, TermHit, TermMention

__all__ = ["Concept", "IndexOptions", "TermHit", "TermIndex", "TermMention", "get_term_index"]


_indexes: dict[Path, TermIndex] = {}
_lock = threading.Lock()


def get_term_index(settings: Settings | None = None) -> TermIndex:
    """The process-wide default term index, built on first use and cached on disk."""
    settings = settings or get_settings()
    with _lock:
        if settings.cache_dir not in _indexes:
            _indexes[settings.cache_dir] = open_term_index(IndexOptions(), settings)
        return _indexes[settings.cache_dir]
