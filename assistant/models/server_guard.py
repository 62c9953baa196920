"""What `scanchat serve-model` lets through, as an ASGI layer around whichever server app it runs.

Without it a wrong bearer token got 200, a 2 MB body was tokenised before being refused and
`max_tokens` had no cap. The layer answers before the model is touched: 401 without the
configured API key (compared in constant time), 413 for a body over the limit (counted as it
arrives, whatever Content-Length claims), 400 for `max_tokens` above the cap; a request that
names no `max_tokens` gets the cap. Being plain ASGI, it wraps the built-in app or any other
(e.g. llama_cpp.server's) unchanged.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


class RequestGuard:
    def __init__(self, app: Callable, *, api_key: str, max_body_bytes: int, max_tokens: int):
        if not api_key:
            raise ValueError("the model server needs an API key: set SCANCHAT_SERVE_API_KEY")
        self.app, self.max_body_bytes, self.max_tokens = app, max_body_bytes, max_tokens
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not hmac.compare_digest(headers.get(b"authorization", b""), self._expected):
            await _refuse(send, 401, "missing or wrong API key (Authorization: Bearer ...)")
            return
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body_bytes:
            await _refuse(send, 413, f"the request body is over {self.max_body_bytes} bytes")
            return
        body = b""
        while True:  # Content-Length may lie, or be absent with a chunked body: count what arrives
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _refuse(send, 413, f"the request body is over {self.max_body_bytes} bytes")
                return
            if not message.get("more_body"):
                break
        if scope["method"] == "POST" and body:
            try:
                request = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                request = None  # the app answers malformed JSON itself
            if isinstance(request, dict):
                asked = [request.get(name) for name in _TOKEN_FIELDS if request.get(name) is not None]
                if any(not isinstance(n, int) or n > self.max_tokens for n in asked):
                    await _refuse(send, 400, f"max_tokens must be a whole number of at most {self.max_tokens}")
                    return
                if not asked:
                    request["max_tokens"] = self.max_tokens
                    body = json.dumps(request).encode()
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-length"]
                 + [(b"content-length", str(len(body)).encode())]}
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the client's own messages (so a disconnect still reaches the app)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _refuse(send: Send, status: int, message: str) -> None:
    payload = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
