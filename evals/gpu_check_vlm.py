"""GPU check for the 3D VLM core: one prepared script for a lent CUDA machine, under 10 minutes, no network.

    python evals/gpu_check_vlm.py prepare --bundle .gpucheck/vlm            (here, on the CPU: builds the inputs)
    python evals/gpu_check_vlm.py run --bundle .gpucheck/vlm --out OUT      (CUDA machine: 4-bit with bitsandbytes)
    python evals/gpu_check_vlm.py run --bundle .gpucheck/vlm --out OUT --dry-run --llm-shape tiny   (CPU, no bitsandbytes)

A GPU machine has torch/transformers/peft/accelerate but none of the imaging stack, no model files
and no network, so `prepare` writes a small bundle (a few MB) that travels with the repository:
the Qwen2.5 tokenizer and model config, one sample volume already preprocessed to the M3D input
(1x32x256x256), and a few in-silico cases with their cached encoder features. `run` then:
1. builds a tiny random-weight M3D-LaMed-compatible model (real input size, 4x16x16 patches,
   256 visual tokens) whose LLM is loaded in 4-bit: a forward pass and a short generation;
2. runs the VLM training script (alignment, then projector + LoRA) for a few steps with QLoRA on a
   random-weight LLM of Qwen2.5-0.5B's real shape (`--llm-shape tiny` for a quick CPU dry run);
3. loads the trained project VLM in 4-bit: option scoring and a short generation on a volume's features.
Each step is timed, with peak GPU memory and tokens/s, into OUT/gpu_check_vlm.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE_TOKEN_ID = 1000
SAMPLE = "mr-t1-mni152"
ENCODER = "symmetry-grid"  # weight-free: the Merlin weights do not travel; the check is about the LLM side
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "config.json",
                   "generation_config.json")


def prepare(bundle: Path) -> int:
    """Write the bundle from this machine's caches (sample volume, packaged Qwen tokenizer)."""
    from assistant.config import get_settings
    from assistant.scans.samples import load_sample
    from assistant.vlm.data import generate_cases
    from assistant.vlm.preprocess import m3d_input
    from assistant.vlm.train import case_features, default_llm_folder

    bundle.mkdir(parents=True, exist_ok=True)
    llm_folder = Path(default_llm_folder(get_settings()))
    (bundle / "llm").mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        if (llm_folder / name).exists():
            shutil.copy(llm_folder / name, bundle / "llm" / name)
    np.save(bundle / "m3d_input.npy", m3d_input(load_sample(SAMPLE)).astype(np.float16))
    data = bundle / "data"
    cases = generate_cases(data, cases_per_base=4, seed=0, bases=(SAMPLE,))
    case_features(data, cases, ENCODER)
    for volume_file in data.glob("**/*.nii.gz"):  # features are cached: the volumes need not travel
        volume_file.unlink()
    size_mb = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 1e6
    print(f"bundle {bundle}: {len(cases)} cases, {size_mb:.1f} MB")
    return 0


def _peak_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1024**3, 3) if torch.cuda.is_available() else None


def _random_llm(bundle: Path, folder: Path, shape: str) -> str:
    """A random-weight Qwen2 causal LM saved with the real tokenizer: Qwen2.5-0.5B's shape, or a tiny one."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config.from_pretrained(bundle / "llm")
    if shape == "tiny":
        config = Qwen2Config(vocab_size=config.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, bos_token_id=config.bos_token_id,
                             eos_token_id=config.eos_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundle / "llm").save_pretrained(folder)
    return str(folder)


def check_tiny_m3d(bundle: Path, work: Path, quantized: bool, shape: str) -> dict:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Qwen2Config, Qwen2ForCausalLM

    from assistant.vlm.m3d import M3DLaMed, M3DVisionConfig

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    Qwen2ForCausalLM(config).save_pretrained(work / "tiny-llm")
    if quantized:
        llm = AutoModelForCausalLM.from_pretrained(work / "tiny-llm", device_map={"": 0}, dtype=torch.bfloat16,
                                                   quantization_config=BitsAndBytesConfig(
                                                       load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16,
                                                       bnb_4bit_quant_type="nf4"))
    else:
        llm = AutoModelForCausalLM.from_pretrained(work / "tiny-llm", dtype=torch.float32)
    model = M3DLaMed(M3DVisionConfig(hidden_size=256, layers=2, heads=4, mlp_dim=512), llm, IMAGE_TOKEN_ID).eval()
    device, dtype = (llm.device, torch.bfloat16) if quantized else (torch.device("cpu"), torch.float32)
    model.vision_tower.to(device, dtype)
    model.mm_projector.to(device, dtype)
    image = torch.from_numpy(np.load(bundle / "m3d_input.npy"))[None].to(device, dtype)
    ids = torch.tensor([[1, 2] + [IMAGE_TOKEN_ID] * 256 + [3, 4]], device=device)
    started = time.perf_counter()
    with torch.inference_mode():
        logits = model(ids, image).logits
    forward_s = time.perf_counter() - started
    new_tokens = 16
    started = time.perf_counter()
    out = model.generate(ids, image, new_tokens, pad_token_id=0, min_new_tokens=new_tokens)
    generate_s = time.perf_counter() - started
    return {"input_shape": list(image.shape), "logits_shape": list(logits.shape), "finite": bool(torch.isfinite(logits).all()),
            "forward_s": round(forward_s, 3), "generated_tokens": int(out.shape[1]),
            "tokens_per_s": round(out.shape[1] / generate_s, 1), "llm_4bit": quantized, "peak_gpu_gb": _peak_gb()}


def check_training(bundle: Path, work: Path, quantized: bool, shape: str) -> dict:
    from assistant.vlm.train import train

    llm = _random_llm(bundle, work / f"llm-{shape}", shape)
    summary = train(bundle / "data", work / "vlm", encoder=ENCODER, align_steps=3, tune_steps=3, batch_size=4, qlora=quantized,
                    llm_folder=llm)
    return {**summary, "llm_shape": shape, "peak_gpu_gb": _peak_gb()}


def check_project_vlm(bundle: Path, work: Path, quantized: bool, shape: str) -> dict:
    from assistant.vlm.encoder import feature_cache_name
    from assistant.vlm.model import load_vlm

    vlm = load_vlm(work / "vlm", "4bit" if quantized else "none")
    grid = next(iter(torch.load(bundle / "data" / feature_cache_name(ENCODER)).values())).float()
    started = time.perf_counter()
    scores = vlm.option_log_likelihoods(grid, "Is there a focal lesion in this scan?", ["yes", "no"])
    forward_s = time.perf_counter() - started
    new_tokens = 24
    started = time.perf_counter()
    out = vlm.generate_ids(grid, "Describe this scan.", new_tokens, min_new_tokens=new_tokens)
    generate_s = time.perf_counter() - started
    return {"option_scores": [round(s, 3) for s in scores], "options_s": round(forward_s, 3), "generated_tokens": int(out.shape[1]),
            "tokens_per_s": round(out.shape[1] / generate_s, 1), "llm_4bit": quantized, "llm_shape": shape,
            "peak_gpu_gb": _peak_gb()}


STEPS = (("tiny_m3d_4bit", check_tiny_m3d), ("qlora_training", check_training), ("project_vlm_4bit", check_project_vlm))


def run(bundle: Path, out: Path, dry_run: bool, shape: str) -> int:
    quantized = not dry_run
    if quantized and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU machine", file=sys.stderr)
        return 2
    if not (bundle / "data" / "cases.jsonl").is_file():
        print(f"{bundle} is not a prepared bundle: run `python evals/gpu_check_vlm.py prepare --bundle {bundle}` first", file=sys.stderr)
        return 2
    report: dict = {"cuda": torch.cuda.is_available(), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__, "dry_run": dry_run, "steps": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlm-gpu-check-") as scratch:
        for name, step in STEPS:
            step_started = time.perf_counter()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            try:
                report["steps"][name] = {"ok": True, **step(bundle, Path(scratch), quantized, shape)}
            except Exception as exc:  # record and go on: one failing step must not hide the others' figures
                report["steps"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
            report["steps"][name]["seconds"] = round(time.perf_counter() - step_started, 1)
            print(name, json.dumps({k: v for k, v in report["steps"][name].items() if k != "traceback"}, default=str), flush=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check_vlm.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out / 'gpu_check_vlm.json'} in {report['total_seconds']} s")
    return 0 if all(step["ok"] for step in report["steps"].values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("prepare", help="write the bundle here").add_argument("--bundle", type=Path, required=True)
    run_parser = actions.add_parser("run", help="run the check on the bundle")
    run_parser.add_argument("--bundle", type=Path, required=True)
    run_parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check_vlm.json")
    run_parser.add_argument("--dry-run", action="store_true", help="CPU, no bitsandbytes: checks the script itself")
    run_parser.add_argument("--llm-shape", choices=["qwen2.5-0.5b", "tiny"], default="qwen2.5-0.5b",
                            help="the random-weight LLM trained in step 2 (tiny: a quick CPU dry run)")
    args = parser.parse_args()
    if args.action == "prepare":
        return prepare(args.bundle)
    torch.set_num_threads(16 if torch.cuda.is_available() else 2)
    return run(args.bundle, args.out, args.dry_run, args.llm_shape)


if __name__ == "__main__":
    sys.exit(main())
