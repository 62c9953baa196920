"""LoRA fine-tuning of the tool chooser, with the real smollm2-135m weights and the real training split.

The prompts trained on are the agent's own, the shared-prefix loss is the full-sequence loss, a few
steps lower it, and the saved adapter comes back through the model registry.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from assistant.agent import Agent
from assistant.choosers import example_bank
from assistant.config import get_settings
from assistant.models.base import ChatModel, Message, ModelError
from assistant.models.registry import load_chat_model, resolve_model
from assistant.models.transformers_backend import TransformersChatModel
from assistant.scans.samples import load_sample
from assistant.session import ScanSession
from assistant.training.toolcall_lora import TrainingOptions, answer_loss, train_toolcall_adapter, training_sequences

SMALL_MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def chat() -> TransformersChatModel:
    """A private instance: training wraps its model, so never the registry's shared one."""
    settings = get_settings()
    return TransformersChatModel(resolve_model(SMALL_MODEL, settings), settings)


@pytest.fixture(scope="module")
def ct_examples():
    return [e for e in example_bank() if e.scan == "ct-head"]


class _PromptCaught(Exception):
    pass


class _PromptCatcher(ChatModel):
    """Keeps the first conversation the agent sends, then stops the turn: only the prompt is under test."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.sent: list[Message] = []

    def stream(self, messages, **kwargs) -> Iterator[str]:
        self.sent = list(messages)
        raise _PromptCaught
        yield ""  # a generator, like every backend


def test_choice_sequence_is_the_prompt_the_agent_sends(chat, ct_examples):
    settings = get_settings().model_copy(update={"tool_chooser": "llm-zero-shot"})
    catcher = _PromptCatcher(chat.name)
    agent = Agent(catcher, ScanSession(), settings)
    agent.session.volume = load_sample("ct-head")
    # a request the model must choose for: a plainly stated call is read by code and sends no prompt
    example = next(e for e in ct_examples if e.tool == "segment" and agent.read_call(e.text) is None)
    with pytest.raises(_PromptCaught):
        agent.decide([Message(role="user", content=example.text)])
    sequences = list(training_sequences(chat, [example], "llm-zero-shot", settings))
    choice = next(s for s in sequences if s.step == "choice")
    assert list(choice.prompt_ids) == chat.encode(catcher.sent)["input_ids"][0].tolist()
    assert chat.tokenizer.decode(choice.answer_ids).startswith('{"tool": "segment"}')
    assert any(s.step == "arguments" for s in sequences)  # segment has arguments to fill


def test_shared_prefix_loss_equals_full_sequence_loss(chat, ct_examples):
    sequences = [s for s in training_sequences(chat, ct_examples[:3], "llm-zero-shot", get_settings()) if s.step == "choice"]
    assert len(sequences) == 3
    with torch.no_grad():
        shared = answer_loss(chat.model, sequences).item()
        total, count = 0.0, 0
        for s in sequences:
            logits = chat.model(torch.tensor([s.prompt_ids + s.answer_ids])).logits[0]
            first = len(s.prompt_ids) - 1
            predicted = logits[first : first + len(s.answer_ids)]
            total += torch.nn.functional.cross_entropy(predicted, torch.tensor(s.answer_ids), reduction="sum").item()
            count += len(s.answer_ids)
    assert shared == pytest.approx(total / count, rel=1e-4)


@pytest.mark.slow
def test_training_lowers_the_loss_and_the_adapter_loads_through_the_registry(chat, tmp_path):
    options = TrainingOptions(
        base_model=SMALL_MODEL, adapter_name=str(tmp_path / "adapter"), limit=4, epochs=5, batch_size=8,
        learning_rate=3e-3, top_layers=None,
    )
    report = train_toolcall_adapter(options, get_settings())
    assert report.steps >= 8 and not report.stopped_early
    assert report.last_loss < 0.7 * report.first_loss
    assert (report.adapter / "adapter_config.json").is_file() and (report.adapter / "training.json").is_file()

    tuned = load_chat_model(get_settings(), name=report.registry_name, runtime="transformers")
    assert "+lora:" in tuned.name
    trained_on = list(training_sequences(chat, list(example_bank())[:4], "llm-zero-shot", get_settings()))
    batch = [s for s in trained_on if s.system == trained_on[0].system]
    with torch.no_grad():
        assert answer_loss(tuned.model, batch).item() < answer_loss(chat.model, batch).item()

    with pytest.raises(ModelError, match="transformers runtime"):
        load_chat_model(get_settings(), name=report.registry_name, runtime="llamacpp")


def test_missing_adapter_says_how_to_train_one(tmp_path):
    with pytest.raises(ModelError, match="toolcall_lora"):
        load_chat_model(get_settings(), name=f"{SMALL_MODEL}+lora:{tmp_path / 'nothing-here'}", runtime="transformers")


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusal is for machines without CUDA")
def test_qlora_is_refused_without_cuda_before_loading_anything():
    with pytest.raises(ModelError, match="CUDA"):
        train_toolcall_adapter(TrainingOptions(base_model=SMALL_MODEL, qlora=True), get_settings())
