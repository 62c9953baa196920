"""LoRA fine-tune of the agent's chat model on the tool-calling training split.

    python -m assistant.training.toolcall_lora [--model qwen2.5-coder-0.5b] [--epochs 1] [--rank 8] [--qlora]

Every example of the training split (`prompts/agent/tool_examples.jsonl`; never the held-out
split) becomes the exact conversation the agent sends, rendered by the agent and the chat model
themselves (`Agent.choice_context`, `LLMChooser.messages`, `Agent.argument_messages`,
`TransformersChatModel.encode`): one "which tool" sequence whose answer is `{"tool": ...}` and,
for tools with arguments, one "fill the arguments" sequence whose answer is the example's
arguments. The loss covers the answer tokens only.

On a 2-core CPU the shared system prompt (rules, scan line, tool menu or model card) is most of
every sequence. A batch therefore holds sequences with the same system prompt: their common
prefix runs once, with gradients, into a KV cache that the batch's suffixes attend to, and the
output layer (150k words, a quarter of the 0.5B model) runs only where an answer token is
predicted. The loss is the same as over full sequences (a test checks it); for the 0.5B model an
epoch is 100k token passes instead of 267k. Adapting only the top layers (`top_layers`) stops
backpropagation there.

The adapter loads through the model registry like any model: ``qwen2.5-coder-0.5b+lora:toolcall``
(a name under ``models_dir/adapters``) or ``...+lora:/path/to/adapter``. With ``--qlora`` on a
CUDA machine with bitsandbytes, the base loads in 4-bit NF4 and the same loop runs QLoRA.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from transformers import DynamicCache, get_linear_schedule_with_warmup

from assistant.choosers import LLMChooser, ToolCallExample, example_bank
from assistant.config import Settings, get_settings
from assistant.models.base import Message, ModelError
from assistant.models.registry import LORA_SEPARATOR, resolve_model
from assistant.models.transformers_backend import TransformersChatModel
from assistant.scans.samples import load_sample
from assistant.session import ScanSession
from assistant.volume import Volume

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
TRAINABLE_CHOOSERS = ("llm-zero-shot", "llm-fixed")  # the dynamic prompt would retrieve the example itself


class TrainingOptions(BaseModel):
    base_model: str = Field("qwen2.5-coder-0.5b", description="Registry name or local model the adapter is for.")
    adapter_name: str = Field("toolcall", description="Folder under models_dir/adapters (or a path).")
    chooser: Literal["llm-zero-shot", "llm-fixed"] = Field("llm-zero-shot", description="Whose choice prompt to train.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training split; fractions stop early.")
    rank: int = Field(8, ge=1, le=256)
    top_layers: int | None = Field(
        8, ge=1, description="Adapt only the last N decoder layers: backpropagation then stops there (None: all)."
    )
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    learning_rate: float = Field(4e-4, gt=0)
    batch_size: int = Field(8, ge=1, description="Sequences sharing one system prompt per step.")
    limit: int | None = Field(None, ge=1, description="Train on the first N examples only (tests, quick runs).")
    max_minutes: float | None = Field(None, gt=0, description="Stop and save once this much time has passed.")
    qlora: bool = Field(False, description="4-bit NF4 base with bitsandbytes; needs a CUDA GPU.")
    seed: int = 7


class TrainingReport(BaseModel):
    """What a run did; saved beside the adapter as training.json."""

    base_model: str
    adapter: Path
    registry_name: str
    examples: int
    sequences: int
    steps: int
    epochs: float
    seconds: float
    stopped_early: bool
    losses: list[float]
    options: TrainingOptions

    @property
    def first_loss(self) -> float:
        return _mean(self.losses[:5])

    @property
    def last_loss(self) -> float:
        return _mean(self.losses[-5:])


@dataclass(frozen=True)
class TrainingSequence:
    """One prompt exactly as the agent sends it, and the answer tokens the model must produce."""

    example_id: str
    step: Literal["choice", "arguments"]
    system: str  # sequences with the same system prompt share a token prefix
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]


# --- sequences -----------------------------------------------------------------------------


def training_sequences(
    chat: TransformersChatModel, examples: Sequence[ToolCallExample], chooser: str, settings: Settings
) -> Iterator[TrainingSequence]:
    """The choice (and argument-filling) sequences of each example, rendered by the agent itself."""
    from assistant.agent import Agent  # the agent imports the tools; keep `import toolcall_lora` light

    if chooser not in TRAINABLE_CHOOSERS:
        raise ValueError(f"only these choosers' prompts can be trained: {', '.join(TRAINABLE_CHOOSERS)}")
    agent = Agent(chat, ScanSession(), settings.model_copy(update={"tool_chooser": chooser}))
    assert isinstance(agent.chooser, LLMChooser)
    volumes: dict[str, Volume] = {}
    for example in examples:
        if example.scan and example.scan not in volumes:
            volumes[example.scan] = load_sample(example.scan)
        agent.session.volume = volumes.get(example.scan)
        # an earlier turn the follow-up refers to, replayed as the tool-choice benchmark does
        agent.history = (
            [Message(role="user", content=example.previous), Message(role="assistant", content="Done.")]
            if example.previous else []
        )
        turn = [Message(role="user", content=example.text)]
        choice = agent.chooser.messages(agent.choice_context(turn), example.text, list(agent.tools))
        yield _sequence(chat, example.id, "choice", choice, json.dumps({"tool": example.tool}))
        tool = agent.tools.get(example.tool)
        if tool is not None and tool.args_schema.model_json_schema().get("properties"):
            filling = agent.argument_messages(turn, tool, exclude=example.id)
            yield _sequence(chat, example.id, "arguments", filling, json.dumps(example.arguments))


def _sequence(
    chat: TransformersChatModel, example_id: str, step: Literal["choice", "arguments"], messages: list[Message], answer: str
) -> TrainingSequence:
    prompt = chat.encode(messages)["input_ids"][0].tolist()
    full = chat.encode(messages, answer)["input_ids"][0].tolist()
    if full[: len(prompt)] != prompt:
        raise ModelError(f"{chat.name}'s chat template renders the answer turn differently from the prompt")
    answer_ids = full[len(prompt) :]
    while answer_ids and not chat.tokenizer.decode(answer_ids[-1:]).strip():  # the template's newline after
        answer_ids.pop()  # the end-of-turn token is never generated
    return TrainingSequence(example_id, step, messages[0].content, tuple(prompt), tuple(answer_ids))


def prefix_batches(sequences: Sequence[TrainingSequence], batch_size: int, rng: random.Random) -> list[list[TrainingSequence]]:
    """Batches of sequences sharing a system prompt, in random order."""
    groups: dict[str, list[TrainingSequence]] = defaultdict(list)
    for sequence in sequences:
        groups[sequence.system].append(sequence)
    batches = []
    for members in groups.values():
        rng.shuffle(members)
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


def _shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Common leading tokens, leaving each prompt at least its last token (it predicts the answer's first)."""
    limit = min(len(p) for p in prompts) - 1
    length = 0
    while length < limit and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    return length


def answer_loss(causal_lm: torch.nn.Module, batch: Sequence[TrainingSequence]) -> torch.Tensor:
    """Mean cross-entropy over the batch's answer tokens, the shared prefix run once."""
    decoder, head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
    device = head.weight.device
    shared = _shared_prefix_length([s.prompt_ids for s in batch])
    cache = DynamicCache()
    if shared:
        decoder(input_ids=torch.tensor([batch[0].prompt_ids[:shared]], device=device), past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(len(batch))
    suffixes = [s.prompt_ids[shared:] + s.answer_ids for s in batch]
    # right padding: with causal attention no real token sees the padding, so no mask is needed
    ids = torch.zeros((len(batch), max(map(len, suffixes))), dtype=torch.long, device=device)
    rows, columns, targets = [], [], []
    for row, (sequence, suffix) in enumerate(zip(batch, suffixes)):
        ids[row, : len(suffix)] = torch.tensor(suffix)
        first = len(sequence.prompt_ids) - shared - 1  # the position whose output predicts the first answer token
        rows += [row] * len(sequence.answer_ids)
        columns += range(first, first + len(sequence.answer_ids))
        targets += sequence.answer_ids
    hidden = decoder(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state
    logits = head(hidden[rows, columns])
    return F.cross_entropy(logits.float(), torch.tensor(targets, device=device))


# --- training ------------------------------------------------------------------------------


def adapter_folder(options: TrainingOptions, settings: Settings) -> Path:
    path = Path(options.adapter_name).expanduser()
    return path if path.is_absolute() or len(path.parts) > 1 else settings.models_dir / "adapters" / options.adapter_name


def train_toolcall_adapter(
    options: TrainingOptions | None = None, settings: Settings | None = None, progress: ProgressCallback | None = None
) -> TrainingReport:
    """Fine-tune, save the adapter and its training.json, and return the report."""
    options = options or TrainingOptions()
    settings = settings or get_settings()
    if options.qlora:
        _check_qlora_possible()
        settings = settings.model_copy(update={"quantization": "4bit"})
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    chat = TransformersChatModel(resolve_model(options.base_model, settings), settings)
    examples = list(example_bank())[: options.limit]
    sequences = list(training_sequences(chat, examples, options.chooser, settings))
    model = _with_new_adapter(chat.model, options)
    causal_lm = model.get_base_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    rng = random.Random(options.seed)
    steps_per_epoch = len(prefix_batches(sequences, options.batch_size, random.Random(0)))
    total_steps = max(1, round(steps_per_epoch * options.epochs))
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, total_steps // 10), total_steps)
    deadline = started + options.max_minutes * 60 if options.max_minutes else None
    losses: list[float] = []
    model.train()
    while len(losses) < total_steps and not _past(deadline):
        for batch in prefix_batches(sequences, options.batch_size, rng):
            if len(losses) >= total_steps or _past(deadline):
                break
            loss = answer_loss(causal_lm, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 4))
            if progress:
                progress(len(losses) / total_steps, f"step {len(losses)}/{total_steps} loss {losses[-1]:.3f}")
    out = adapter_folder(options, settings)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    report = TrainingReport(
        base_model=options.base_model,
        adapter=out,
        registry_name=f"{options.base_model}{LORA_SEPARATOR}{out}",
        examples=len(examples),
        sequences=len(sequences),
        steps=len(losses),
        epochs=round(len(losses) / steps_per_epoch, 3),
        seconds=round(time.perf_counter() - started, 1),
        stopped_early=len(losses) < total_steps,
        losses=losses,
        options=options,
    )
    (out / "training.json").write_text(report.model_dump_json(indent=1))
    log.info("saved adapter %s after %d steps (%.0f s)", out, report.steps, report.seconds)
    return report


def _with_new_adapter(model: torch.nn.Module, options: TrainingOptions) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if options.qlora:
        # no gradient checkpointing: it turns the KV cache off, and the shared prefix needs it
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    layers = model.config.num_hidden_layers
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
        layers_to_transform=list(range(max(0, layers - options.top_layers), layers)) if options.top_layers else None,
    )
    return get_peft_model(model, config)


def _check_qlora_possible() -> None:
    """Refuse before any loading: QLoRA's 4-bit kernels exist for CUDA only."""
    if not torch.cuda.is_available():
        raise ModelError("--qlora needs a CUDA GPU (bitsandbytes 4-bit); this machine has none. Drop --qlora to train LoRA on the CPU.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelError("--qlora needs bitsandbytes: pip install 'scanchat[gpu]'") from exc


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() > deadline


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# --- CLI -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainingOptions()
    parser.add_argument("--model", default=defaults.base_model, help="base model (registry name or local folder)")
    parser.add_argument("--out", default=defaults.adapter_name, help="adapter name under models_dir/adapters, or a path")
    parser.add_argument("--chooser", choices=TRAINABLE_CHOOSERS, default=defaults.chooser)
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--rank", type=int, default=defaults.rank)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--limit", type=int, default=None, help="first N training examples only")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop and save after this long")
    parser.add_argument("--qlora", action="store_true", help="4-bit base (CUDA + bitsandbytes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = TrainingOptions(
        base_model=args.model, adapter_name=args.out, chooser=args.chooser, epochs=args.epochs, rank=args.rank,
        learning_rate=args.lr, batch_size=args.batch_size, limit=args.limit, max_minutes=args.max_minutes, qlora=args.qlora,
    )
    with tqdm(total=100, unit="%", desc="LoRA") as bar:

        def report_progress(fraction: float, message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(round(fraction * 100) - bar.n)

        try:
            report = train_toolcall_adapter(options, progress=report_progress)
        except ModelError as exc:
            parser.exit(2, f"error: {exc}\n")
    print(f"{report.sequences} sequences from {report.examples} examples, {report.steps} steps ({report.epochs} epochs) "
          f"in {report.seconds / 60:.1f} min; loss {report.first_loss:.3f} -> {report.last_loss:.3f}")
    print(f"adapter: {report.adapter}\nuse it with: --model {report.registry_name} --runtime transformers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
