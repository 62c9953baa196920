"""The llama.cpp server the tests start as a separate process on 127.0.0.1, over smollm2-135m."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from assistant.config import get_settings
from assistant.models.registry import MODEL_SPECS, fetch_model
from assistant.models.server import llama_server

KEY = "test-key-5b2f"


@contextmanager
def llama_cpp_server(log: Path, api_key: str | None = KEY, threads: int = 2, model: str = "smollm2-135m") -> Iterator[str]:
    """`python -m llama_cpp.server` on the model's GGUF with `threads` threads; yields the /v1 URL."""
    settings = get_settings().model_copy(update={"llm_threads": threads, "llm_context": 4096})
    with llama_server(fetch_model(MODEL_SPECS[model], settings), model, settings, log, api_key) as url:
        yield url
