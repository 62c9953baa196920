"""Benchmark the chat runtimes on this machine: load time, time to first token, tokens/s, JSON latency.

Each measurement runs in a fresh subprocess, so load times include imports and nothing is
already in memory. Per runtime x model, two processes run on the same cache folder: the first
is a cold start when the folder lacks the model (assembly from packages and, for transformers,
dequantisation; each row says which it was), the second is the warm start users see daily. Ratios compare each
runtime with transformers on the same model, measured in the same run.

    python -m evals.bench_runtimes                      # installed runtimes x (0.5B, smollm2), user cache
    python -m evals.bench_runtimes --fresh-cache        # cold loads from an empty cache (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from assistant.models.registry import llama_cpp_available

DEFAULT_MODEL = "qwen2.5-coder-0.5b"
PROMPT = "Explain in about one hundred words what a CT scan measures and what Hounsfield units are."
GENERATED_TOKENS = 96
JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "tool": {"type": "string", "enum": ["describe_scan", "probe_intensity", "measure_distance", "answer"]},
        "arguments": {"type": "object", "properties": {"question": {"type": "string", "maxLength": 60}}},
    },
    "required": ["tool", "arguments"],
}
JSON_QUESTION = "Tools: describe_scan, probe_intensity, measure_distance, answer. Which tool tells the slice thickness? Reply in JSON."
TARGETS = {"warm_load_s": 10.0, "first_token_s": 2.0, "tokens_per_s": 15.0}  # for the default model
RESULT_MARKER = "BENCH_RESULT "


@dataclass
class Measurement:
    runtime: str
    model: str
    start: str  # "cold" or "warm"
    load_s: float
    first_token_s: float
    tokens_per_s: float
    json_first_s: float  # includes building the schema enforcer's token tables
    json_s: float
    json_valid: bool
    peak_rss_gb: float


def _is_cached(runtime: str, model: str, models_dir: Path) -> bool:
    """Whether this start finds what it needs already assembled (and, for transformers, dequantised)."""
    from assistant.models.registry import MODEL_SPECS

    needed = [models_dir / MODEL_SPECS[model].filename]
    if runtime == "transformers":
        needed.append(models_dir / f"{model}-hf" / "config.json")
    return all(path.is_file() for path in needed)


def measure_in_this_process(runtime: str, model: str, cache_dir: str) -> Measurement:
    started = time.perf_counter()
    from assistant.config import get_settings
    from assistant.models.base import Message
    from assistant.models.registry import load_chat_model

    settings = get_settings().model_copy(update={"cache_dir": Path(cache_dir), "openai_base_url": None})
    start = "warm" if _is_cached(runtime, model, settings.models_dir) else "cold"
    chat = load_chat_model(settings, name=model, runtime=runtime)
    load_s = time.perf_counter() - started

    chat.complete([Message(role="user", content="Hi")], max_new_tokens=4)  # first-call kernel warm-up
    chat.complete([Message(role="user", content=PROMPT)], max_new_tokens=GENERATED_TOKENS)
    usage = chat.last_usage
    decode_s = usage.seconds - (usage.first_token_seconds or 0.0)
    tokens_per_s = (usage.completion_tokens - 1) / decode_s if decode_s > 0 else 0.0

    question = [Message(role="user", content=JSON_QUESTION)]
    json_started = time.perf_counter()
    chat.complete_json(question, JSON_SCHEMA, max_new_tokens=64)
    json_first_s = time.perf_counter() - json_started
    json_started = time.perf_counter()
    answer = chat.complete_json(question, JSON_SCHEMA, max_new_tokens=64)
    json_s = time.perf_counter() - json_started
    return Measurement(
        runtime=runtime,
        model=model,
        start=start,
        load_s=round(load_s, 2),
        first_token_s=round(usage.first_token_seconds or float("nan"), 3),
        tokens_per_s=round(tokens_per_s, 1),
        json_first_s=round(json_first_s, 2),
        json_s=round(json_s, 2),
        json_valid=answer.get("tool") in JSON_SCHEMA["properties"]["tool"]["enum"],
        peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
    )


def measure_in_subprocess(runtime: str, model: str, cache_dir: str) -> Measurement | None:
    command = [sys.executable, "-m", "evals.bench_runtimes", "--worker", runtime, model, cache_dir]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return Measurement(**json.loads(line.removeprefix(RESULT_MARKER)))
    print(f"  {runtime} {model}: failed\n{done.stderr[-1500:]}", file=sys.stderr)
    return None


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return f"{value:g} {'PASS' if ok else 'FAIL'}"


def print_table(results: list[Measurement]) -> None:
    baseline = {(r.model, r.start): r for r in results if r.runtime == "transformers"}
    header = f"{'runtime':<13}{'model':<20}{'start':<6}{'load s':>14}{'1st tok s':>13}{'tok/s':>12}{'json s':>8}{'json 1st':>9}{'valid':>6}{'RSS GB':>7}  vs transformers"
    print(header)
    print("-" * len(header))
    for r in results:
        default = r.model == DEFAULT_MODEL
        load = _verdict(r.load_s, TARGETS["warm_load_s"], False) if default and r.start == "warm" else f"{r.load_s:g}"
        first = _verdict(r.first_token_s, TARGETS["first_token_s"], False) if default else f"{r.first_token_s:g}"
        speed = _verdict(r.tokens_per_s, TARGETS["tokens_per_s"], True) if default else f"{r.tokens_per_s:g}"
        base = baseline.get((r.model, r.start))
        ratio = (
            f"load x{base.load_s / r.load_s:.1f} faster, tok/s x{r.tokens_per_s / base.tokens_per_s:.1f}"
            if base and r.runtime != "transformers" and r.load_s and base.tokens_per_s
            else ""
        )
        print(
            f"{r.runtime:<13}{r.model:<20}{r.start:<6}{load:>14}{first:>13}{speed:>12}{r.json_s:>8g}{r.json_first_s:>9g}"
            f"{'yes' if r.json_valid else 'no':>6}{r.peak_rss_gb:>7g}  {ratio}"
        )
    print(f"load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores (timings scale with it)")
    print(f"targets for {DEFAULT_MODEL}: warm load <= {TARGETS['warm_load_s']} s, first token <= {TARGETS['first_token_s']} s, >= {TARGETS['tokens_per_s']} tok/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=3, metavar=("RUNTIME", "MODEL", "CACHE_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=[DEFAULT_MODEL, "smollm2-135m"])
    parser.add_argument("--runtimes", nargs="+", default=["transformers", "llamacpp"] if llama_cpp_available() else ["transformers"])
    parser.add_argument("--fresh-cache", action="store_true", help="measure cold loads from an empty temporary cache")
    parser.add_argument("--out", type=Path, default=Path("evals/results/bench_runtimes.json"))
    args = parser.parse_args()
    if args.worker:
        print(RESULT_MARKER + json.dumps(asdict(measure_in_this_process(*args.worker))))
        return 0

    from assistant.config import get_settings

    with tempfile.TemporaryDirectory(prefix="scanchat-bench-") as scratch:
        cache_dir = scratch if args.fresh_cache else str(get_settings().cache_dir)
        results = []
        for model in args.models:
            for runtime in args.runtimes:
                for process in ("first", "second"):  # the second start is always warm
                    print(f"measuring {runtime} {model} ({process} process) ...", file=sys.stderr, flush=True)
                    if measured := measure_in_subprocess(runtime, model, cache_dir):
                        results.append(measured)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average": os.getloadavg(), "targets": TARGETS, "results": [asdict(r) for r in results]}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
