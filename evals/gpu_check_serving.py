"""GPU check of the serving path: the default model behind vLLM, the smoke and scan-facts suites through it on Ray.

    python evals/gpu_check_serving.py --out OUT                    (a CUDA machine; prepared, not yet run)
    python evals/gpu_check_serving.py --out OUT --engine transformers-4bit --workers 1
    python evals/gpu_check_serving.py --out OUT --random-weights .gpucheck/vlm/llm   (no model file on the machine)

Engines, tried in this order with `--engine auto`:
- `vllm`: `python -m vllm.entrypoints.openai.api_server` on the default GGUF (qwen2.5-coder-0.5b; its
  tokenizer is read from the GGUF and saved next to it, so nothing is downloaded), 127.0.0.1 only, an
  API key required; the eval's Ray workers each hold an OpenAI client and vLLM batches their requests.
- `transformers-4bit` (when vLLM does not import): each Ray worker loads the model once on the GPU in
  4-bit (bitsandbytes), SCANCHAT_RUNTIME=transformers SCANCHAT_QUANTIZATION=4bit.
Each suite runs as `scanchat eval run SUITE --ray --parallel W`; the JSON written to
OUT/gpu_check_serving.json holds, per suite, scenarios per hour, completion tokens per second, turn
latency p50/p95, first-token p50 and pass rate with its interval; and the peak GPU memory (nvidia-smi,
sampled every second) and the peak resident memory of the child processes. The machine needs this
repository's dependencies (the imaging stack and the sample scans the suites use), Ray, and vLLM or
bitsandbytes; what is missing is recorded in the JSON instead of a traceback. A lent machine has no
model files and takes 64 MiB from here, so `--random-weights TOKENIZER_FOLDER` builds a random-weight
model of Qwen2.5-0.5B's shape with that tokenizer (the bundle of gpu_check_vlm.py prepare): throughput,
latency and memory are then the real model size's, the pass rates meaningless.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUITES = ("smoke", "scan_facts")
SERVER_START_S = 600.0
SUITE_TIMEOUT_S = 1800


class GpuMemory:
    """Peak used GPU memory over all devices, from nvidia-smi once a second (covers every process)."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max(self.peak_mib, sum(int(v) for v in out.split() if v.strip().isdigit()))
            except (OSError, subprocess.SubprocessError):
                return
            self._stop.wait(1.0)

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def environment() -> dict:
    import torch

    found = {name: importlib.util.find_spec(name) is not None for name in ("vllm", "bitsandbytes", "ray", "openai", "nibabel")}
    return {
        "cuda": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
        "installed": found,
    }


def random_qwen(tokenizer_folder: Path, folder: Path) -> Path:
    """A random-weight Qwen2 causal LM of the tokenizer folder's config (Qwen2.5-0.5B's shape), saved with it."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config.from_pretrained(tokenizer_folder)).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gguf_tokenizer(gguf: Path, folder: Path) -> Path:
    """The GGUF's own tokenizer as a Hugging Face folder, for vLLM (no hub download)."""
    from transformers import AutoTokenizer

    if not (folder / "tokenizer_config.json").is_file():
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    return folder


def start_vllm(model: Path, name: str, out: Path, api_key: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    tokenizer = gguf_tokenizer(model, out / "tokenizer") if model.suffix == ".gguf" else model
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--tokenizer", str(tokenizer),
        "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "4096", "--gpu-memory-utilization", "0.5",
    ]  # fmt: skip
    log = (out / "vllm.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_API_KEY": api_key})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited with {process.returncode}; see {out / 'vllm.log'}")
        try:
            if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError(f"vLLM did not answer within {SERVER_START_S:.0f} s; see {out / 'vllm.log'}")


def run_suite(suite: str, backend: str, workers: int, out: Path, env: dict[str, str]) -> dict:
    run_dir = out / "runs" / suite
    command = [sys.executable, "-m", "assistant.cli", "eval", "run", str(ROOT / "evals" / "suites" / suite),
               "--backend", backend, "--ray", "--parallel", str(workers), "--out", str(run_dir)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=SUITE_TIMEOUT_S, cwd=ROOT)
    wall = time.perf_counter() - started
    report_path = run_dir / "report.json"
    if done.returncode not in (0, 1) or not report_path.is_file():
        return {"error": f"exit {done.returncode}", "stderr": done.stderr[-2000:]}
    report = json.loads(report_path.read_text())
    metrics, info = report["metrics"], report["info"]
    turn_seconds = sum(t["seconds"] for r in report["results"] for t in r["turns"])
    return {
        "scenarios": metrics["scenarios"],
        "pass_rate": metrics["pass_rate"],
        "run_seconds": info["seconds"],
        "wall_seconds_with_startup": round(wall, 1),
        "scenarios_per_hour": round(3600 * metrics["scenarios"] / info["seconds"], 1) if info["seconds"] else None,
        "completion_tokens": metrics["completion_tokens"],
        "completion_tokens_per_second": round(metrics["completion_tokens"] / info["seconds"], 1) if info["seconds"] else None,
        "turn_seconds_total": round(turn_seconds, 1),
        "latency_p50_s": metrics["latency_p50_s"],
        "latency_p95_s": metrics["latency_p95_s"],
        "first_token_p50_s": metrics["first_token_p50_s"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--engine", choices=("auto", "vllm", "transformers-4bit"), default="auto")
    parser.add_argument("--workers", type=int, default=4, help="Ray workers (scenarios at once)")
    parser.add_argument("--suites", nargs="+", default=list(SUITES))
    parser.add_argument("--model", help="registry name, GGUF file or HF folder (default: SCANCHAT_LLM)")
    parser.add_argument("--random-weights", type=Path, metavar="TOKENIZER_FOLDER", help="serve a random-weight Qwen2.5-0.5B-shaped model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"environment": environment(), "engine": None, "suites": {}}
    engine = args.engine
    if engine == "auto":
        engine = "vllm" if results["environment"]["installed"]["vllm"] else "transformers-4bit"
    results["engine"] = engine
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    server = None
    try:
        from assistant.config import get_settings
        from assistant.models.registry import resolve_model

        settings = get_settings()
        model = str(random_qwen(args.random_weights, args.out / "random-qwen")) if args.random_weights else args.model
        resolved = resolve_model(model or settings.llm, settings)
        results["model"] = {"name": resolved.name, "file": resolved.location}
        with GpuMemory() as memory:
            if engine == "vllm":
                api_key = secrets.token_urlsafe(16)
                started = time.perf_counter()
                server, backend = start_vllm(resolved.path, resolved.name, args.out, api_key)
                results["server_start_seconds"] = round(time.perf_counter() - started, 1)
                env["OPENAI_API_KEY"] = api_key
            else:
                backend = resolved.location if resolved.format == "hf-folder" else resolved.name
                env.update(SCANCHAT_RUNTIME="transformers", SCANCHAT_QUANTIZATION="4bit")
            for suite in args.suites:
                results["suites"][suite] = run_suite(suite, backend, args.workers, args.out, env)
        results["peak_gpu_memory_mib"] = memory.peak_mib
    except Exception as exc:  # record what failed: the JSON is the check's result
        results["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        results["peak_child_rss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        (args.out / "gpu_check_serving.json").write_text(json.dumps(results, indent=1, default=str))
        print(json.dumps(results, indent=1, default=str))
    ok = "error" not in results and all("error" not in s for s in results["suites"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
