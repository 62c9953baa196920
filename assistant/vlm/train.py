"""Train ScanChat's VLM: alignment (projector only), then instruction tuning (projector + LoRA).

    python -m assistant.vlm.train --data ~/.cache/scanchat/vlm/data --out ~/.cache/scanchat/models/scanchat-vlm-0.5b
    scanchat vlm train ...        (the same)

Reads the in-silico JSONL (`assistant.vlm.cases`); encoder features are computed once and cached
next to it, so each step costs only the LLM. With `--tool-bank`, instruction tuning also trains the tool
decisions of the tool-calling bank's training split (`assistant.vlm.acting`), a share of every batch, so that
one model looks at the scan, chooses the tool, fills its arguments and writes the answer. The same script runs on a GPU through accelerate;
with `--qlora` on CUDA the LLM is loaded in 4-bit (bitsandbytes) and prepared for k-bit training.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from assistant.config import Settings, get_settings
from assistant.models.base import ModelError
from assistant.vlm.cases import Case, default_data_dir, load_case_volume, read_cases, training_wordings
from assistant.vlm.encoder import ENCODERS, cached_features, encoder_info, feature_cache_name
from assistant.vlm.model import ScanChatVLM, VLMConfig, load_llm, prompt_text

log = logging.getLogger(__name__)
DEFAULT_VLM_NAME = "scanchat-vlm-0.5b"


@dataclass(frozen=True)
class Example:
    case_id: str | None  # the case whose scan the prompt shows (None: a tool request made without a scan)
    topic: str
    prompt: str
    answer: str


def default_llm_folder(settings: Settings) -> str:
    """The transformers backend's dequantised Qwen2.5-Coder-0.5B (built once from the packaged GGUF)."""
    from assistant.models.registry import resolve_model
    from assistant.models.transformers_backend import _pretrained_source

    return _pretrained_source(resolve_model("qwen2.5-coder-0.5b", settings), settings, None)


def default_output(settings: Settings) -> Path:
    return settings.models_dir / DEFAULT_VLM_NAME


def case_features(data_dir: Path, cases: list[Case], encoder: str) -> dict[str, torch.Tensor]:
    items = [(case.case_id, lambda case=case: load_case_volume(data_dir, case)) for case in cases]
    return cached_features(data_dir / feature_cache_name(encoder), items, encoder)


def examples_for(cases: list[Case], visual_tokens: int) -> list[Example]:
    """Every question in each of its training wordings (benchmarks ask in other words)."""
    return [Example(case.case_id, pair.topic, prompt_text(wording, visual_tokens), pair.answer)
            for case in cases for pair in case.qa for wording in training_wordings(pair.topic)]


def decision_examples_for(cases: list[Case], visual_tokens: int, rng: random.Random) -> list[Example]:
    """The tool bank's decisions, each request made with a scan shown a training case's scan (the choice does not
    depend on which: the model learns to decide with a scan in view, as in a chat)."""
    from assistant.choosers import example_bank
    from assistant.vlm.acting import decisions_for, tool_schemas

    examples = []
    for decision in decisions_for(example_bank(), tool_schemas()):
        case_id = rng.choice(cases).case_id if decision.with_scan else None
        examples.append(Example(case_id, decision.topic, prompt_text(decision.prompt, visual_tokens if case_id else 0), decision.answer))
    return examples


def topic_balanced_batch(examples: list[Example], batch_size: int, rng: random.Random) -> list[Example]:
    """A topic drawn uniformly, then an example of it: side and lobe questions exist only for lesioned cases,
    so uniform sampling over examples would show them half as often as modality or coverage."""
    by_topic: dict[str, list[Example]] = {}
    for example in examples:
        by_topic.setdefault(example.topic, []).append(example)
    topics = sorted(by_topic)
    return [rng.choice(by_topic[rng.choice(topics)]) for _ in range(batch_size)]


def collate(examples: list[Example], tokenizer, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Left-padded ids, so that every row's answer ends the row; the loss sees only the answer and its end-of-turn token."""
    rows, labels = [], []
    for example in examples:
        prompt = tokenizer(example.prompt).input_ids
        answer = tokenizer(example.answer + "<|im_end|>").input_ids
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id or tokenizer.eos_token_id
    shown = [features[example.case_id].float() for example in examples if example.case_id is not None]
    return {
        "input_ids": torch.tensor([[pad] * (width - len(row)) + row for row in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows]),
        "labels": torch.tensor([[-100] * (width - len(label)) + label for label in labels]),
        "grids": torch.stack(shown) if shown else None,
    }


def _run_stage(model: ScanChatVLM, accelerator, sample: Callable[[], list[Example]], features: dict[str, torch.Tensor], steps: int,
               learning_rate: float, name: str) -> list[float]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    optimizer = accelerator.prepare(optimizer)
    losses = []
    model.train()
    with tqdm(range(steps), desc=name, unit="step") as bar:
        for _ in bar:
            batch = collate(sample(), model.tokenizer, features)
            batch = {key: None if value is None else value.to(accelerator.device) for key, value in batch.items()}
            with accelerator.autocast():
                loss = model.answer_loss(**batch)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss))
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    return losses


def train(data_dir: Path, out: Path, *, encoder: str = "merlin", align_steps: int = 60, tune_steps: int = 120,
          batch_size: int = 8, learning_rate: float = 1e-3, lora_learning_rate: float = 2e-4, qlora: bool = False, bf16: bool = True,
          seed: int = 0, llm_folder: str | None = None, exclude_bases: tuple[str, ...] = (), presence_token: bool = True,
          side_channels: bool = True, tool_bank: bool = False, decision_share: float = 0.5,
          settings: Settings | None = None) -> dict:
    """Train and save the VLM into `out`; returns a summary (losses, seconds) also written as train_log.json.

    `llm_folder` is any transformers causal-LM folder (default: the packaged Qwen2.5-Coder-0.5B).
    `bf16` runs the steps under bfloat16 autocast (weights stay float32): about 1.6x faster on this
    CPU (AVX512-BF16), and the usual choice on a GPU. `exclude_bases` leaves training base volumes out,
    so that designs can be compared on a base no model saw without touching the held-out one. `tool_bank` adds the
    tool decisions to instruction tuning, `decision_share` of each batch.
    """
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    settings = settings or get_settings()
    if qlora and not torch.cuda.is_available():
        raise ModelError("--qlora needs a CUDA GPU with bitsandbytes; this machine has none (drop --qlora to train in float32)")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.perf_counter()
    cases = [case for case in read_cases(data_dir / "cases.jsonl") if case.split == "train" and case.base not in exclude_bases]
    if not cases:
        raise ValueError(f"{data_dir / 'cases.jsonl'} has no training cases outside {', '.join(exclude_bases) or 'the held-out bases'}")
    features = case_features(data_dir, cases, encoder)
    sample_grid = next(iter(features.values()))
    config = VLMConfig(encoder=encoder, encoder_version=encoder_info(encoder).version, feature_dim=int(sample_grid.shape[0]),
                       grid=tuple(sample_grid.shape[1:]),
                       llm_folder=llm_folder or default_llm_folder(settings),
                       presence_channels=encoder_info(encoder).finding_channels if presence_token else (),
                       hemisphere_channels=encoder_info(encoder).side_channels if side_channels else (), acts=tool_bank)
    llm, tokenizer = load_llm(config.llm_folder, "4bit" if qlora else "none")
    if qlora:
        llm = prepare_model_for_kbit_training(llm)
    llm.requires_grad_(False)
    model = ScanChatVLM(config, llm, tokenizer)
    # the LLM is already placed (device_map); not re-wrapped
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if bf16 else "no")
    examples = examples_for(cases, config.visual_tokens)
    decisions = decision_examples_for(cases, config.visual_tokens, rng) if tool_bank else []
    decided = round(batch_size * decision_share) if decisions else 0

    def visual_batch() -> list[Example]:
        return topic_balanced_batch(examples, batch_size, rng)

    def mixed_batch() -> list[Example]:
        return topic_balanced_batch(examples, batch_size - decided, rng) + topic_balanced_batch(decisions, decided, rng)

    align = _run_stage(model, accelerator, visual_batch, features, align_steps, learning_rate, "alignment (projector)")
    model.llm = get_peft_model(model.llm, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.05,
                                                     target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    tune = _run_stage(model, accelerator, mixed_batch, features, tune_steps, lora_learning_rate, "instruction tuning (projector + LoRA)")
    model.save(out)
    summary = {"encoder": encoder_info(encoder).name, "encoder_version": encoder_info(encoder).version, "train_bases": sorted({case.base for case in cases}),
               "train_cases": len(cases), "examples": len(examples), "tool_decisions": len(decisions), "decisions_per_batch": decided,
               "presence_channels": list(config.presence_channels),
               "hemisphere_channels": list(config.hemisphere_channels),
               "align_loss_first_last": [align[0], sum(align[-10:]) / len(align[-10:])] if align else [],
               "tune_loss_first_last": [tune[0], sum(tune[-10:]) / len(tune[-10:])] if tune else [],
               "seconds": round(time.perf_counter() - started, 1), "device": str(accelerator.device), "qlora": qlora, "bf16": bf16,
               "steps": {"align": align_steps, "tune": tune_steps, "batch_size": batch_size}}
    (out / "train_log.json").write_text(json.dumps(summary, indent=2))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="dataset folder with cases.jsonl (default: cache_dir/vlm/data)")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: models_dir/{DEFAULT_VLM_NAME})")
    parser.add_argument("--encoder", default="merlin", choices=list(ENCODERS))
    parser.add_argument("--align-steps", type=int, default=60)
    parser.add_argument("--tune-steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--qlora", action="store_true", help="4-bit LLM + LoRA (CUDA and bitsandbytes only)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 instead of bfloat16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llm", default=None, help="transformers LLM folder (default: the packaged Qwen2.5-Coder-0.5B)")
    parser.add_argument("--exclude-base", action="append", default=[], metavar="BASE",
                        help="leave this training base volume out (a development split; repeatable)")
    parser.add_argument("--no-presence-token", dest="presence_token", action="store_false",
                        help="no presence token (the encoder's finding channels' largest values), for comparison")
    parser.add_argument("--tool-bank", action="store_true",
                        help="also train the tool decisions of the tool-calling bank, so the VLM chooses tools and fills arguments itself")
    parser.add_argument("--decision-share", type=float, default=0.5, help="share of each tuning batch given to tool decisions")
    parser.add_argument("--all-channels-hemisphere", dest="side_channels", action="store_false",
                        help="the hemisphere token compares every channel, not only the encoder's side channels (for comparison)")


def run_from_args(args: argparse.Namespace) -> int:
    settings = get_settings()
    summary = train(args.data or default_data_dir(settings), args.out or default_output(settings), encoder=args.encoder,
                    align_steps=args.align_steps, tune_steps=args.tune_steps, batch_size=args.batch_size, qlora=args.qlora, bf16=args.bf16,
                    seed=args.seed, llm_folder=args.llm, exclude_bases=tuple(args.exclude_base), presence_token=args.presence_token,
                    side_channels=args.side_channels, tool_bank=args.tool_bank, decision_share=args.decision_share, settings=settings)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assistant.vlm.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    torch.set_num_threads(get_settings().llm_threads)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
