"""Several clinicians on one deployment, measured: the real app over HTTP with N logged-in users at once.

Starts `scanchat ui` on a free loopback port with a fresh database, adds N users, warms the model up
with one unmeasured turn, and lets each user, in its own thread and its own gradio_client session,
load the same sample scan and ask a scripted conversation. Reports per N: turn latency p50/p95 (and
the scan-facts turn's p95) against N = 1 in the same run, throughput (turns/s), the server's peak
resident memory, errors, and cross-user leaks: any user whose chat shows another user's question
or a restored conversation that is not theirs (must be 0).

    python evals/bench_load.py [--users 1 4 8 16] [--turns 2] [--repeat 3] [--sample mr-multiframe-dicom] [--model smollm2-135m]

Each N runs `--repeat` times with fresh users and the latencies are pooled; the ratio of the scan-facts p95 to
N = 1 comes with a 95% bootstrap interval (both samples resampled). Memory: the web process's peak resident
set and the sum of its child processes' peaks (the tool workers, the forkserver).

Needs the UI wired to logins (`ui/app.py` calls `assistant.auth`); prints a table and writes
evals/results/bench_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

QUESTIONS = ["What is the slice thickness? ({tag})", "What are the dimensions of this scan? ({tag})",
             "What is the voxel spacing? ({tag})"]
SCAN_FACTS = 0  # index of the scan-facts turn the target is stated for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the highest resident memory the process has reached so far."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:  # it has exited meanwhile
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children + [d for c in children for d in descendants(c)]


def start_app(folder: Path, model: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "SCANCHAT_REPORTS_DB": str(folder / "reports.sqlite3"), "SCANCHAT_DATABASE_URL": "",
           "SCANCHAT_LLM": model, "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "assistant.cli", "ui", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited ({server.returncode}); see {folder / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code < 500:
                return server
        except httpx.HTTPError:
            time.sleep(1)
    server.kill()
    raise RuntimeError("the app did not start within 10 minutes")


def one_user(url: str, name: str, sample: str, turns: int) -> dict:
    """Log in, load the scan, ask `turns` questions; what this user saw and how long each turn took."""
    from gradio_client import Client

    result: dict = {"user": name, "latencies": [], "errors": [], "seen": ""}
    try:  # a login is a scrypt check (128 MiB, ~0.5 s): generous timeouts on a loaded machine
        client = Client(url, auth=(name, f"{name}-password"), verbose=False, httpx_kwargs={"timeout": 600})
        *_, info, chat = client.predict(None, sample, "auto", api_name="/load")
        result["seen"] += json.dumps(chat, default=str) + str(info)
        history = chat or []
        for turn in range(turns):
            question = QUESTIONS[turn % len(QUESTIONS)].format(tag=name)
            started = time.perf_counter()
            outputs = client.predict(question, history, "auto", True, api_name="/respond")
            result["latencies"].append(time.perf_counter() - started)
            history = outputs[0]
            result["seen"] += json.dumps(history, default=str)
    except Exception as exc:  # a failed turn is a measured error, not a crash of the benchmark
        result["errors"].append(f"{type(exc).__name__}: {exc}"[:300])
    return result


def user_name(n: int, repeat: int, i: int) -> str:
    return f"u{n}r{repeat}x{i}"


TAG = re.compile(r"\((u\d+r\d+x\d+|warmup)\)")  # the user name each question carries


def run(n: int, url: str, sample: str, turns: int, repeats: int, server: subprocess.Popen) -> dict:
    results, wall = [], 0.0
    for repeat in range(repeats):
        names = [user_name(n, repeat, i) for i in range(n)]
        started = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results += list(pool.map(lambda name: one_user(url, name, sample, turns), names))
        wall += time.perf_counter() - started
    latencies = [t for r in results for t in r["latencies"]]
    facts = [r["latencies"][SCAN_FACTS] for r in results if len(r["latencies"]) > SCAN_FACTS]
    leaks = sorted({(r["user"], other) for r in results for other in TAG.findall(r["seen"]) if other != r["user"]})
    return {"users": n, "repeats": repeats, "turns": len(latencies), "errors": [e for r in results for e in r["errors"]],
            "leaks": leaks, "p50_s": _pct(latencies, 50), "p95_s": _pct(latencies, 95),
            "scan_facts_p95_s": _pct(facts, 95), "throughput_turns_per_s": round(len(latencies) / wall, 3),
            "peak_rss_mib": round(peak_rss_mib(server.pid), 1),
            "children_peak_rss_mib": round(sum(peak_rss_mib(c) for c in descendants(server.pid)), 1),
            "latencies_s": [round(t, 3) for t in latencies], "scan_facts_s": [round(t, 3) for t in facts]}


def _pct(values: list[float], q: int) -> float | None:
    return None if not values else round(_quantile(values, q), 2)


def _quantile(values: list[float], q: int) -> float:
    return values[0] if len(values) == 1 else statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ratio_interval(values: list[float], base: list[float], q: int = 95, draws: int = 2000,
                   seed: int = 0) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of quantile(values) / quantile(base), both resampled."""
    if not values or not base:
        return None
    rng = random.Random(seed)
    ratios = sorted(_quantile(rng.choices(values, k=len(values)), q) / _quantile(rng.choices(base, k=len(base)), q)
                    for _ in range(draws))
    return round(ratios[int(0.025 * draws)], 2), round(ratios[int(0.975 * draws) - 1], 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--turns", type=int, default=2, help="questions per user (the first is the scan-facts turn)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N with fresh users, latencies pooled")
    parser.add_argument("--sample", default="mr-multiframe-dicom")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_load.json")
    args = parser.parse_args()
    if 1 not in args.users:
        args.users = [1, *args.users]  # the baseline every ratio is against

    from assistant.reports.store import ReportStore

    folder = Path(tempfile.mkdtemp(prefix="bench-load-"))
    store = ReportStore(folder / "reports.sqlite3")
    for n in args.users:
        for repeat in range(args.repeat):
            for i in range(n):
                store.users.add(user_name(n, repeat, i), "clinician", f"{user_name(n, repeat, i)}-password")
    store.users.add("warmup", "clinician", "warmup-password")
    port = free_port()
    server = start_app(folder, args.model, port)
    url = f"http://127.0.0.1:{port}/"
    rows = []
    try:
        warm = one_user(url, "warmup", args.sample, 1)  # loads the model and the scan once, outside the figures
        print(f"warm-up turn {warm['latencies']} s {warm['errors']}", file=sys.stderr)
        for n in sorted(set(args.users)):
            rows.append(run(n, url, args.sample, args.turns, args.repeat, server))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("latencies_s", "scan_facts_s")}), file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=60)
    base = rows[0]
    for row in rows:
        for key in ("p95_s", "scan_facts_p95_s"):
            row[f"{key}_ratio_to_1"] = round(row[key] / base[key], 2) if row[key] and base[key] else None
        row["scan_facts_p95_ratio_95ci"] = ratio_interval(row["scan_facts_s"], base["scan_facts_s"])
        row["throughput_ratio_to_1"] = round(row["throughput_turns_per_s"] / base["throughput_turns_per_s"], 2) \
            if base["throughput_turns_per_s"] else None
    print(f"{'N':>3} {'turns':>5} {'err':>4} {'leaks':>5} {'p50 s':>7} {'p95 s':>7} {'facts p95':>9} "
          f"{'x N=1':>6} {'95% CI':>12} {'turns/s':>8} {'peak MiB':>9} {'workers MiB':>11}")
    for r in rows:
        interval = r["scan_facts_p95_ratio_95ci"]
        shown = f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "-"
        print(f"{r['users']:>3} {r['turns']:>5} {len(r['errors']):>4} {len(r['leaks']):>5} {r['p50_s'] or 0:>7.2f} "
              f"{r['p95_s'] or 0:>7.2f} {r['scan_facts_p95_s'] or 0:>9.2f} {r['scan_facts_p95_s_ratio_to_1'] or 0:>6.2f} "
              f"{shown:>12} {r['throughput_turns_per_s']:>8.3f} {r['peak_rss_mib']:>9.1f} {r['children_peak_rss_mib']:>11.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "sample": args.sample, "turns": args.turns,
                                    "repeat": args.repeat, "rows": rows},
                                   indent=1))
    print(f"wrote {args.out}")
    return 0 if all(not r["leaks"] and not r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
