"""Per-conversation state: the scan on screen, what the tools found, and the overlays to show.

One `ScanSession` belongs to one browser session (Gradio state) or one CLI run; nothing here
is module-level, so two users never see each other's data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from assistant.findings import Finding
from assistant.imaging.progress import ProgressCallback
from assistant.volume import Volume
from tools.base import NoScanError, ToolResult

if TYPE_CHECKING:
    from assistant.workers import WorkerPool

T = TypeVar("T")


@dataclass
class ToolRecord:
    """One tool call as it happened: what was asked, what came back, or why it failed."""

    name: str
    arguments: dict[str, Any]
    result: ToolResult | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Overlay:
    """A voxel map aligned with the session's volume, shown over the scan in the viewer."""

    name: str
    data: np.ndarray  # same shape as the volume; bool/int labels or float scores
    kind: str = "mask"  # "mask", "labels" or "heatmap"


@dataclass
class ScanSession:
    volume: Volume | None = None
    records: list[ToolRecord] = field(default_factory=list)
    overlays: dict[str, Overlay] = field(default_factory=dict)
    observations: list[Finding] = field(default_factory=list)  # what a vision model said it saw, not measured
    # set by the front end for a turn: long tool runs report here, and stop when it returns False
    progress: ProgressCallback | None = None
    workers: WorkerPool | None = None  # the web app's tool worker processes; None runs heavy work in this thread
    held_scan: str | None = field(default=None, repr=False)  # the fingerprint this session holds in `scan_cache`
    _fingerprint: tuple[Volume, str] | None = field(default=None, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """The loaded scan's content hash, computed once per scan (it reads every voxel)."""
        volume = self.require_volume()
        if self._fingerprint is None or self._fingerprint[0] is not volume:
            from assistant.reports.collect import scan_fingerprint

            self._fingerprint = (volume, scan_fingerprint(volume))
        return self._fingerprint[1]

    def compute(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``work(volume, *args, progress=..., **kwargs)`` on the loaded scan: heavy tools (segmentation,
        registration, anomaly detection) call through here so that the web app runs them in its worker pool."""
        if self.workers is not None:
            return self.workers.run(self, work, *args, **kwargs)
        return work(self.require_volume(), *args, progress=self.progress, **kwargs)

    def require_volume(self) -> Volume:
        if self.volume is None:
            raise NoScanError("No scan is loaded yet. Upload a scan or pick a sample first.")
        return self.volume

    def load(self, volume: Volume) -> None:
        """Switch to a new scan; results about the previous scan no longer apply."""
        from assistant.imaging.scan_cache import hold

        self.close()
        self.volume = volume
        hold(volume.fingerprint)
        self.held_scan = volume.fingerprint
        self.records.clear()
        self.overlays.clear()
        self.observations.clear()

    def close(self) -> None:
        """End the session's hold on its scan: the last session showing it drops its cached intermediate results
        (`scan_cache`). Closing twice lets go once."""
        if self.held_scan is not None:
            from assistant.imaging.scan_cache import release

            release(self.held_scan)
            self.held_scan = None

    def add_overlay(self, overlay: Overlay) -> None:
        volume = self.require_volume()
        if overlay.data.shape != volume.shape:
            raise ValueError(f"Overlay {overlay.name!r} has shape {overlay.data.shape}, scan has {volume.shape}.")
        self.overlays[overlay.name] = overlay
