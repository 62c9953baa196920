"""OpenAI-compatible HTTP runtime: bigger models on another machine (vLLM, llama.cpp's server, Ollama).

The client is the maintained `openai` SDK: connect and read timeouts, retries with exponential
backoff on 408/409/429/5xx and dropped connections (honouring Retry-After), and streaming.
JSON schemas go as ``response_format={"type": "json_schema", ...}`` (vLLM, the OpenAI API); a
server that rejects that form is asked once more with llama-cpp-python's ``{"type":
"json_object", "schema": ...}``, and the form that worked is kept. Tool results are sent as user
messages, because the agent does not use the servers' native tool-call protocol (whose tool
messages need call ids). Which servers are allowed, and where the API key (SCANCHAT_OPENAI_API_KEY only) may go,
is `openai_endpoint`'s rule; the key never appears in
messages or logs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import openai

from assistant.config import Settings
from assistant.models.base import ChatModel, Message, ModelError, Sampling, Usage, template_messages
from assistant.models.openai_endpoint import checked_endpoint
from assistant.volume import Volume

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0  # between two streamed chunks; a cold server may take long for the first
MAX_RETRIES = 4  # the SDK backs off exponentially (0.5 s doubling, capped at 8 s) between tries
_NO_KEY = "none"  # the SDK insists on a key; servers without authentication ignore it


class OpenAIChatModel(ChatModel):
    runtime = "openai"
    supports_sampling = True
    reuses_prompt_prefix = True  # llama_cpp.server keeps the last prompt's tokens; vLLM and others cache prefixes

    def __init__(self, settings: Settings, model: str) -> None:
        super().__init__()
        endpoint = checked_endpoint(settings)  # opt-in and https for another machine
        self.name = model
        self.settings = settings
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        self.client = openai.OpenAI(
            base_url=endpoint.api_root,
            api_key=endpoint.api_key or _NO_KEY,  # SCANCHAT_OPENAI_API_KEY only, never a general OPENAI_API_KEY
            timeout=timeout,
            max_retries=MAX_RETRIES,
            # the key goes to the configured host only; without a key, no Authorization header at all
            http_client=httpx.Client(timeout=timeout, follow_redirects=False,
                                     event_hooks={"request": [] if endpoint.api_key else [_without_placeholder_key]}),
        )
        self.schema_format = "json_schema"  # the OpenAI form (vLLM); "json_object" + schema for llama-cpp-python
        self.schema_format_known = False

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
        pieces = 0
        usage = None
        finished = False
        request: dict[str, Any] = dict(
            model=self.name,
            messages=template_messages(messages, tool_role=False),
            max_tokens=max_new_tokens or self.settings.max_new_tokens,
            temperature=sampling.temperature if sampling else 0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        if sampling:
            request["seed"] = sampling.seed
        try:
            chunks = self._create(request, json_schema)
            with chunks:
                for chunk in chunks:
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        finished = finished or choice.finish_reason is not None
                        piece = choice.delta.content if choice.delta else None
                        if piece:
                            first_token_at = first_token_at or time.perf_counter()
                            pieces += 1
                            yield piece
        except openai.APITimeoutError as exc:
            raise ModelError(f"{self.client.base_url} did not answer in time ({READ_TIMEOUT_S:.0f} s)") from exc
        except openai.APIConnectionError as exc:
            raise ModelError(f"cannot reach the model server at {self.client.base_url}: {exc.__cause__ or exc}") from exc
        except openai.AuthenticationError as exc:
            raise ModelError(f"{self.client.base_url} refused the API key (HTTP 401); set SCANCHAT_OPENAI_API_KEY") from exc
        except openai.APIStatusError as exc:
            raise ModelError(f"{self.client.base_url} answered HTTP {exc.status_code}: {_detail(exc)}") from exc
        except openai.APIError as exc:  # an error event inside the stream
            raise ModelError(f"the model server at {self.client.base_url} failed mid-answer: {exc.message}") from exc
        if not finished:  # llama-cpp-python's server closes the stream silently when generation fails
            raise ModelError(
                f"the model server at {self.client.base_url} ended the answer unfinished (it failed while generating; "
                "a conversation longer than its context does this); see the server's log"
            )
        self.last_usage = Usage(
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else pieces,
            seconds=time.perf_counter() - started,
            first_token_seconds=first_token_at - started if first_token_at else None,
            cached_prompt_tokens=_cached_tokens(usage),
        )

    def _create(self, request: dict[str, Any], json_schema: dict[str, Any] | None) -> Any:
        """The streaming request; with a schema, in the form this server accepts.

        The first schema request goes without retries: a server that rejects the json_schema form
        (llama-cpp-python answers 500 or 422) is not asked four more times; any other failure of that
        probe falls through to the normal request, retries included.
        """
        if json_schema is None:
            return self.client.chat.completions.create(**request)
        if not self.schema_format_known:
            try:
                probe = self.client.with_options(max_retries=0).chat.completions.create(
                    **request, response_format=_response_format(self.schema_format, json_schema)
                )
                self.schema_format_known = True
                return probe
            except openai.APIStatusError as exc:
                if "response_format" in _detail(exc):
                    self.schema_format, self.schema_format_known = "json_object", True
        return self.client.chat.completions.create(**request, response_format=_response_format(self.schema_format, json_schema))


def _cached_tokens(usage: Any) -> int | None:
    """Prompt tokens the server says it served from its prefix cache (vLLM, the OpenAI API); None when not reported."""
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)
    return int(cached) if cached is not None else None


def _response_format(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    if kind == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": schema.get("title", "answer"), "schema": schema, "strict": True}}


def _without_placeholder_key(request: httpx.Request) -> None:
    """The SDK always sends a key; a server configured without one gets none (not even the placeholder)."""
    request.headers.pop("Authorization", None)


def _detail(exc: openai.APIStatusError) -> str:
    try:
        return exc.response.text[:300]
    except (httpx.ResponseNotRead, AttributeError):
        return exc.message[:300]

