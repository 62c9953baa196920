"""Heavy tools (segmentation, registration, anomaly detection) in worker processes outside the web process.

`WorkerPool` holds `Settings.tool_workers` slots, each its own one-process `ProcessPoolExecutor` started with
the forkserver method (a clean process: none of the web server's threads, sockets or loaded LLM), so that

* a long tool run never holds the web process's GIL: other users' chats and viewer events go on;
* a slot runs one call at a time, so Cancel can kill the process running that call without touching
  anyone else's, and start a fresh process in its slot;
* a crash (a segfault, the kernel's out-of-memory killer) becomes a `WorkerError` the chat reports, and the
  slot is replaced: the app stays usable;
* calls on one scan go back to the slot that has seen it (sticky by scan fingerprint): its process keeps the
  volume and its per-scan caches, so the voxels cross the process boundary once; `release` drops them there
  (and in this process) when the last session on that scan closes.

With no slots (``tool_workers = 0``, and the CLI, which makes no pool) work runs in the calling thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any, TypeVar

from assistant.imaging import scan_cache
from assistant.imaging.progress import OperationCancelled, ProgressCallback, report
from tools.base import ToolError

if TYPE_CHECKING:
    from assistant.session import ScanSession
    from assistant.volume import Volume

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_S = 0.1  # how often a waiting call checks its Cancel button
KEEP_SCANS = 4  # volumes one worker process keeps (least recently used go first)
# Imported once in the forkserver, so that a worker started after a Cancel or a crash is ready at once.
HEAVY_MODULES = ("tools.segment", "tools.detect_anomalies")


class WorkerError(ToolError):
    """The worker process running a tool stopped (crash, out of memory); it was replaced, the app goes on."""


class _ScanNotHeld(LookupError):
    """Raised in a worker that no longer holds the scan (evicted); the caller sends the volume again."""


# --- in the worker process -----------------------------------------------------------------------------------

_volumes: OrderedDict[str, Volume] = OrderedDict()  # this worker process's scans, by fingerprint


def _end_with(web_process: int) -> None:
    """Initializer: the worker ends when the web process does. A web process killed or stopped by SIGTERM never tells
    its executor's workers to stop, and each worker holds its own end of its call queue, so it would wait forever."""

    def watch() -> None:
        while True:
            time.sleep(1)
            try:
                os.kill(web_process, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, name="end-with-web-process", daemon=True).start()


def _started() -> int:
    """The first call in a new worker: its pid (so Cancel can kill it)."""
    return os.getpid()


def _call(fingerprint: str, volume: Volume | None, work: Callable[..., T], args: tuple, kwargs: dict) -> T:
    if volume is not None:
        _volumes[fingerprint] = volume
    if fingerprint not in _volumes:
        raise _ScanNotHeld(fingerprint)
    _volumes.move_to_end(fingerprint)
    while len(_volumes) > KEEP_SCANS:
        drop_scan_caches(next(iter(_volumes)))
    return work(_volumes[fingerprint], *args, progress=None, **kwargs)


def drop_scan_caches(fingerprint: str) -> None:
    """Forget one scan in this process: its volume and the imaging results cached for it."""
    _volumes.pop(fingerprint, None)
    scan_cache.drop(fingerprint)


# --- in the web process --------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    index: int
    executor: ProcessPoolExecutor
    pid: Future  # of `_started`
    scans: set[str] = field(default_factory=set)  # fingerprints its process holds
    busy: bool = False


class WorkerPool:
    """`size` worker processes for heavy tool calls; thread-safe, one per web process. Slots start on first use."""

    def __init__(self, size: int):
        self.size = size
        self._slots: list[_Slot] = []
        self._lock = threading.Condition()
        self._holders: Counter[str] = Counter()  # open sessions per scan fingerprint

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every slot's process now (they import the heavy modules) rather than on the first call."""
        with self._lock:
            if not self._slots and self.size:
                context = get_context("forkserver")
                context.set_forkserver_preload(list(HEAVY_MODULES))
                self._slots = [self._new_slot(i) for i in range(self.size)]

    def close(self) -> None:
        with self._lock:
            for slot in self._slots:
                self._stop(slot)
            self._slots = []

    def pids(self) -> list[int]:
        """The worker processes' ids (waits for them to start)."""
        self.start()
        return [slot.pid.result() for slot in self._slots]

    # -- scans held by sessions ---------------------------------------------------------------------------

    def hold(self, fingerprint: str) -> None:
        """A session opened this scan."""
        with self._lock:
            self._holders[fingerprint] += 1

    def release(self, fingerprint: str) -> None:
        """A session on this scan closed or moved on; the last one out drops the scan's caches everywhere."""
        with self._lock:
            self._holders[fingerprint] -= 1
            if self._holders[fingerprint] > 0:
                return
            del self._holders[fingerprint]
            holding = [slot for slot in self._slots if fingerprint in slot.scans]
            for slot in holding:
                slot.scans.discard(fingerprint)
        drop_scan_caches(fingerprint)
        for slot in holding:  # queued behind that slot's current call, if any; nobody waits for it
            try:
                slot.executor.submit(drop_scan_caches, fingerprint)
            except RuntimeError:  # the slot was replaced meanwhile: its new process never held the scan
                pass

    # -- calls ----------------------------------------------------------------------------------------------

    def run(self, session: ScanSession, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``work(volume, *args, progress=..., **kwargs)`` on the session's scan, in a worker process.

        `work` is a module-level function (it is sent by name); the session's progress callback is polled
        while the call waits or runs, and a Cancel there kills the worker (`OperationCancelled`)."""
        volume = session.require_volume()
        if not self.size:
            return work(volume, *args, progress=session.progress, **kwargs)
        self.start()
        fingerprint, label = session.fingerprint, work.__name__.replace("_", " ")
        slot = self._acquire(fingerprint, session.progress, label)
        try:
            for _ in range(2):
                send = volume if fingerprint not in slot.scans else None
                future = slot.executor.submit(_call, fingerprint, send, work, args, kwargs)
                slot.scans.add(fingerprint)
                try:
                    return self._wait(slot, future, session.progress, label)
                except _ScanNotHeld:
                    slot.scans.discard(fingerprint)
            raise WorkerError(f"The {label} worker lost the scan twice; try again.")
        finally:
            with self._lock:
                slot.busy = False
                self._lock.notify_all()

    def _acquire(self, fingerprint: str, progress: ProgressCallback | None, label: str) -> _Slot:
        """A free slot, the one holding this scan first; while all are busy, wait (and watch for Cancel)."""
        while True:
            with self._lock:
                free = [slot for slot in self._slots if not slot.busy]
                if free:
                    slot = next((s for s in free if fingerprint in s.scans), min(free, key=lambda s: len(s.scans)))
                    slot.busy = True
                    return slot
                self._lock.wait(POLL_S)
            report(progress, 0.0, f"{label}: waiting for a free tool worker")

    def _wait(self, slot: _Slot, future: Future, progress: ProgressCallback | None, label: str) -> Any:
        while True:
            try:
                return future.result(timeout=POLL_S)
            except TimeoutError:
                pass
            except BrokenProcessPool as exc:
                log.error("tool worker %d (%s) stopped while running %s", slot.index, _pid(slot), label)
                self._replace(slot, kill=False)
                raise WorkerError(f"The process running {label} stopped unexpectedly (it may have run out of "
                                  "memory); it was restarted and earlier results are kept. Try again, or on a "
                                  "smaller region.") from exc
            try:
                report(progress, 0.5, f"{label} (tool worker {slot.index + 1})")
            except OperationCancelled:
                log.info("cancelled: killing tool worker %d (%s) running %s", slot.index, _pid(slot), label)
                self._replace(slot, kill=True)
                raise

    def _new_slot(self, index: int) -> _Slot:
        executor = ProcessPoolExecutor(max_workers=1, mp_context=get_context("forkserver"), initializer=_end_with,
                                       initargs=(os.getpid(),))
        return _Slot(index=index, executor=executor, pid=executor.submit(_started))

    def _replace(self, slot: _Slot, *, kill: bool) -> None:
        """Stop the slot's process (killing it mid-call if asked) and give the slot a fresh one."""
        if kill:
            self._stop(slot)
        else:
            slot.executor.shutdown(wait=False, cancel_futures=True)
        fresh = self._new_slot(slot.index)
        with self._lock:
            slot.executor, slot.pid, slot.scans = fresh.executor, fresh.pid, set()

    @staticmethod
    def _stop(slot: _Slot) -> None:
        try:
            os.kill(slot.pid.result(timeout=60), signal.SIGKILL)
        except (OSError, TimeoutError, BrokenProcessPool):
            pass
        slot.executor.shutdown(wait=False, cancel_futures=True)


def _pid(slot: _Slot) -> str:
    try:
        return f"pid {slot.pid.result(timeout=0)}"
    except Exception:  # still starting, or it never did
        return "no pid"

