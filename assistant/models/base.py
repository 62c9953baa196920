"""One chat interface over every runtime (transformers, llama.cpp, OpenAI-compatible servers, VLMs).

The agent never knows which runtime it talks to. A backend receives the conversation, the
current scan (so that a 3D vision-language backend can look at it; text-only backends ignore
it and rely on the scan description the agent puts into the prompt) and, when the agent needs
a structured decision, a JSON schema the output must satisfy. Backends enforce the schema with
constrained decoding (lm-format-enforcer, a llama.cpp grammar, or the server's guided JSON),
never with regexes over free text.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from assistant.volume import Volume

Role = Literal["system", "user", "assistant", "tool"]


class Message(BaseModel):
    role: Role
    content: str
    name: str | None = None  # the tool's name, for role == "tool"


@dataclass
class Usage:
    """Token counts and timings of the last generation, for traces and benchmarks."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    first_token_seconds: float | None = None
    cached_prompt_tokens: int | None = None  # prompt tokens the runtime reused from its prompt/KV cache; None: not reported


@dataclass(frozen=True)
class Sampling:
    """Temperature sampling with a seed instead of greedy decoding: evals repeat a scenario with it
    to measure how flaky it is, and the seed keeps each repeat reproducible."""

    temperature: float
    seed: int


def template_has_tool_role(chat_template: str | None) -> bool:
    """Templates that handle tool results test for the role by name (Qwen: message.role == "tool")."""
    return bool(chat_template) and ('"tool"' in chat_template or "'tool'" in chat_template)


def template_messages(messages: Sequence[Message], *, tool_role: bool) -> list[dict[str, str]]:
    """Messages as chat-template dicts; without a native "tool" role, tool results become user turns.

    Small models whose template lacks a tool role (SmolLM2, most OpenAI-compatible servers
    without native tool calls) still see which tool produced a result.
    """
    rendered = []
    for message in messages:
        if message.role == "tool" and not tool_role:
            rendered.append({"role": "user", "content": f"Tool result ({message.name or 'tool'}):\n{message.content}"})
        else:
            rendered.append({"role": message.role, "content": message.content})
    return rendered


class ToolDecider(Protocol):
    """A model that makes the agent's tool decisions itself, looking at the scan while it decides (the project's VLM
    trained on the tool-calling bank), instead of being handed the text model's prompts."""

    def choose_tool(self, request: str, previous: str | None, tools: Sequence[str], volume: Volume | None) -> str:
        """One of `tools` or "none" for the user's `request` (`previous`: the user's message before it)."""

    def fill_arguments(self, request: str, previous: str | None, tool: str, schema: dict[str, Any],
                       volume: Volume | None) -> dict[str, Any]:
        """Arguments for `tool`, valid JSON under its `schema`."""


class ModelError(RuntimeError):
    """A model could not be loaded or run; the message says what to do about it."""


class ChatModel(ABC):
    """A chat model behind ScanChat's one interface."""

    name: str = "model"
    runtime: str = "unknown"
    sees_volumes: bool = False  # True for vision-language backends that consume the Volume
    supports_sampling: bool = False  # True when `stream` accepts `sampling=Sampling(...)`
    reuses_prompt_prefix: bool = False  # True where the runtime keeps evaluated prompt tokens for the next call to reuse
    decider: ToolDecider | None = None  # set where the same model also chooses tools and fills their arguments

    def __init__(self) -> None:
        self.last_usage = Usage()

    @property
    def last_usage(self) -> Usage:
        """The calling thread's last generation: one loaded model answers several users' turns at once, and each
        turn counts its own tokens (backends set it in the thread that consumed the stream)."""
        mine = self.__dict__.setdefault("_per_thread", threading.local())
        if not hasattr(mine, "usage"):
            mine.usage = Usage()
        return mine.usage

    @last_usage.setter
    def last_usage(self, usage: Usage) -> None:
        self.__dict__.setdefault("_per_thread", threading.local()).usage = usage

    @abstractmethod
    def stream(
        self,
        messages: Sequence[Message],
        *,
        json_schema: dict[str, Any] | None = None,
        max_new_tokens: int | None = None,
        volume: Volume | None = None,
    ) -> Iterator[str]:
        """Yield the reply piece by piece (greedy decoding).

        With `json_schema`, the joined pieces form one JSON document valid under the schema.
        Fills `self.last_usage` when the stream is exhausted. Backends with `supports_sampling`
        also take `sampling: Sampling | None` (None: greedy).
        """

    def warm(self, messages: Sequence[Message]) -> None:
        """Read a prompt now (one token is generated), so that a later prompt opening the same way reads only what
        follows: prefill dominates a turn on a CPU. Nothing to do where the runtime keeps no prompt cache."""
        if self.reuses_prompt_prefix:
            for _ in self.stream(messages, max_new_tokens=1):
                pass

    def complete(self, messages: Sequence[Message], **kwargs: Any) -> str:
        return "".join(self.stream(messages, **kwargs))

    def complete_json(self, messages: Sequence[Message], schema: dict[str, Any], **kwargs: Any) -> Any:
        text = self.complete(messages, json_schema=schema, **kwargs)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{self.name} produced invalid JSON despite the schema: {text[:200]!r}") from exc


class ModelWrapper(ChatModel):
    """Another model seen through bookkeeping (metering, timing): what the agent reads from its model (name, runtime,
    whether it sees volumes, its tool decider, the vision model's per-thread looked-at-the-scan flags) is the inner model's."""

    def __init__(self, inner: ChatModel) -> None:
        super().__init__()
        self.inner = inner
        self.name, self.runtime, self.sees_volumes, self.decider = inner.name, inner.runtime, inner.sees_volumes, inner.decider

    @property
    def last_looked_at_volume(self) -> bool:
        return getattr(self.inner, "last_looked_at_volume", False)

    @property
    def last_volume_note(self) -> str | None:
        return getattr(self.inner, "last_volume_note", None)
