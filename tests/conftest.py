"""Optional runtimes: skipped on a developer's machine without them, a failure in CI.

CI (`.ci/run` sets CI=true) must test what the README promises: the llama.cpp runtime (the default
`auto` runtime's first choice) and Apertium. A failed build must not turn their tests into silent
skips; SCANCHAT_SKIP_LLAMACPP=1 is the one deliberate way to run CI without llama.cpp.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _missing(what: str, opted_out: bool = False) -> None:
    if _in_ci() and not opted_out:
        pytest.fail(f"{what} is not installed, so CI cannot test it: scripts/setup must install it (see its log).")
    pytest.skip(f"{what} is not installed")


@pytest.fixture
def apertium() -> str:
    """The Apertium executable (Debian apertium, apertium-eng-spa)."""
    path = shutil.which("apertium")
    if path is None:
        _missing("Apertium (Debian packages apertium, apertium-eng-spa)")
    return path


@pytest.fixture
def apertium_pt_es(apertium: str) -> str:
    """Apertium with the pt->es mode (Debian apertium-es-pt), the second step of the default en->es engine."""
    from assistant.translation.engines import ApertiumEngine

    if not ApertiumEngine().has_mode("pt", "es"):
        _missing("Apertium's pt->es pair (Debian package apertium-es-pt)")
    return apertium


@pytest.fixture
def llama_cpp():
    """The llama-cpp-python module (built from source by scripts/setup)."""
    if importlib.util.find_spec("llama_cpp") is None:
        _missing("llama-cpp-python (the llama.cpp runtime)", opted_out=os.environ.get("SCANCHAT_SKIP_LLAMACPP") == "1")
    import llama_cpp

    return llama_cpp
