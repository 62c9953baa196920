"""Where a turn's seconds go, before and after the latency work (issue 27), in one run on one machine.

The same scripted conversations (`evals/latency/conversations.json`, written for this benchmark and never seen by
the tuned suites; a dev split to develop on and a test split to report) are played by two worker processes per
runtime: "before" runs the code of a baseline commit (a `git worktree` of `--base`, on PYTHONPATH), "after" this
tree. Conversations alternate A-B, B-A (ABBA), so a change in machine load falls on both. Both workers time the
model calls the same way, from outside the agent (a wrapper classifies each call: a JSON choice of tool is
"choose", other JSON is "fill_arguments", plain text is the answer, split at its first token into prefill and
decode), and each tool from its record, so old and new code are measured alike. Runtimes: the default model through
llama.cpp in the worker's process, and through `python -m llama_cpp.server` (one server, both workers its clients).
Where the code under test can (`Agent.warm`), a conversation on a scan starts as in the UI: the model reads the prompt
opening when the scan is shown, before the first question; those seconds are reported apart, not in any turn.

Printed per runtime and variant: p50/p95 per turn and per stage, first-token time, the time a tool turn spends
outside its tools divided by a bare 64-token generation of the same model (measured in the same worker), the second
structure's speedup on an already registered scan, and the pass rate (tool, arguments, answer) with Wilson 95%
intervals. Targets (issue 27): outside-tool <= 1.5x bare generation, second structure >= 3x faster than the first,
p95 <= 10 s, no pass-rate loss.

    python evals/bench_latency.py --base 4e14738 --quick        # test split, one ABBA round, both runtimes
    python evals/bench_latency.py --base 4e14738 --split dev --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONVERSATIONS = ROOT / "evals" / "latency" / "conversations.json"
KEY = "bench-key"
BARE_TOKENS = 64
BARE_PROMPT = "Count from one to one hundred in words, separated by commas."
TARGETS = {"outside_ratio": 1.5, "second_structure_speedup": 3.0, "p95_s": 10.0}


# --- the worker: runs in the code under test (before or after), talks JSON lines on stdin/stdout -------------------


def _worker() -> int:
    """Play conversations sent on stdin with the code on PYTHONPATH; one JSON line back per request."""
    import logging

    logging.disable(logging.WARNING)
    replies = os.fdopen(os.dup(1), "w")  # the JSON lines; anything else written to stdout (C libraries too) goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from assistant.agent import Agent, AnswerEvent, TokenEvent
    from assistant.config import get_settings
    from assistant.models.base import ChatModel, Message, ModelWrapper
    from assistant.models.registry import load_chat_model
    from assistant.scans.samples import load_sample
    from assistant.session import ScanSession

    class Timed(ModelWrapper):
        """The model, each call's seconds added to a stage by what the call is."""

        def __init__(self, inner: ChatModel):
            super().__init__(inner)
            self.reuses_prompt_prefix = getattr(inner, "reuses_prompt_prefix", False)  # so that `warm` reaches it
            self.stages: dict[str, float] = {}
            self.calls = self.cached = 0

        def stream(self, messages, **kwargs: Any) -> Iterator[str]:
            schema = kwargs.get("json_schema")
            started, first = time.perf_counter(), None
            for piece in self.inner.stream(messages, **kwargs):
                first = first or time.perf_counter()
                yield piece
            ended = time.perf_counter()
            self.last_usage = self.inner.last_usage
            self.calls += 1
            self.cached += getattr(self.last_usage, "cached_prompt_tokens", None) or 0
            if schema is None:
                self._add("answer_prefill", (first or ended) - started)
                self._add("answer_decode", ended - (first or ended))
            else:
                choice = set(schema.get("properties", {})) == {"tool"}
                self._add("choose" if choice else "fill_arguments", ended - started)

        def _add(self, stage: str, seconds: float) -> None:
            self.stages[stage] = self.stages.get(stage, 0.0) + seconds

        def take(self) -> tuple[dict[str, float], int, int]:
            taken = (self.stages, self.calls, self.cached)
            self.stages, self.calls, self.cached = {}, 0, 0
            return taken

    settings = get_settings()
    model = Timed(load_chat_model(settings))
    for line in sys.stdin:
        request = json.loads(line)
        if "bare" in request:
            seconds, tokens = [], []
            for _ in range(request["bare"]):
                started = time.perf_counter()
                model.inner.complete([Message(role="user", content=BARE_PROMPT)], max_new_tokens=BARE_TOKENS)
                seconds.append(time.perf_counter() - started)
                tokens.append(model.inner.last_usage.completion_tokens)
            reply: dict[str, Any] = {"seconds": seconds, "tokens": tokens}
        else:
            reply = {"turns": _play(request["conversation"], model, Agent, AnswerEvent, TokenEvent, ScanSession,
                                    load_sample, settings)}
        print(json.dumps(reply), file=replies, flush=True)
    return 0


def _play(conversation: dict, model, Agent, AnswerEvent, TokenEvent, ScanSession, load_sample, settings) -> list[dict]:
    session = ScanSession()
    if conversation.get("scan"):
        session.load(load_sample(conversation["scan"]))
    agent = Agent(model, session, settings)
    warm_seconds = None
    if conversation.get("scan") and hasattr(agent, "warm"):  # the UI warms the model when it shows the scan, before
        started = time.perf_counter()                        # the clinician types: off the turn clock, reported apart
        agent.warm()
        warm_seconds = time.perf_counter() - started
    model.take()
    turns = []
    for turn in conversation["turns"]:
        started, first, answer, error = time.perf_counter(), None, "", None
        try:
            for event in agent.run(turn["user"]):
                if isinstance(event, (TokenEvent, AnswerEvent)) and first is None:
                    first = time.perf_counter() - started
                if isinstance(event, AnswerEvent):
                    answer = event.text
        except Exception as exc:  # recorded as a failed turn; the conversation goes on
            error = f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - started
        stages, calls, cached = model.take()
        trace = agent.traces[-1] if agent.traces and agent.traces[-1].user == turn["user"] else None
        records = trace.tool_calls if trace is not None else []
        for record in records:
            stages[f"tool:{record.name}"] = stages.get(f"tool:{record.name}", 0.0) + record.seconds
        turns.append({"seconds": seconds, "first_token_seconds": first, "stages": stages, "model_calls": calls,
                      "cached_prompt_tokens": cached, "tool_seconds": sum(r.seconds for r in records),
                      "calls": [{"name": r.name, "arguments": r.arguments, "error": r.error} for r in records],
                      "answer": answer, "error": error, "warm_seconds": None if turns else warm_seconds})
    close = getattr(session, "close", None)  # the baseline has no per-scan cache to drop
    if close is not None:
        close()
    return turns


# --- checks and statistics -------------------------------------------------------------------------------------------


def turn_passes(expected: dict, played: dict) -> bool:
    """The expected first tool (or none) with the expected arguments, an answer, and the answer's pattern if given."""
    import re

    if played["error"] or not played["answer"].strip():
        return False
    calls = played["calls"]
    if expected["tool"] == "none":
        if calls:
            return False
    else:
        if not calls or calls[0]["name"] != expected["tool"] or calls[0]["error"]:
            return False
        for name, value in expected.get("args", {}).items():
            got = calls[0]["arguments"].get(name)
            if isinstance(value, str):
                if not isinstance(got, str) or value.casefold() not in got.casefold():
                    return False
            elif got != value:
                return False
    return not expected.get("answer") or re.search(expected["answer"], played["answer"]) is not None


def wilson(successes: int, trials: int) -> tuple[float, float] | None:
    sys.path.insert(0, str(ROOT))
    from evals.harness.stats import wilson_interval

    return wilson_interval(successes, trials)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(results: list[dict], conversations: dict[str, dict], bare_s: float) -> dict[str, Any]:
    """One variant on one runtime: latency by stage, the ratios of the targets, the pass rate."""
    turns = [(conversations[r["id"]]["turns"][i], t) for r in results for i, t in enumerate(r["turns"])]
    seconds = [t["seconds"] for _, t in turns]
    stages: dict[str, list[float]] = {}
    for _, t in turns:
        for stage, s in t["stages"].items():
            stages.setdefault(stage.split(":")[0] if stage.startswith("tool:") else stage, []).append(s)
    tool_turns = [t for _, t in turns if t["calls"]]
    outside = [t["seconds"] - t["tool_seconds"] for t in tool_turns]
    speedups = []
    for r in results:
        pair = conversations[r["id"]].get("second_structure")
        if pair:
            first, second = (r["turns"][i]["seconds"] for i in pair)
            speedups.append(first / second)
    passed = sum(turn_passes(expected, t) for expected, t in turns)
    return {
        "turns": len(turns),
        "p50_s": _percentile(seconds, 50), "p95_s": _percentile(seconds, 95),
        "first_token_p50_s": _percentile([t["first_token_seconds"] for _, t in turns if t["first_token_seconds"]], 50),
        "stages": {stage: {"p50": _percentile(v, 50), "p95": _percentile(v, 95), "total": float(sum(v)), "n": len(v)}
                   for stage, v in sorted(stages.items())},
        "warm_at_scan_load_p50_s": _percentile([t["warm_seconds"] for _, t in turns if t.get("warm_seconds")], 50),
        "model_calls": sum(t["model_calls"] for _, t in turns),
        "cached_prompt_tokens": sum(t["cached_prompt_tokens"] for _, t in turns),
        "outside_tool_p50_s": _percentile(outside, 50),
        "outside_ratio": (_percentile(outside, 50) or 0.0) / bare_s if outside else None,
        "second_structure_speedup": float(np.median(speedups)) if speedups else None,
        "passed": passed, "pass_rate": passed / len(turns) if turns else None, "pass_interval": wilson(passed, len(turns)),
    }


# --- the driver ------------------------------------------------------------------------------------------------------


class Worker:
    """A worker process on one code tree and runtime."""

    def __init__(self, tree: Path, env: dict[str, str], log: Path):
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=tree, text=True,
            env={**os.environ, **env, "PYTHONPATH": str(tree)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log)

    def ask(self, request: dict) -> dict:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited ({self.process.poll()}); see {self.log.name}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()


def baseline_tree(commit: str, folder: Path) -> Path:
    """A worktree of `commit` (made once, reused while it is that commit)."""
    if not (folder / ".git").exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), commit], check=True,
                       capture_output=True)
    head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    wanted = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], capture_output=True, text=True).stdout.strip()
    if head != wanted:
        raise SystemExit(f"{folder} holds {head[:8]}, not {commit}: remove it (git worktree remove) or pass --base-tree")
    return folder


def run_runtime(runtime: str, env: dict[str, str], trees: dict[str, Path], conversations: list[dict], rounds: int,
                bare: int, logs: Path) -> dict[str, Any]:
    workers = {variant: Worker(tree, env, logs / f"{runtime}-{variant}.log") for variant, tree in trees.items()}
    try:
        warm = {"id": "warm-up", "scan": "ct-head", "turns": [{"user": "What is the slice thickness?"},
                                                              {"user": "look up pneumonia"}, {"user": "hello"},
                                                              {"user": "Translate 'no acute findings' into Portuguese."}]}
        for worker in workers.values():  # model, term index, router, embedder, translation engines loaded before timing
            worker.ask({"conversation": warm})
        bare_s = {variant: float(np.median(w.ask({"bare": bare})["seconds"])) for variant, w in workers.items()}
        played: dict[str, list[dict]] = {variant: [] for variant in workers}
        order = ["before", "after"]
        for round_ in range(rounds):
            for index, conversation in enumerate(conversations):
                for variant in (order if (index + round_) % 2 == 0 else order[::-1]):  # ABBA
                    started = time.perf_counter()
                    reply = workers[variant].ask({"conversation": conversation})
                    played[variant].append({"id": conversation["id"], "turns": reply["turns"]})
                    print(f"  {runtime} {variant:6} {conversation['id']:18} {time.perf_counter() - started:6.1f} s "
                          f"turns {[round(t['seconds'], 1) for t in reply['turns']]}", file=sys.stderr, flush=True)
        bare_after = {variant: float(np.median(w.ask({"bare": bare})["seconds"])) for variant, w in workers.items()}
    finally:
        for worker in workers.values():
            worker.close()
    by_id = {c["id"]: c for c in conversations}
    # one bare-generation figure per runtime: the median of both workers' measurements, before and after the run
    bare_all = float(np.median([*bare_s.values(), *bare_after.values()]))
    return {"bare_64_tokens_s": bare_all,
            "variants": {variant: summarise(played[variant], by_id, bare_all) for variant in workers},
            "played": played}


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def report(results: dict[str, Any]) -> str:
    lines = []
    for runtime, result in results["runtimes"].items():
        lines += ["", f"## {runtime}: bare {BARE_TOKENS}-token generation {result['bare_64_tokens_s']:.2f} s", "",
                  "| | before | after |", "|---|---|---|"]
        b, a = result["variants"]["before"], result["variants"]["after"]
        rows = [("turns", "turns", "d"), ("p50 per turn (s)", "p50_s", ".2f"), ("p95 per turn (s)", "p95_s", ".2f"),
                ("first token p50 (s)", "first_token_p50_s", ".2f"), ("model calls", "model_calls", "d"),
                ("prompt warmed at scan load p50 (s, off the turn clock)", "warm_at_scan_load_p50_s", ".2f"),
                ("prompt tokens from cache", "cached_prompt_tokens", "d"),
                ("outside-tool p50 (s), tool turns", "outside_tool_p50_s", ".2f"),
                ("outside-tool / bare generation", "outside_ratio", ".2f"),
                ("second structure speedup", "second_structure_speedup", ".2f")]
        lines += [f"| {name} | {_fmt(b[key], spec)} | {_fmt(a[key], spec)} |" for name, key, spec in rows]
        for v, name in ((b, "before"), (a, "after")):
            low, high = v["pass_interval"] or (0, 0)
            lines.append(f"| pass rate {name} | {v['passed']}/{v['turns']} = {v['pass_rate']:.0%} (95% CI {low:.0%}-{high:.0%}) | |"
                         if name == "before" else
                         f"| pass rate {name} | | {v['passed']}/{v['turns']} = {v['pass_rate']:.0%} (95% CI {low:.0%}-{high:.0%}) |")
        lines += ["", "| stage | before p50 / p95 / total (s) | after p50 / p95 / total (s) |", "|---|---|---|"]
        for stage in sorted(set(b["stages"]) | set(a["stages"])):
            cells = []
            for v in (b, a):
                s = v["stages"].get(stage)
                cells.append(f"{s['p50']:.2f} / {s['p95']:.2f} / {s['total']:.1f} (n={s['n']})" if s else "-")
            lines.append(f"| {stage} | {cells[0]} | {cells[1]} |")
        met = {
            "outside-tool <= 1.5x bare": a["outside_ratio"] is not None and a["outside_ratio"] <= TARGETS["outside_ratio"],
            "second structure >= 3x": (a["second_structure_speedup"] or 0) >= TARGETS["second_structure_speedup"],
            "p95 <= 10 s": (a["p95_s"] or 1e9) <= TARGETS["p95_s"],
            "no pass-rate loss": a["passed"] >= b["passed"],
        }
        lines += ["", "Targets (after): " + ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in met.items())]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", help="the baseline commit (before); required unless --worker")
    parser.add_argument("--base-tree", type=Path, help="where its worktree is (default: a sibling folder)")
    parser.add_argument("--split", choices=["dev", "test"], default="test")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds over the conversations")
    parser.add_argument("--runtimes", nargs="+", choices=["llamacpp", "server"], default=["llamacpp", "server"])
    parser.add_argument("--bare", type=int, default=3, help="bare generations per worker, before and after the run")
    parser.add_argument("--quick", action="store_true", help="one round, one bare generation per worker and side")
    parser.add_argument("--out", type=Path, help="write the JSON results here")
    args = parser.parse_args()
    if args.worker:
        return _worker()
    if not args.base:
        parser.error("--base is required")
    if args.quick:
        args.rounds, args.bare = 1, 1
    sys.path.insert(0, str(ROOT))
    from assistant.config import get_settings
    from assistant.models.registry import resolve_model
    from assistant.models.server import llama_server

    base = baseline_tree(args.base, args.base_tree or ROOT.parent / f"{ROOT.name}-base")
    trees = {"before": base, "after": ROOT}
    conversations = [c for c in json.loads(CONVERSATIONS.read_text()) if c["split"] == args.split]
    settings = get_settings()
    results: dict[str, Any] = {"base": args.base, "split": args.split, "rounds": args.rounds, "runtimes": {},
                               "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as scratch:
        logs = Path(scratch)
        for runtime in args.runtimes:
            if runtime == "llamacpp":
                env = {"SCANCHAT_RUNTIME": "llamacpp"}
                results["runtimes"][runtime] = run_runtime(runtime, env, trees, conversations, args.rounds, args.bare, logs)
            else:
                resolved = resolve_model(settings.llm, settings)
                if resolved.format != "gguf":
                    raise SystemExit(f"the server runtime serves GGUF files; {settings.llm} is a {resolved.format}")
                with llama_server(Path(resolved.location), settings.llm, settings, logs / "server.log", KEY) as url:
                    env = {"SCANCHAT_RUNTIME": "openai", "SCANCHAT_OPENAI_BASE_URL": url,
                           "SCANCHAT_OPENAI_MODEL": settings.llm, "SCANCHAT_OPENAI_API_KEY": KEY}
                    results["runtimes"][runtime] = run_runtime(runtime, env, trees, conversations, args.rounds,
                                                               args.bare, logs)
    results["load_average_after"] = os.getloadavg()
    print(f"# bench_latency: {args.split} split, {len(conversations)} conversations, {args.rounds} ABBA round(s), "
          f"base {args.base}; load average {results['load_average'][0]:.1f} at start, "
          f"{results['load_average_after'][0]:.1f} at the end")
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
