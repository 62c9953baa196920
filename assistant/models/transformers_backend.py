"""Hugging Face transformers runtime: the one that needs no compiler and runs on any machine.

A GGUF is dequantised by transformers (`gguf_file=`), which takes about a minute for the 0.5B
model, so the dequantised weights are saved once under ``models_dir/<name>-hf/`` and every later
start loads safetensors in seconds. JSON schemas are enforced token by token with
lm-format-enforcer. On a CUDA machine, Settings.device_map and bitsandbytes 4/8-bit apply.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from assistant.config import Settings
from assistant.models.base import ChatModel, Message, ModelError, Sampling, Usage, template_has_tool_role, template_messages
from assistant.models.registry import ProgressCallback, ResolvedModel
from assistant.volume import Volume

log = logging.getLogger(__name__)

# Measured on the 2-core AVX2 CPU with smollm2-135m, both in the same run: float32 decoded about 4x
# faster than bfloat16 (this CPU has no native bf16 instructions), so the CPU path stays float32.
CPU_DTYPE = torch.float32


class TransformersChatModel(ChatModel):
    runtime = "transformers"
    supports_sampling = True

    def __init__(
        self,
        resolved: ResolvedModel,
        settings: Settings,
        progress: ProgressCallback | None = None,
        adapter: Path | None = None,
    ) -> None:
        super().__init__()
        self.name = f"{resolved.name}+lora:{adapter.name}" if adapter else resolved.name
        self.settings = settings
        load_kwargs = _load_kwargs(settings)  # before any slow work: bad GPU settings fail fast
        torch.set_num_threads(settings.llm_threads)
        source = _pretrained_source(resolved, settings, progress)
        if progress:
            progress(0.9, f"loading {self.name}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"could not load {resolved.location!r} with transformers: {exc}") from exc
        if adapter is not None:
            self.model = _with_lora_adapter(self.model, adapter, merge=settings.quantization == "none")
        self.tool_role = template_has_tool_role(self.tokenizer.chat_template)
        self._generating = threading.Lock()

    @cached_property
    def _enforcer_tokenizer_data(self) -> Any:
        return enforcer_tokenizer_data(self.tokenizer)

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
        max_new_tokens = max_new_tokens or self.settings.max_new_tokens
        inputs = self.encode(messages).to(self.model.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens + max_new_tokens > self.settings.llm_context:
            raise ModelError(
                f"the conversation is too long for the model ({prompt_tokens} prompt tokens + {max_new_tokens} to generate "
                f"> context {self.settings.llm_context}); start a new conversation or raise SCANCHAT_LLM_CONTEXT"
            )
        streamer = _CountingStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        stopping = StoppingCriteriaList([_StopWhenSet(stop)])
        generate_kwargs: dict[str, Any] = dict(
            **inputs,
            streamer=streamer,
            max_new_tokens=max_new_tokens,
            do_sample=sampling is not None,
            temperature=sampling.temperature if sampling else None,
            top_p=None,
            top_k=None,
            pad_token_id=self.tokenizer.eos_token_id if self.tokenizer.pad_token_id is None else self.tokenizer.pad_token_id,
            stopping_criteria=stopping,
        )
        if json_schema is not None:
            generate_kwargs["prefix_allowed_tokens_fn"] = json_constraint(self._enforcer_tokenizer_data, json_schema)
            stopping.append(StopWhenJsonComplete(self.tokenizer, prompt_tokens))
        failures: list[BaseException] = []

        def generate() -> None:
            try:
                if sampling:
                    torch.manual_seed(sampling.seed)  # under self._generating: no other generation shares the RNG
                with torch.inference_mode():
                    self.model.generate(**generate_kwargs)
            except Exception as exc:  # re-raised in the consumer's thread below
                failures.append(exc)
                streamer.end()

        with self._generating:
            worker = threading.Thread(target=generate, name=f"generate-{self.name}", daemon=True)
            worker.start()
            try:
                yield from (piece for piece in streamer if piece)
            finally:
                stop.set()  # a consumer that stops reading early also stops the generation
                worker.join()
        if failures:
            raise ModelError(f"{self.name} failed while generating: {failures[0]}") from failures[0]
        self.last_usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=streamer.generated_tokens,
            seconds=time.perf_counter() - started,
            first_token_seconds=streamer.first_token_at - started if streamer.first_token_at else None,
        )

    def encode(self, messages: Sequence[Message], answer: str | None = None) -> Any:
        """Token ids of the chat as `stream` sends it (with `answer` as the assistant's turn, for fine-tuning)."""
        chat = template_messages(messages, tool_role=self.tool_role)
        if answer is not None:
            chat.append({"role": "assistant", "content": answer})
        try:
            return self.tokenizer.apply_chat_template(
                chat, add_generation_prompt=answer is None, return_tensors="pt", return_dict=True
            )
        except ValueError as exc:  # e.g. a base model without a chat template
            raise ModelError(f"{self.name} cannot format a chat: {exc}") from exc



def enforcer_tokenizer_data(tokenizer: Any) -> Any:
    """Token prefix tree for lm-format-enforcer; build it once per model (seconds for a 150k vocabulary)."""
    _let_lm_format_enforcer_import_on_transformers_5()
    from lmformatenforcer.integrations.transformers import build_token_enforcer_tokenizer_data

    return build_token_enforcer_tokenizer_data(tokenizer)


def json_constraint(tokenizer_data: Any, schema: dict[str, Any]) -> Any:
    """A `prefix_allowed_tokens_fn` for `generate` that admits only JSON valid under `schema`."""
    _let_lm_format_enforcer_import_on_transformers_5()
    from lmformatenforcer import JsonSchemaParser
    from lmformatenforcer.integrations.transformers import build_transformers_prefix_allowed_tokens_fn

    try:
        parser = JsonSchemaParser(schema)
    except Exception as exc:
        raise ModelError(f"the JSON schema cannot be enforced: {exc}") from exc
    return build_transformers_prefix_allowed_tokens_fn(tokenizer_data, parser)


def _let_lm_format_enforcer_import_on_transformers_5() -> None:
    """lm-format-enforcer 0.11.3 imports PreTrainedTokenizerBase from where transformers 4 kept it.

    Seen on the GPU machine (transformers 5.17): the import fails as "transformers is not
    installed". Fixed upstream in noamgat/lm-format-enforcer#175; drop this once a release has it.
    """
    import transformers
    import transformers.tokenization_utils as legacy_location

    if not hasattr(legacy_location, "PreTrainedTokenizerBase"):
        legacy_location.PreTrainedTokenizerBase = transformers.PreTrainedTokenizerBase


class _CountingStreamer(TextIteratorStreamer):
    """A text streamer that also records when the first new token arrived and how many came."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_token_at: float | None = None
        self.generated_tokens = 0

    def put(self, value: torch.Tensor) -> None:
        if not self.next_tokens_are_prompt:
            self.first_token_at = self.first_token_at or time.perf_counter()
            self.generated_tokens += int(value.numel())
        super().put(value)


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> bool:
        return self.event.is_set()


class StopWhenJsonComplete(StoppingCriteria):
    """Stop once the output is one complete JSON document.

    The schema parser still allows trailing whitespace after the closing brace, and small models
    happily fill max_new_tokens with newlines; stopping here saves those tokens.
    """

    def __init__(self, tokenizer: Any, prompt_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_tokens = prompt_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> bool:
        text = self.tokenizer.decode(input_ids[0, self.prompt_tokens :], skip_special_tokens=True).strip()
        if not text.endswith(("}", "]")):
            return False
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return False
        return True


def _with_lora_adapter(model: Any, adapter: Path, merge: bool) -> Any:
    """The base model with a peft LoRA adapter; merged into the weights (same speed as the base) unless quantised."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError, RuntimeError) as exc:  # missing files, another base's shapes
        raise ModelError(f"could not apply the LoRA adapter {adapter}: {exc}") from exc
    return (model.merge_and_unload() if merge else model).eval()


def _load_kwargs(settings: Settings) -> dict[str, Any]:
    """from_pretrained options for this machine; quantization needs CUDA and bitsandbytes."""
    cuda = torch.cuda.is_available()
    if settings.quantization != "none":
        if not cuda:
            raise ModelError(
                f"{settings.quantization} quantization needs a CUDA GPU (bitsandbytes); this machine has none. "
                "Set SCANCHAT_QUANTIZATION=none to run in full precision on the CPU."
            )
        try:
            from transformers import BitsAndBytesConfig
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ModelError("quantization needs bitsandbytes: pip install 'scanchat[gpu]'") from exc
        quantization = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4")
            if settings.quantization == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        return {"quantization_config": quantization, "device_map": settings.device_map or "auto", "dtype": torch.bfloat16}
    if cuda:
        return {"device_map": settings.device_map or "auto", "dtype": torch.bfloat16}
    return {"dtype": CPU_DTYPE}


def _pretrained_source(resolved: ResolvedModel, settings: Settings, progress: ProgressCallback | None) -> str:
    """A folder (or hub id) from_pretrained reads quickly; GGUF files are dequantised into the cache once."""
    if resolved.format != "gguf":
        return resolved.location
    cached = settings.models_dir / f"{resolved.name}-hf"
    if (cached / "config.json").is_file():
        return str(cached)
    if progress:
        progress(0.1, f"dequantising {resolved.name} (first start only, about a minute)")
    _dequantise_into(resolved.path, cached)
    return str(cached)


def _dequantise_into(gguf: Path, target: Path) -> None:
    """Write the dequantised model and tokenizer into a temporary folder, then rename it into place."""
    log.info("dequantising %s into %s (first start only)", gguf, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=CPU_DTYPE)
    except Exception as exc:  # the gguf reader raises assorted errors on a damaged file
        raise ModelError(f"{gguf} is not a readable GGUF model ({type(exc).__name__}: {exc}); re-fetch or replace the file") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():  # another process finishing first is fine
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
