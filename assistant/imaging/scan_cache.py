"""Expensive intermediate results of one scan (registration transforms, atlas warps, warped feature maps), computed
once and shared by every tool and turn that needs them.

Entries are keyed by the scan's content (`Volume.fingerprint`), the method's version (a changed method never
reads an older result) and a name. The cache is bounded by `Settings.scan_cache_bytes` (least recently used
entries go first). Keyed by content, two sessions that open the same scan share its registration (both computed it
from the same voxels), so a scan's entries go when the last session showing it lets go (`hold` / `release`).
"""

from __future__ import annotations

import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import numpy as np

from assistant.config import get_settings

T = TypeVar("T")


def nbytes_of(value: Any) -> int:
    """Memory an entry holds: arrays by their buffers, objects by their `nbytes`, tuples and lists by their items."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes_of(item) for item in value)
    return sys.getsizeof(value)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0


class ScanCache:
    """A byte-bounded LRU map of (fingerprint, method version, key) -> result; thread-safe."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[str, str, str], tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[tuple[str, str, str], threading.Lock] = {}
        self._holders: Counter[str] = Counter()
        self._stats = CacheStats()

    def get_or_compute(self, fingerprint: str, method_version: str, key: str, fn: Callable[[], T]) -> T:
        """The cached result, or `fn()` computed once (concurrent callers of the same entry wait for it) and kept
        while the budget allows."""
        entry = (fingerprint, method_version, key)
        with self._lock:
            computing = self._computing.setdefault(entry, threading.Lock())
        with computing:
            with self._lock:
                if entry in self._entries:
                    self._entries.move_to_end(entry)
                    self._stats.hits += 1
                    return self._entries[entry][0]
                self._stats.misses += 1
            value = fn()  # outside the cache's lock: other entries stay readable during a registration
            if isinstance(value, np.ndarray):
                value.setflags(write=False)  # shared by every tool and turn: a caller changing it would change theirs
            self._store(entry, value, nbytes_of(value))
        with self._lock:
            self._computing.pop(entry, None)
        return value

    def _store(self, entry: tuple[str, str, str], value: Any, size: int) -> None:
        with self._lock:
            if size > self.budget_bytes:
                return  # larger than the whole budget: used once, not kept
            self._entries[entry] = (value, size)
            while sum(s for _, s in self._entries.values()) > self.budget_bytes:
                self._entries.popitem(last=False)
                self._stats.evictions += 1

    def hold(self, fingerprint: str) -> None:
        """A session shows this scan."""
        with self._lock:
            self._holders[fingerprint] += 1

    def release(self, fingerprint: str) -> int:
        """A session showing this scan closed or moved on; the last one out drops its entries (how many went)."""
        with self._lock:
            self._holders[fingerprint] -= 1
            if self._holders[fingerprint] > 0:
                return 0
            del self._holders[fingerprint]
        return self.drop(fingerprint)

    def drop(self, fingerprint: str) -> int:
        """Forget every entry of one scan; how many went."""
        with self._lock:
            gone = [entry for entry in self._entries if entry[0] == fingerprint]
            for entry in gone:
                del self._entries[entry]
            return len(gone)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._stats.hits, self._stats.misses, self._stats.evictions,
                              sum(s for _, s in self._entries.values()), len(self._entries))


@cache
def scan_cache() -> ScanCache:
    """The process's cache, sized by `Settings.scan_cache_bytes`."""
    return ScanCache(get_settings().scan_cache_bytes)


def get_or_compute(fingerprint: str, method_version: str, key: str, fn: Callable[[], T]) -> T:
    return scan_cache().get_or_compute(fingerprint, method_version, key, fn)


def drop(fingerprint: str) -> int:
    return scan_cache().drop(fingerprint)


def hold(fingerprint: str) -> None:
    scan_cache().hold(fingerprint)


def release(fingerprint: str) -> int:
    return scan_cache().release(fingerprint)
