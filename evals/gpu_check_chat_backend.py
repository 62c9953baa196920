"""GPU path of the transformers chat backend: device_map on CUDA, streaming, JSON-schema output, 4-/8-bit loading.

    python evals/gpu_check_chat_backend.py TOKENIZER_FOLDER   (e.g. the bundle's llm/ written by gpu_check_vlm.py prepare)

A random-weight two-layer Llama with the given tokenizer, so nothing is downloaded; prints a JSON summary.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.config import Settings  # noqa: E402
from assistant.models.base import Message, ModelError  # noqa: E402
from assistant.models.registry import ResolvedModel  # noqa: E402
from assistant.models.transformers_backend import TransformersChatModel  # noqa: E402

SCHEMA = {"type": "object", "properties": {"tool": {"type": "string", "enum": ["describe_scan", "segment"]}}, "required": ["tool"]}


def check(tokenizer_folder: str, scratch: Path) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(scratch / "tiny-llama")
    tokenizer.save_pretrained(scratch / "tiny-llama")
    resolved = ResolvedModel("tiny-llama", "hf-folder", str(scratch / "tiny-llama"))
    settings = Settings(cache_dir=scratch / "cache")
    started = time.perf_counter()
    model = TransformersChatModel(resolved, settings)
    results: dict = {"cuda": torch.cuda.is_available(), "transformers": __import__("transformers").__version__,
                     "load_s": round(time.perf_counter() - started, 2), "device": str(model.model.device),
                     "dtype": str(model.model.dtype)}
    conversation = [Message(role="user", content="Hello"), Message(role="tool", name="describe_scan", content="CT")]
    results["stream_pieces"] = len(list(model.stream(conversation, max_new_tokens=16)))
    results["usage"] = vars(model.last_usage)
    results["json"] = model.complete_json([Message(role="user", content="pick")], SCHEMA, max_new_tokens=40)
    for quantization in ("4bit", "8bit"):
        try:
            TransformersChatModel(resolved, settings.model_copy(update={"quantization": quantization}))
            results[quantization] = "loaded"
        except ModelError as exc:
            results[quantization] = f"ModelError: {exc}"
    return results


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="chat-gpu-check-") as scratch:
        results = check(sys.argv[1], Path(scratch))
    print(json.dumps(results, indent=1, default=str))
    return 0 if results["json"].get("tool") in ("describe_scan", "segment") else 1


if __name__ == "__main__":
    sys.exit(main())
