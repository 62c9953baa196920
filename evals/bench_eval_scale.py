"""Eval throughput against the number of Ray workers, with the single-process runner as the baseline in the same run.

    python evals/bench_eval_scale.py                     # smoke + the first scan_facts scenarios, smollm2-135m
    python evals/bench_eval_scale.py --scenarios 16 --workers 1 2 4 --out evals/results/bench_eval_scale.json

Configurations, all on the same scenarios with greedy decoding:
1. baseline: this process, the model loaded once in llama.cpp (all cores), scenarios one after another
   (`EvalRunner.run_jobs`), timed after the model is loaded; run again at the end to show drift from
   other load on the machine;
2. `--ray` with W local workers, the LLM behind ONE `python -m llama_cpp.server` (all cores); as a control, the
   single-process runner with 2 threads against that server (concurrency without Ray);
3. `--ray` with W workers, one llama.cpp server per worker (cores shared out: max(1, cores // W) threads each);
4. kill and resume: `scanchat eval run --ray --parallel 2` killed (SIGKILL, whole process group) once half
   of the results are on disk, then `--resume`d; the time lost is (killed + resumed) - an uninterrupted
   run of the same command, and the scenarios lost are those in flight.
Throughput is scenarios per hour over the work itself (after the workers are ready: Ray start-up, the
workers' imports and one unrecorded warm-up scenario per worker are reported separately, as `ready_s`; every
single-process configuration plays the same warm-up before its clock starts). Each configuration's pass/fail per scenario is
compared with the baseline's. The baseline's own CPU seconds per wall second (`cores_busy`) bound what any
configuration can gain on this machine: `speedup_ceiling` = cores / cores_busy. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.config import get_settings  # noqa: E402
from assistant.models.registry import MODEL_SPECS, fetch_model, load_chat_model  # noqa: E402
from assistant.models.server import llama_server  # noqa: E402
from evals.harness.distributed import ray_init_arguments  # noqa: E402
from evals.harness.loading import load_scenarios  # noqa: E402
from evals.harness.runner import EvalRunner, plan_jobs  # noqa: E402

KEY = "bench-key"

SUITES = ROOT / "evals" / "suites"
CORES = os.cpu_count() or 1


def server(gguf: Path, name: str, log: Path, threads: int):
    settings = get_settings().model_copy(update={"llm_threads": threads})
    return llama_server(gguf, name, settings, log, KEY)


def bench_scenarios(count: int):
    """The smoke suite, then scan_facts scenarios, up to `count`."""
    return [*load_scenarios(SUITES / "smoke"), *load_scenarios(SUITES / "scan_facts")][:count]


def statuses(results) -> dict[str, str]:
    return {r.key: r.status for r in results}


def baseline(jobs, model_name: str) -> dict:
    settings = get_settings().model_copy(update={"llm_threads": CORES, "runtime": "llamacpp"})
    model = load_chat_model(settings, name=model_name, runtime="llamacpp")
    runner = EvalRunner(model, settings)
    runner.warm_up(jobs[0][0])  # as each Ray worker does before it counts as ready
    started, cpu = time.perf_counter(), time.process_time()
    results = runner.run_jobs(jobs)
    seconds = time.perf_counter() - started
    # This process's own CPU time (every thread of the in-process llama.cpp model) per wall second: other load on the
    # machine only lowers it, so the ceiling below can only come out too high, never too low.
    cores_busy = (time.process_time() - cpu) / seconds
    return {"seconds": round(seconds, 1), "per_hour": round(3600 * len(jobs) / seconds, 1), "cores_busy": round(cores_busy, 2),
            "statuses": statuses(results)}


def threads_run(jobs, url: str, parallel: int) -> dict:
    """Control: the single-process runner with `parallel` threads against the same server (no Ray)."""
    from assistant.models.openai_backend import OpenAIChatModel

    settings = get_settings().model_copy(update={"runtime": "openai", "openai_api_key": KEY, "openai_base_url": url})
    runner = EvalRunner(OpenAIChatModel(settings, "smollm2-135m"), settings, serialize=False)
    runner.warm_up(jobs[0][0])
    started = time.perf_counter()
    results = runner.run_jobs(jobs, parallel=parallel)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "per_hour": round(3600 * len(jobs) / seconds, 1), "statuses": statuses(results)}


def ray_run(jobs, urls: list[str], workers: int) -> dict:
    from evals.harness.distributed import WorkerConfig, run_on_ray

    settings = get_settings().model_copy(update={"runtime": "openai", "openai_api_key": KEY})
    configs = [
        WorkerConfig(settings=settings.model_copy(update={"openai_base_url": urls[i % len(urls)]}), model="smollm2-135m")
        for i in range(workers)
    ]
    started = time.perf_counter()
    run = run_on_ray(jobs, configs)
    total = time.perf_counter() - started
    work = total - run.ready_seconds
    return {
        "seconds": round(work, 1),
        "ready_s": round(run.ready_seconds, 1),
        "per_hour": round(3600 * len(jobs) / work, 1),
        "statuses": statuses(run.results),
    }


def cli_run(suite: Path, url: str, run_dir: Path, kill_after: int | None = None, resume: bool = False) -> dict:
    """`scanchat eval run --ray --parallel 2` as a user runs it; optionally SIGKILLed after `kill_after` results."""
    command = [sys.executable, "-m", "assistant.cli", "eval", "run"]
    command += ["--resume", str(run_dir)] if resume else [str(suite), "--backend", url, "--out", str(run_dir)]
    command += ["--ray", "--parallel", "2"]
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    recorded_at = None
    while process.poll() is None:
        if kill_after is not None and _recorded(run_dir) >= kill_after:
            recorded_at = time.perf_counter() - started
            os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started
            process.wait()
            time.sleep(3)  # Ray's leftover workers notice their dead driver and exit
            break
        time.sleep(0.1)
    return {"seconds": round(time.perf_counter() - started, 1), "recorded": _recorded(run_dir), "killed_at_s": recorded_at,
            "exit": process.returncode}


def _recorded(run_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in run_dir.glob("results*.jsonl"))


def kill_and_resume(scenarios, url: str, scratch: Path) -> dict:
    suite = scratch / "bench"
    suite.mkdir()
    for scenario in scenarios:  # one folder for the CLI: copies of the scenario files, scans beside them resolved
        source = Path(scenario.file)
        (suite / f"{scenario.suite}-{source.name}").write_text(source.read_text())
    whole = cli_run(suite, url, scratch / "whole")
    killed = cli_run(suite, url, scratch / "killed", kill_after=len(scenarios) // 2)
    resumed = cli_run(suite, url, scratch / "killed", resume=True)
    from evals.harness.store import RunStore

    store = RunStore.open(scratch / "killed")
    lines = _recorded(scratch / "killed")
    return {
        "uninterrupted_s": whole["seconds"],
        "killed_s": killed["seconds"],
        "killed_with_recorded": killed["recorded"],
        "resumed_s": resumed["seconds"],
        "resumed_ran": store.spec.sessions[-1].scenarios if store.spec.sessions else None,
        "time_lost_s": round(killed["seconds"] + resumed["seconds"] - whole["seconds"], 1),
        "in_flight_lost_s": round(killed["seconds"] - (killed["killed_at_s"] or killed["seconds"]), 1),
        "results_lines": lines,
        "complete": len(store.results()) == len(scenarios),
        "same_as_uninterrupted": statuses(store.results()) == statuses(RunStore.open(scratch / "whole").results()),
    }


class Rows(dict):
    """The table's rows, saved to the JSON after each one (a bounded run cut short keeps what it measured)."""

    def __init__(self, out: Path):
        super().__init__()
        self.out = out
        self.results: dict = {"rows": self}

    def __setitem__(self, name: str, row: dict) -> None:
        super().__setitem__(name, row)
        print(f"{name}: {row['seconds']} s, {row['per_hour']} scenarios/hour", file=sys.stderr)
        self.save()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=int, default=8, help="how many scenarios (smoke first, then scan_facts)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(MODEL_SPECS))
    parser.add_argument("--out", type=Path, default=ROOT / "evals" / "results" / "bench_eval_scale.json")
    parser.add_argument("--repeat", type=int, default=1, help="each scenario this many times (same work: greedy decoding)")
    parser.add_argument("--skip-resume", action="store_true", help="no kill-and-resume measurement")
    parser.add_argument("--only-resume", action="store_true", help="only the kill-and-resume measurement")
    args = parser.parse_args()
    import ray

    scenarios = bench_scenarios(args.scenarios)
    jobs = plan_jobs(scenarios, args.repeat)
    gguf = fetch_model(MODEL_SPECS[args.model])
    print(f"{len(jobs)} scenarios, {args.model}, {CORES} cores", file=sys.stderr)
    rows = Rows(args.out)
    results: dict = rows.results
    results.update(scenarios=len(scenarios), repeat=args.repeat, jobs=len(jobs), model=args.model, cores=CORES, started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if args.only_resume:
        with tempfile.TemporaryDirectory(prefix="bench-eval-scale-") as scratch_name:
            with server(gguf, args.model, Path(scratch_name) / "one.log", CORES) as url:
                results["kill_and_resume"] = kill_and_resume(scenarios, url, Path(scratch_name))
        rows.save()
        print(json.dumps(results["kill_and_resume"], indent=1))
        return 0
    rows["baseline (1 process)"] = baseline(jobs, args.model)
    base = rows["baseline (1 process)"]
    ray.init(**ray_init_arguments("local", max(args.workers)))
    with tempfile.TemporaryDirectory(prefix="bench-eval-scale-") as scratch_name:
        scratch = Path(scratch_name)
        with server(gguf, args.model, scratch / "one.log", CORES) as url:
            for workers in args.workers:
                rows[f"ray {workers} worker(s), one server"] = ray_run(jobs, [url], workers)
            rows["control: 1 process, 2 threads, one server (no Ray)"] = threads_run(jobs, url, 2)
            if not args.skip_resume:
                ray.shutdown()  # the CLI runs start their own local cluster
                results["kill_and_resume"] = kill_and_resume(scenarios, url, scratch)
                rows.save()
                ray.init(**ray_init_arguments("local", max(args.workers)))
        for workers in args.workers:
            with ExitStack() as servers:
                threads = max(1, CORES // workers)
                urls = [servers.enter_context(server(gguf, args.model, scratch / f"s{workers}-{i}.log", threads))
                        for i in range(workers)]
                rows[f"ray {workers} worker(s), a server each ({threads} thread(s))"] = ray_run(jobs, urls, workers)
        ray.shutdown()
    rows["baseline again (drift)"] = baseline(jobs, args.model)
    print(f"\n| configuration | work s | ready s | scenarios/hour | x baseline | pass/fail as baseline |\n|---|---|---|---|---|---|")
    for name, row in rows.items():
        row["speedup"] = round(row["per_hour"] / base["per_hour"], 2)
        differing = sorted(k for k in base["statuses"] if row["statuses"].get(k) != base["statuses"][k])
        row["differs_from_baseline"] = differing
        print(f"| {name} | {row['seconds']} | {row.get('ready_s', '-')} | {row['per_hour']} | {row['speedup']} | "
              f"{'identical' if not differing else 'differs: ' + ', '.join(differing)} |")
    results["speedup_ceiling"] = round(CORES / base["cores_busy"], 2)
    print(f"\nthe baseline kept {base['cores_busy']} of {CORES} cores busy, so no configuration can run these scenarios more "
          f"than {results['speedup_ceiling']}x faster on this machine (unless it does less work per scenario)")
    if "kill_and_resume" in results:
        k = results["kill_and_resume"]
        print(f"\nkill and resume (CLI, --ray --parallel 2): uninterrupted {k['uninterrupted_s']} s; killed after "
              f"{k['killed_with_recorded']} results at {k['killed_s']} s, resumed {k['resumed_ran']} in {k['resumed_s']} s; "
              f"time lost {k['time_lost_s']} s (in-flight work thrown away {k['in_flight_lost_s']} s); "
              f"complete {k['complete']}, same pass/fail as uninterrupted {k['same_as_uninterrupted']}")
    rows.save()
    print(f"written {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
