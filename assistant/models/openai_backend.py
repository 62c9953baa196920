"""OpenAI-compatible HTTP runtime: bigger models on another machine (vLLM, llama.cpp server, Ollama).

Streams Server-Sent Events from ``/v1/chat/completions``. JSON schemas go as
``response_format={"type": "json_schema", ...}``, which those servers enforce with guided decoding.
Tool results are sent as user messages, because the agent does not use the servers' native
tool-call protocol (whose tool messages need call ids). Which servers are allowed, and where the
API key (SCANCHAT_OPENAI_API_KEY only) may go, is `openai_endpoint`'s rule.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from assistant.config import Settings
from assistant.models.base import ChatModel, Message, ModelError, Usage, template_messages
from assistant.models.openai_endpoint import checked_endpoint
from assistant.volume import Volume

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0  # between two streamed chunks; a cold server may take long for the first


class OpenAIChatModel(ChatModel):
    runtime = "openai"

    def __init__(self, settings: Settings, model: str) -> None:
        super().__init__()
        endpoint = checked_endpoint(settings)
        self.name = model
        self.settings = settings
        self.client = httpx.Client(
            base_url=endpoint.api_root,
            headers={"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {},
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            follow_redirects=False,  # the key goes to the configured host only
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        json_schema: dict[str, Any] | None = None,
        max_new_tokens: int | None = None,
        volume: Volume | None = None,
    ) -> Iterator[str]:
        if not messages:
            raise ModelError("no messages to answer")
        started = time.perf_counter()
        first_token_at: float | None = None
        pieces = 0
        usage: dict[str, Any] = {}
        body: dict[str, Any] = {
            "model": self.name,
            "messages": template_messages(messages, tool_role=False),
            "max_tokens": max_new_tokens or self.settings.max_new_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": json_schema.get("title", "answer"), "schema": json_schema, "strict": True},
            }
        try:
            with self.client.stream("POST", "chat/completions", json=body) as response:
                if response.is_redirect:
                    raise ModelError(f"{self.client.base_url} answered HTTP {response.status_code} (a redirect, not "
                                     "followed so the key stays with this host); set SCANCHAT_OPENAI_BASE_URL to the "
                                     "final address.")
                if response.status_code >= 300:
                    detail = response.read().decode(errors="replace")[:300]
                    raise ModelError(f"{self.client.base_url} answered HTTP {response.status_code}: {detail}")
                for chunk in _server_sent_events(response):
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            first_token_at = first_token_at or time.perf_counter()
                            pieces += 1
                            yield piece
        except httpx.TimeoutException as exc:
            raise ModelError(f"{self.client.base_url} did not answer in time ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise ModelError(f"cannot reach the model server at {self.client.base_url}: {exc}") from exc
        self.last_usage = Usage(
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", pieces)),
            seconds=time.perf_counter() - started,
            first_token_seconds=first_token_at - started if first_token_at else None,
        )


def _server_sent_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except json.JSONDecodeError as exc:
            raise ModelError(f"the model server sent a malformed event: {data[:120]!r}") from exc
