"""Remote model endpoints: explicit opt-in, https off this machine, the key only to the configured host,
settings files only from an explicit path. Servers here are real and bind 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from assistant.config import Settings, get_settings
from assistant.models.base import Message, ModelError
from assistant.models.openai_backend import OpenAIChatModel


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every POST with `status` (a redirect to `location` when set) and keeps the headers it saw."""

    seen: list[dict[str, str]]
    status = 200
    location = ""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append({name.lower(): value for name, value in self.headers.items()})
        self.send_response(self.status)
        if self.location:
            self.send_header("Location", self.location)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if self.status == 200:
            self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}\n\n'
                             b'data: [DONE]\n\n')

    def log_message(self, *args) -> None:
        pass


def _server(**attributes) -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen, **attributes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def other_host():
    yield from _server()


@pytest.fixture
def redirecting(other_host):
    url, _ = other_host
    yield from _server(status=307, location=f"{url}/v1/chat/completions")


def _answer(settings: Settings) -> str:
    return "".join(OpenAIChatModel(settings, model="any").stream([Message(role="user", content="hi")]))


@pytest.mark.parametrize("url, allow, problem", [
    ("http://models.example.org:8000/v1", False, "SCANCHAT_OPENAI_ALLOW_REMOTE"),
    ("https://models.example.org/v1", False, "SCANCHAT_OPENAI_ALLOW_REMOTE"),
    ("http://models.example.org:8000/v1", True, "use https"),
    ("http://10.1.2.3:8000", True, "use https"),
    ("https://user:secret@models.example.org/v1", True, "without credentials"),
    ("file:///etc/passwd", True, "http(s) URL"),
])
def test_endpoints_off_this_machine_need_opt_in_and_https(url, allow, problem):
    with pytest.raises(ModelError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        OpenAIChatModel(Settings(openai_base_url=url, openai_allow_remote=allow, openai_api_key="k"), model="any")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.8.9.10"])
def test_loopback_servers_need_neither(host):
    client = OpenAIChatModel(Settings(openai_base_url=f"http://{host}:8000"), model="any")
    assert str(client.client.base_url).startswith(f"http://{host}:8000/v1")
    remote = OpenAIChatModel(Settings(openai_base_url="https://models.example.org", openai_allow_remote=True), "any")
    assert str(remote.client.base_url) == "https://models.example.org/v1/"


def test_the_key_goes_to_the_configured_host_and_no_further(redirecting, other_host):
    url, seen_here = redirecting
    _, seen_elsewhere = other_host
    with pytest.raises(ModelError, match="307"):
        _answer(Settings(openai_base_url=url, openai_api_key="sk-local-only"))
    assert seen_here[0]["authorization"] == "Bearer sk-local-only"
    assert seen_elsewhere == []  # the redirect was not followed, so the key never reached the other server


def test_a_general_openai_key_is_not_sent_to_the_configured_server(other_host, monkeypatch):
    url, seen = other_host
    monkeypatch.setenv("OPENAI_API_KEY", "sk-meant-for-another-service")
    assert _answer(Settings(openai_base_url=url)) == "ok"
    assert "authorization" not in seen[0]


def test_settings_files_are_read_only_from_an_explicit_path(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("SCANCHAT_OPENAI_BASE_URL=https://attacker.example/v1\nSCANCHAT_OPENAI_ALLOW_REMOTE=true\n")
    monkeypatch.chdir(tmp_path)
    for name in ("SCANCHAT_OPENAI_BASE_URL", "SCANCHAT_OPENAI_ALLOW_REMOTE", "SCANCHAT_ENV_FILE"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        assert get_settings().openai_base_url is None and Settings().openai_base_url is None
        monkeypatch.setenv("SCANCHAT_ENV_FILE", str(tmp_path / ".env"))
        get_settings.cache_clear()
        assert get_settings().openai_base_url == "https://attacker.example/v1"  # named explicitly: read
        monkeypatch.setenv("SCANCHAT_ENV_FILE", str(tmp_path / "missing.env"))
        get_settings.cache_clear()
        with pytest.raises(ValueError, match="not a file"):
            get_settings()
    finally:
        get_settings.cache_clear()
