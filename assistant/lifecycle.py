"""How long per-user data lives in the web process and on disk, and how much of it one user may hold.

The UI opens a `SessionLimits` slot per browser session (refused past `Settings.max_sessions_per_user`),
charges each loaded volume against `Settings.max_session_bytes`, and releases the slot from the
``delete_callback`` of a ``gr.State(time_to_live=Settings.session_ttl_s)``, calling `remove_session_files`
for the session's uploads and exports. `sweep` removes what a crashed process left behind.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from assistant.config import Settings

log = logging.getLogger(__name__)


class LimitError(ValueError):
    """A per-user limit was reached; the message says which and what to do."""


def private_dir(path: Path) -> Path:
    """A folder only this account can read (0700), for uploads and exports of patient data."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def remove_session_files(paths: list[Path], root: Path) -> int:
    """Delete a session's uploaded and exported files and folders, only inside `root`; how many went."""
    removed = 0
    root = root.resolve()
    for path in paths:
        target = Path(path).resolve()
        if target == root or root not in target.parents:
            log.warning("not deleting %s: outside %s", target, root)
            continue
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
        removed += not target.exists()
    return removed


def sweep(folder: Path, max_age_s: float, now: float | None = None) -> int:
    """Delete entries of `folder` untouched for `max_age_s` (left by sessions of a process that died)."""
    if not folder.is_dir():
        return 0
    cutoff = (now or time.time()) - max_age_s
    stale = [entry for entry in folder.iterdir() if entry.lstat().st_mtime < cutoff]
    return remove_session_files(stale, folder)


@dataclass
class _Slot:
    user: str
    nbytes: int = 0


@dataclass
class SessionLimits:
    """Open browser sessions per user and the memory their volumes hold; thread-safe, one per web process."""

    max_sessions: int
    max_bytes: int
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionLimits:
        return cls(max_sessions=settings.max_sessions_per_user, max_bytes=settings.max_session_bytes)

    def open(self, user: str, session_id: str) -> None:
        with self._lock:
            if session_id in self._slots:
                return
            if sum(slot.user == user for slot in self._slots.values()) >= self.max_sessions:
                raise LimitError(f"{user} already has {self.max_sessions} sessions open; close one (or wait for it "
                                 "to expire) before opening another.")
            self._slots[session_id] = _Slot(user)

    def charge(self, session_id: str, nbytes: int) -> None:
        """Set what this session holds (the loaded volume's bytes), refused if the user's total would pass the limit."""
        with self._lock:
            slot = self._slots[session_id]
            others = sum(s.nbytes for key, s in self._slots.items() if s.user == slot.user and key != session_id)
            if others + nbytes > self.max_bytes:
                raise LimitError(f"{slot.user}'s sessions would hold {(others + nbytes) / 2**30:.1f} GiB of scans, more "
                                 f"than the {self.max_bytes / 2**30:.1f} GiB allowed; close another session first.")
            slot.nbytes = nbytes

    def close(self, session_id: str) -> None:
        with self._lock:
            self._slots.pop(session_id, None)

    def held(self, user: str) -> tuple[int, int]:
        """(sessions, bytes) the user holds now."""
        with self._lock:
            mine = [s for s in self._slots.values() if s.user == user]
            return len(mine), sum(s.nbytes for s in mine)
