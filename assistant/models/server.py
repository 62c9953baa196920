"""`scanchat serve-model`: any local ChatModel behind a minimal OpenAI-compatible HTTP API.

It lets one machine (say, with a GPU) serve the model to several ScanChat front ends, and it
lets the OpenAI backend be tested against a real server with a real model. Only what ScanChat
uses is implemented: ``GET /v1/models`` and ``POST /v1/chat/completions`` (streaming or not,
with ``response_format`` json_schema / json_object).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

from assistant.models.base import ChatModel, Message, ModelError


class JsonSchemaFormat(BaseModel):
    name: str = "answer"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool = True


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # llama.cpp's json_object variant

    def schema_to_enforce(self) -> dict[str, Any] | None:
        if self.type == "json_schema" and self.json_schema:
            return self.json_schema.schema_
        if self.type == "json_object":
            return self.schema_ or {"type": "object"}
        return None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = None  # accepted for compatibility; decoding is always greedy


def create_app(model: ChatModel) -> Any:
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import StreamingResponse

    app = FastAPI(title=f"ScanChat model server ({model.name})")

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model.name, "object": "model", "owned_by": "scanchat"}]}

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(request: ChatCompletionRequest) -> Any:
        schema = request.response_format.schema_to_enforce() if request.response_format else None
        pieces = model.stream(request.messages, json_schema=schema, max_new_tokens=request.max_tokens)
        try:  # start generating here so that bad requests get an HTTP error, not a broken stream
            first = next(pieces, "")
        except ModelError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            events = _completion_events(model, completion_id, itertools.chain([first], pieces), include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        text = first + "".join(pieces)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": _usage(model),
        }

    return app


def _usage(model: ChatModel) -> dict[str, int]:
    usage = model.last_usage
    total = usage.prompt_tokens + usage.completion_tokens
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": total}


def _completion_events(model: ChatModel, completion_id: str, pieces: Iterator[str], include_usage: bool) -> Iterator[str]:
    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model.name}
        return f"data: {json.dumps({**chunk, 'choices': choices, **extra})}\n\n"

    yield event([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])
    try:
        for piece in pieces:
            if piece:
                yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
    except ModelError as exc:  # headers are sent already: report the failure in-band
        yield f"data: {json.dumps({'error': {'message': str(exc)}})}\n\n"
        return
    yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if include_usage:
        yield event([], usage=_usage(model))
    yield "data: [DONE]\n\n"


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve-model", help="serve a local chat model over an OpenAI-compatible HTTP API")
    serve.add_argument("--model", help="registry name, GGUF file or HF folder (default: SCANCHAT_LLM)")
    serve.add_argument("--runtime", choices=["auto", "transformers", "llamacpp"], default=None)
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on; 0.0.0.0 exposes it to the network")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=_cli_serve)


def _cli_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from assistant.config import get_settings
    from assistant.models.registry import load_chat_model

    from assistant.models.server_guard import RequestGuard

    settings = get_settings().model_copy(update={"openai_base_url": None})  # never serve a proxy to itself
    if not settings.serve_api_key:
        print("serve-model needs an API key for its clients: set SCANCHAT_SERVE_API_KEY (and SCANCHAT_OPENAI_API_KEY "
              "to the same value on the clients).", file=sys.stderr)
        return 2
    model = load_chat_model(settings, name=args.model, runtime=args.runtime)
    app = RequestGuard(create_app(model), api_key=settings.serve_api_key,
                       max_body_bytes=settings.serve_max_body_bytes, max_tokens=settings.serve_max_tokens)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
