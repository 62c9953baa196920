"""Heavy tools in worker processes (a real forkserver pool): they run in another process, Cancel kills that process
and the next call works, a crash is a clear WorkerError, calls on a scan stick to the worker that holds it, and two
sessions share nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from assistant.imaging.progress import OperationCancelled, cancel_on
from assistant.scans.samples import load_sample
from assistant.session import ScanSession
from assistant.workers import WorkerError, WorkerPool
from tools.base import ToolError
from tools.segment import SegmentArgs, SegmentTool, run_segmentation


# Work functions are sent to the workers by name, so they live at module level.
def process_id(volume, progress=None) -> int:
    return os.getpid()


def scans_held(volume, progress=None) -> list[str]:
    from assistant import workers

    return list(workers._volumes)


def sleep_then_pid(volume, seconds: float, progress=None) -> int:
    time.sleep(seconds)
    return os.getpid()


def crash(volume, progress=None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def pool():
    pool = WorkerPool(2)
    pool.start()
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def scan():
    return load_sample("mr-t1-itk")


def _session(pool: WorkerPool, volume) -> ScanSession:
    session = ScanSession(workers=pool)
    session.load(volume)
    return session


def test_a_tool_call_runs_in_a_worker_process_and_gives_the_in_process_result(pool, scan):
    session = _session(pool, scan)
    worker = session.compute(process_id)
    assert worker != os.getpid() and worker in pool.pids()
    SegmentTool(session=session).invoke({"structure": "head"})
    in_process = run_segmentation(scan, SegmentArgs(structure="head"))
    assert session.overlays["segmentation"].data.any() and np.array_equal(session.overlays["segmentation"].data, in_process.mask)
    assert session.compute(process_id) == worker  # sticky: the same scan goes back to the worker that holds it


def test_cancel_kills_the_worker_running_the_call_and_the_next_call_works(pool, scan):
    session = _session(pool, scan)
    cancel = threading.Event()
    session.progress = cancel_on(cancel)
    before = set(pool.pids())
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["pid"] = session.compute(sleep_then_pid, 120)
        except OperationCancelled as exc:
            outcome["cancelled"] = exc

    runner = threading.Thread(target=call)
    runner.start()
    time.sleep(2)
    cancel.set()
    started = time.perf_counter()
    runner.join(30)
    assert "cancelled" in outcome and time.perf_counter() - started < 5  # not the 120 s the call would take
    after = set(pool.pids())
    killed = before - after
    assert len(killed) == 1 and not any(_alive(pid) for pid in killed) and len(after) == 2
    session.progress = None
    assert session.compute(process_id) in after
    result = SegmentTool(session=session).invoke({"structure": "head"})
    assert "segmentation" in session.overlays and result


def test_a_worker_crash_is_a_clear_error_and_the_pool_stays_usable(pool, scan):
    session = _session(pool, scan)
    before = set(pool.pids())
    with pytest.raises(WorkerError, match="stopped unexpectedly.*restarted") as error:
        session.compute(crash)
    assert isinstance(error.value, ToolError)  # the agent reports it in the answer like any tool failure
    after = set(pool.pids())
    assert len(before - after) == 1 and len(after) == 2
    assert session.compute(process_id) in after


def test_two_sessions_share_no_state_and_the_last_one_out_drops_the_scan(scan):
    pool = WorkerPool(1)  # one worker: every call below lands on it
    try:
        first, second = _session(pool, scan), _session(pool, replace(scan, data=scan.data[::-1].copy()))
        for session in (first, second):
            pool.hold(session.fingerprint)
        SegmentTool(session=first).invoke({"structure": "head"})
        with pytest.raises(ToolError, match="no previous segmentation"):  # the first session's mask is not the second's
            SegmentTool(session=second).invoke({"refine": "grow", "amount_mm": 1.0})
        assert "segmentation" not in second.overlays and "segmentation" in first.overlays
        assert set(second.compute(scans_held)) == {first.fingerprint, second.fingerprint}
        pool.hold(first.fingerprint)  # another session opens the first scan, then the first session closes
        pool.release(first.fingerprint)
        assert first.fingerprint in second.compute(scans_held)
        pool.release(first.fingerprint)  # the last session on that scan closed: the worker forgets it
        assert second.compute(scans_held) == [second.fingerprint]
    finally:
        pool.close()


def test_the_workers_end_when_the_web_process_is_killed(tmp_path):
    script = ("import os, signal; from assistant.workers import WorkerPool; pool = WorkerPool(2); "
              "print(*pool.pids(), flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    with open(tmp_path / "pids", "w") as out:  # a file, not a pipe: the workers inherit it
        returncode = subprocess.run([sys.executable, "-c", script], stdout=out, timeout=300).returncode
    workers = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    assert len(workers) == 2 and returncode == -signal.SIGKILL
    deadline = time.time() + 15
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a killed child not yet reaped is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False
