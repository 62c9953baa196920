"""`scanchat serve-model`: a registry or local GGUF model behind llama.cpp's OpenAI-compatible server.

A thin launcher of ``python -m llama_cpp.server`` (llama-cpp-python[server]): ScanChat resolves
and verifies the model, then hands over to the maintained server, which the OpenAI runtime also
talks to. The server always requires an API key: SCANCHAT_OPENAI_API_KEY or OPENAI_API_KEY when
set, else a fresh one printed once. The key reaches the server through its environment
(llama_cpp.server's ``--api_key`` setting), never the command line other users can list.
For Hugging Face folders and bigger models on a GPU, serve with vLLM instead (evals/README.md).
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from assistant.config import Settings
from assistant.models.base import ModelError

API_KEY_ENV = "API_KEY"  # llama_cpp.server's ServerSettings.api_key, read from the environment
STARTUP_S = 180.0


def server_command(model: Path, alias: str, settings: Settings, host: str, port: int) -> list[str]:
    """The llama_cpp.server command line for one GGUF file (without the key)."""
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", alias,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(settings.llm_context),
        "--n_threads", str(settings.llm_threads),
        # Its default cuts the answer being streamed short whenever another request arrives: with several
        # clients (Ray workers, UI sessions) requests must queue instead.
        "--interrupt_requests", "false",
    ]  # fmt: skip


def server_environment(api_key: str) -> dict[str, str]:
    return {**os.environ, API_KEY_ENV: api_key}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(process: subprocess.Popen, url: str, api_key: str | None, log: Path, timeout: float = STARTUP_S) -> None:
    """Poll /models until the server answers; a server that exits or hangs says why (its log's tail)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ModelError(f"the model server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/models", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ModelError(f"the model server did not answer within {timeout:.0f} s:\n{log.read_text()[-2000:]}")


@contextmanager
def running_server(command: list[str], url: str, api_key: str | None, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """A server process for the duration of the block (output to `log`); yields `url` once it answers."""
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_serving(process, url, api_key, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def llama_server(model: Path, alias: str, settings: Settings, log: Path, api_key: str | None) -> Iterator[str]:
    """llama.cpp's server on 127.0.0.1 and a free port for the block (tests, benchmarks); yields its /v1 URL."""
    port = free_port()
    env = server_environment(api_key) if api_key else {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    with running_server(server_command(model, alias, settings, "127.0.0.1", port), f"http://127.0.0.1:{port}/v1", api_key, log, env) as url:
        yield url


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve-model", help="serve a GGUF chat model with llama.cpp's OpenAI-compatible server (API key required)")
    serve.add_argument("--model", help="registry name or GGUF file (default: SCANCHAT_LLM)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on; 0.0.0.0 exposes it to the network")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=_cli_serve)


def _cli_serve(args: argparse.Namespace) -> int:
    from assistant.config import get_settings
    from assistant.models.registry import llama_cpp_available, resolve_model

    settings = get_settings()
    resolved = resolve_model(args.model or settings.llm, settings)
    if resolved.format != "gguf":
        raise ModelError(f"serve-model serves GGUF files through llama.cpp; {resolved.location} is a {resolved.format}: serve it with vLLM")
    if not llama_cpp_available():
        raise ModelError("serve-model needs llama.cpp's server: pip install 'llama-cpp-python[server]'")
    api_key = settings.openai_api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        api_key = secrets.token_urlsafe(24)
        print(f"API key (give it to clients as OPENAI_API_KEY): {api_key}", file=sys.stderr)
    command = server_command(resolved.path, resolved.name, settings, args.host, args.port)
    print(f"serving {resolved.name} at http://{args.host}:{args.port}/v1", file=sys.stderr)
    sys.stderr.flush()
    # Become the server: signals (Ctrl-C, a supervisor's SIGTERM) reach it directly, and no orphan outlives us.
    os.execve(sys.executable, command, server_environment(api_key))
