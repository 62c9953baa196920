"""The OpenAI runtime against a real external server: llama.cpp's (llama-cpp-python[server]) on smollm2.

Each server is a separate process started here on 127.0.0.1 and a free port, as a deployment
would run it; the smoke suite must pass through it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from assistant.config import Settings
from assistant.models.base import Message, ModelError
from assistant.models.openai_backend import OpenAIChatModel
from assistant.models.server import free_port, running_server
from tests.servers import KEY, llama_cpp_server

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

QUESTION = [Message(role="user", content="What is the capital of France? Answer in one sentence.")]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with llama_cpp_server(tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


def client(url: str, key: str | None = KEY) -> OpenAIChatModel:
    return OpenAIChatModel(Settings(openai_base_url=url, openai_api_key=key), model="smollm2-135m")


@pytest.mark.slow
def test_streams_an_answer_and_follows_a_schema_through_llama_cpp_server(server):
    model = client(server)
    pieces = list(model.stream(QUESTION, max_new_tokens=24))
    assert len(pieces) > 1 and "Paris" in "".join(pieces)
    assert model.last_usage.completion_tokens > 0 and model.last_usage.first_token_seconds is not None
    schema = {
        "type": "object",
        "properties": {"tool": {"type": "string", "enum": ["describe_scan", "segment"]}, "confidence": {"type": "number"}},
        "required": ["tool", "confidence"],
    }
    answer = model.complete_json([Message(role="user", content="Which tool describes a scan? Reply in JSON.")], schema, max_new_tokens=40)
    assert answer["tool"] in {"describe_scan", "segment"} and isinstance(answer["confidence"], int | float)
    assert model.schema_format == "json_object"  # llama-cpp-python rejected json_schema; the client switched once


@pytest.mark.slow
def test_a_wrong_key_and_a_too_long_prompt_are_clear_model_errors(server):
    with pytest.raises(ModelError, match="refused the API key"):
        client(server, key="wrong").complete(QUESTION, max_new_tokens=4)
    with pytest.raises(ModelError, match="ended the answer unfinished"):  # the server drops the stream, no HTTP error
        client(server).complete([Message(role="user", content="scan " * 5000)], max_new_tokens=8)


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_and_differs_from_greedy(server):
    from assistant.models.base import Sampling

    model = client(server)
    prompt = [Message(role="user", content="Write one sentence about the sea.")]
    first = model.complete(prompt, max_new_tokens=24, sampling=Sampling(1.0, 7))
    assert model.complete(prompt, max_new_tokens=24, sampling=Sampling(1.0, 7)) == first
    others = {model.complete(prompt, max_new_tokens=24, sampling=Sampling(1.0, seed)) for seed in (8, 9, 10)}
    assert others - {first}  # a different seed samples a different answer


class _FlakyProxy(BaseHTTPRequestHandler):
    """Answers the first POSTs with 503 or 429 (as an overloaded server does), then forwards to the real one."""

    upstream = ""
    failures: list[int] = []
    seen: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.failures:
            status = self.failures.pop(0)
            self.seen.append(status)
            self.send_response(status)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.seen.append(200)
        headers = {"Authorization": self.headers["Authorization"], "Content-Type": "application/json"}
        with httpx.stream("POST", self.upstream + self.path.removeprefix("/v1"), content=body, headers=headers, timeout=120) as answer:
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("content-type", "text/event-stream"))
            self.end_headers()
            for chunk in answer.iter_raw():
                self.wfile.write(chunk)
                self.wfile.flush()

    def log_message(self, *_args) -> None:
        pass


@pytest.mark.slow
def test_the_client_retries_after_429_and_503(server):
    _FlakyProxy.upstream, _FlakyProxy.failures, _FlakyProxy.seen = server, [503, 429], []
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        answer = client(f"http://127.0.0.1:{proxy.server_address[1]}/v1").complete(QUESTION, max_new_tokens=16)
    finally:
        proxy.shutdown()
    assert _FlakyProxy.seen == [503, 429, 200] and "Paris" in answer


@pytest.mark.slow
def test_smoke_suite_passes_through_llama_cpp_server(server, tmp_path, monkeypatch):
    from assistant.cli import main as scanchat

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    suites = Path(__file__).resolve().parents[1] / "evals" / "suites" / "smoke"
    code = scanchat(["eval", "run", str(suites), "--backend", server, "--out", str(tmp_path / "run"), "--min-pass-rate", "1.0"])
    assert code == 0, (tmp_path / "run" / "report.md").read_text()


@pytest.mark.slow
def test_serve_model_launches_llama_cpp_server_that_requires_the_key(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    command = [sys.executable, "-m", "assistant.cli", "serve-model", "--model", "smollm2-135m", "--port", str(port)]
    env = {**os.environ, "SCANCHAT_OPENAI_API_KEY": KEY, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with running_server(command, url, KEY, tmp_path / "serve.log", env=env):
        assert httpx.get(f"{url}/models", timeout=5).status_code == 401
        assert "Paris" in client(url).complete(QUESTION, max_new_tokens=16)
    assert KEY not in (tmp_path / "serve.log").read_text()
