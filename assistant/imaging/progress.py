"""Progress reporting and cancellation for long imaging runs (registration, slice-wise models).

A callback receives the fraction done (0..1) and a short message; it may return ``False`` to ask
for the run to stop (the Gradio UI's cancel button, a CLI's Ctrl-C handler). A
`threading.Event` can be wrapped with `cancel_on`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

ProgressCallback = Callable[[float, str], bool | None]


class OperationCancelled(ValueError):
    """The user cancelled a long run; nothing was stored."""


def report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    """Tell `progress` how far we are; raise `OperationCancelled` if it asks to stop."""
    if progress is not None and progress(min(max(fraction, 0.0), 1.0), message) is False:
        raise OperationCancelled(f"Cancelled during: {message}")


def cancel_on(event: threading.Event, progress: ProgressCallback | None = None) -> ProgressCallback:
    """A callback that forwards to `progress` and stops the run once `event` is set."""

    def callback(fraction: float, message: str) -> bool:
        if progress is not None and progress(fraction, message) is False:
            return False
        return not event.is_set()

    return callback


def within(progress: ProgressCallback | None, start: float, span: float) -> ProgressCallback | None:
    """A callback for one step of a longer run: the step's 0..1 becomes `start`..`start + span` of the whole."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + span * fraction, message)
