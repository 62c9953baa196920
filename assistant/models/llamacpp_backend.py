"""llama.cpp runtime (llama-cpp-python): the fast CPU path for the embedded GGUF models.

It reads the quantised file directly (no dequantisation, sub-second load) and enforces JSON
schemas with a grammar compiled from the schema (`response_format`).
"""

from __future__ import annotations

import threading
import time

import numpy as np
from collections.abc import Iterator, Sequence
from typing import Any

from assistant.config import Settings
from assistant.models.base import ChatModel, Message, ModelError, Sampling, Usage, template_has_tool_role, template_messages
from assistant.models.registry import ResolvedModel
from assistant.volume import Volume


class LlamaCppChatModel(ChatModel):
    runtime = "llamacpp"
    supports_sampling = True
    reuses_prompt_prefix = True  # llama.cpp reuses the evaluated tokens a new prompt starts with

    def __init__(self, resolved: ResolvedModel, settings: Settings) -> None:
        super().__init__()
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelError("llama-cpp-python is not installed: pip install 'scanchat[llamacpp]' (or use --runtime transformers)") from exc
        self.name = resolved.name
        self.settings = settings
        try:
            self.llm = Llama(
                model_path=str(resolved.path),
                n_ctx=settings.llm_context,
                n_threads=settings.llm_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp could not load {resolved.path} ({exc}); re-fetch or replace the GGUF file") from exc
        self.tool_role = template_has_tool_role(self.llm.metadata.get("tokenizer.chat_template"))
        self._generating = threading.Lock()

    def stream(
        self,
        messages: Sequence[Message],
        *,
        json_schema: dict[str, Any] | None = None,
        max_new_tokens: int | None = None,
        volume: Volume | None = None,
        sampling: Sampling | None = None,
    ) -> Iterator[str]:
        if not messages:
            raise ModelError("no messages to answer")
        started = time.perf_counter()
        first_token_at: float | None = None
        completion_tokens = 0
        request: dict[str, Any] = dict(
            messages=template_messages(messages, tool_role=self.tool_role),
            max_tokens=max_new_tokens or self.settings.max_new_tokens,
            temperature=sampling.temperature if sampling else 0.0,
            stream=True,
        )
        if sampling:
            request["seed"] = sampling.seed
        if json_schema is not None:
            request["response_format"] = {"type": "json_object", "schema": json_schema}
        with self._generating:
            before = np.array(self.llm.input_ids)  # the evaluated tokens llama.cpp reuses where the new prompt starts alike
            try:
                for chunk in self.llm.create_chat_completion(**request):
                    piece = chunk["choices"][0]["delta"].get("content")
                    if piece:
                        first_token_at = first_token_at or time.perf_counter()
                        completion_tokens += 1
                        yield piece
            except ValueError as exc:  # context overflow and invalid schemas arrive as ValueError
                raise ModelError(f"{self.name} could not answer: {exc}") from exc
            prompt_tokens = max(self.llm.n_tokens - completion_tokens, 0)
            cached = _common_prefix(before, np.array(self.llm.input_ids[:prompt_tokens]))
        self.last_usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            seconds=time.perf_counter() - started,
            first_token_seconds=first_token_at - started if first_token_at else None,
            cached_prompt_tokens=min(cached, max(prompt_tokens - 1, 0)),  # llama.cpp evaluates the last prompt token again
        )


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens two token sequences share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n
