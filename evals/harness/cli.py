"""`scanchat eval run SUITE_DIR ...`, `scanchat eval report RUN_DIR` and `scanchat eval validate PATH`."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    evals = subparsers.add_parser("eval", help="run or validate scripted dialogue evals")
    actions = evals.add_subparsers(dest="eval_command", required=True, metavar="ACTION")

    run = actions.add_parser("run", help="run scenario suites against a model and write JSON/Markdown/HTML reports")
    run.add_argument("path", nargs="?", help="a suite folder (evals/suites/smoke), a folder of suites, or one scenario file")
    run.add_argument("--backend", help="registry model name, local model path, or OpenAI-compatible URL(s), comma-separated for one server per Ray worker (default: settings)")
    run.add_argument("--repeat", type=int, default=1, help="run every scenario N times (mean ± std of pass rates, flakiness)")
    run.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature instead of greedy decoding (with --repeat: flakiness)")
    run.add_argument("--seed", type=int, default=0, help="sampling seed; each scenario and repeat derives its own from it")
    run.add_argument("--parallel", type=int, default=1, help="scenarios at once; with --ray the number of workers")
    run.add_argument("--out", type=Path, help="run folder (default: evals/results/<timestamp>-<suite>)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed or sharded run: skip the scenarios it has done")
    run.add_argument("--shard", metavar="K/N", help="run only every N-th scenario starting at the K-th (job arrays)")
    run.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS",
        help="run scenarios as Ray tasks, one model client per worker (a local Ray cluster unless ADDRESS is given)",
    )  # fmt: skip
    run.add_argument("--compare", type=Path, metavar="PREVIOUS", help="a previous run's folder or report.json; regressions are tested and listed")
    run.add_argument("--judge", help="model that scores the scenarios' rubric items (skipped when not given)")
    run.add_argument("--tag", action="append", default=[], help="only scenarios with this tag (repeatable)")
    run.add_argument("--split", choices=["dev", "test"], help="only scenarios of this split (tune on dev, report test once)")
    run.add_argument("--min-pass-rate", type=float, help="exit 1 when the mean pass rate is below this (0-1), for CI")
    run.set_defaults(func=_run)

    report = actions.add_parser("report", help="build the JSON/Markdown/HTML report of a run folder from its results so far")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--compare", type=Path, metavar="PREVIOUS", help="a previous run's folder or report.json")
    report.add_argument("--min-pass-rate", type=float, help="exit 1 when the mean pass rate is below this (0-1)")
    report.set_defaults(func=_report)

    validate = actions.add_parser("validate", help="check scenario files and report each problem with file and line")
    validate.add_argument("path")
    validate.set_defaults(func=_validate)


def _validate(args: argparse.Namespace) -> int:
    from evals.harness.loading import load_scenarios, scenario_files
    from evals.harness.runner import registered_tools

    scenarios = load_scenarios(args.path)
    files = scenario_files(args.path)
    available = registered_tools()
    for scenario in scenarios:
        missing = scenario.mentioned_tools - available
        if missing:
            print(f"note: {scenario.file} line {scenario.line}: {scenario.name} needs unregistered tools {sorted(missing)}; it will be skipped")
    suites = sorted({s.suite for s in scenarios})
    print(f"{len(scenarios)} scenarios in {len(files)} files OK (suites: {', '.join(suites)})")
    return 0


def _backend_settings(backend: str | None):
    from assistant.config import get_settings

    settings = get_settings()
    if backend and backend.startswith(("http://", "https://")):
        return settings.model_copy(update={"openai_base_url": backend, "runtime": "openai"}), None
    return settings, backend


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=RESULTS_DIR.parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _selected_scenarios(path: str, tags: list[str], split: str | None = None):
    from evals.harness.loading import load_scenarios

    scenarios = load_scenarios(path)
    if tags:
        scenarios = [s for s in scenarios if set(tags) & set(s.tags)]
        if not scenarios:
            raise ValueError(f"no scenario under {path} has the tag(s) {', '.join(tags)}")
    if split:
        scenarios = [s for s in scenarios if s.split == split]
        if not scenarios:
            raise ValueError(f"no scenario under {path} is in the {split} split")
    return scenarios


def _open_or_create_store(args: argparse.Namespace):
    """The run folder: an existing one to resume (its recorded options win), or a new one."""
    from evals.harness.store import RunSpec, RunStore

    if args.resume:
        store = RunStore.open(args.resume)
        if args.path and Path(args.path).resolve() != Path(store.spec.path).resolve():
            raise ValueError(f"{args.resume} ran {store.spec.path}, not {args.path}; resume it without a path or start a new run")
        defaults = {"backend": None, "judge": None, "repeat": 1, "temperature": 0.0, "seed": 0, "tag": [], "split": None}
        recorded = store.spec.model_dump() | {"tag": store.spec.tags}
        clashes = [n for n, d in defaults.items() if getattr(args, n) != d and getattr(args, n) != recorded[n]]
        if clashes:
            raise ValueError(f"{args.resume} was started with other {', '.join('--' + n for n in clashes)}; a resumed run keeps its options")
        return store
    if not args.path:
        raise ValueError("give the suites to run (e.g. evals/suites/smoke) or --resume RUN_DIR")
    _selected_scenarios(args.path, args.tag, args.split)  # bad suites, tags or splits fail before a run folder exists
    started = datetime.now()
    spec = RunSpec(
        path=str(Path(args.path).resolve()),
        tags=args.tag,
        split=args.split,
        backend=args.backend,
        judge=args.judge,
        repeat=args.repeat,
        temperature=args.temperature,
        seed=args.seed,
        started=started.isoformat(timespec="seconds"),
        git_commit=_git_commit(),
    )
    suite_label = Path(args.path).stem if Path(args.path).is_file() else Path(args.path).name
    return RunStore.create(args.out or RESULTS_DIR / f"{started:%Y%m%d-%H%M%S}-{suite_label}", spec)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from evals.harness.runner import plan_jobs
    from evals.harness.store import Session, Shard

    if args.repeat < 1 or args.parallel < 1:
        raise ValueError("--repeat and --parallel must be at least 1")
    shard = Shard.parse(args.shard) if args.shard else None
    if args.compare:
        _load_previous(args.compare)  # a wrong path fails now, not after the run
    store = _open_or_create_store(args)
    spec = store.spec
    scenarios = _selected_scenarios(spec.path, spec.tags, spec.split)
    done = store.done()
    jobs = plan_jobs(scenarios, spec.repeat, shard, done)
    if done:
        print(f"resuming {store.folder}: {len(done)} scenario runs done, {len(jobs)} to run", file=sys.stderr)
    started = datetime.now()
    clock = time.perf_counter()
    with tqdm(total=len(jobs), unit="scenario", desc=f"eval {Path(spec.path).name}" + (f" shard {shard}" if shard else "")) as bar:

        def progress(_done: int, _total: int, result) -> None:
            store.append(result, shard)  # on disk before anything else happens
            bar.set_postfix_str(f"{result.key}: {result.status}")
            bar.update(1)

        runtime = _run_jobs(args, spec, jobs, progress)
    store.add_session(
        Session(
            started=started.isoformat(timespec="seconds"),
            seconds=round(time.perf_counter() - clock, 1),
            scenarios=len(jobs),
            runtime=runtime,
            parallel=args.parallel,
            ray=args.ray,
            shard=str(shard) if shard else None,
        )
    )
    return _write_report(store, args.compare, args.min_pass_rate)


def _run_jobs(args: argparse.Namespace, spec, jobs, progress) -> str:
    """Play the jobs in this process (threads) or on Ray workers; returns the model runtime."""
    from assistant.models.registry import load_chat_model
    from evals.harness.runner import EvalRunner

    servers = [b for b in (spec.backend or "").split(",") if b.startswith(("http://", "https://"))]
    settings, name = _backend_settings(servers[0] if servers else spec.backend)
    if args.ray is not None:
        from evals.harness.distributed import WorkerConfig, gpu_share, run_on_ray, worker_settings

        shared = worker_settings(settings, args.parallel)
        configs = [
            WorkerConfig(
                # several server URLs: worker i talks to server i (one server per worker)
                settings=shared.model_copy(update={"openai_base_url": servers[i % len(servers)]}) if servers else shared,
                model=name,
                judge=spec.judge,
                temperature=spec.temperature,
                seed=spec.seed,
                gpus=gpu_share(settings, args.parallel),
            )
            for i in range(args.parallel)
        ]
        return run_on_ray(jobs, configs, args.ray, progress).runtime
    if len(servers) > 1:
        raise ValueError("several server URLs (one per worker) need --ray")
    if not jobs:
        return "none"
    model = load_chat_model(settings, name=name)
    judge = load_chat_model(settings, name=spec.judge) if spec.judge else None
    runner = EvalRunner(model, settings, serialize=model.runtime != "openai", judge=judge, temperature=spec.temperature, seed=spec.seed)
    runner.run_jobs(jobs, parallel=args.parallel, progress=progress)
    return model.runtime


def _load_previous(path: Path):
    """A previous run's report: its report.json, or rebuilt from a run folder's results."""
    from evals.harness.report import load_report
    from evals.harness.store import RUN_FILE, RunStore

    if path.is_dir() and (path / RUN_FILE).is_file():
        return build_run_report(RunStore.open(path))
    return load_report(path / "report.json" if path.is_dir() else path)


def build_run_report(store, previous_path: Path | None = None):
    """The report of a run folder from the results recorded so far (a run in progress included)."""
    from evals.harness.report import RunInfo, build_report
    from evals.harness.runner import plan_jobs

    spec = store.spec
    results = store.results()
    try:
        pending = len(plan_jobs(_selected_scenarios(spec.path, spec.tags, spec.split), spec.repeat, done={(r.key, r.repeat) for r in results}))
    except (FileNotFoundError, ValueError):  # suites moved since: report what was recorded
        pending = 0
    last = spec.sessions[-1] if spec.sessions else None
    info = RunInfo(
        suites=sorted({r.suite for r in results}) or [Path(spec.path).name],
        backend=spec.backend or "default",
        runtime=last.runtime if last else "none",
        judge=spec.judge,
        repeat=spec.repeat,
        parallel=last.parallel if last else 1,
        temperature=spec.temperature,
        seed=spec.seed,
        started=spec.started,
        seconds=round(sum(s.seconds for s in spec.sessions), 1),
        git_commit=spec.git_commit,
        pending=pending,
    )
    previous = _load_previous(previous_path) if previous_path else None
    return build_report(info, results, previous, str(previous_path or ""))


def _write_report(store, compare: Path | None, min_pass_rate: float | None) -> int:
    from evals.harness.report import to_markdown, write_reports

    report = build_run_report(store, compare)
    paths = write_reports(report, store.folder)
    print(to_markdown(report).split("\n## Scenarios", 1)[0])
    print(f"reports: {paths['json']}, {paths['markdown'].name}, {paths['html'].name}", file=sys.stderr)
    rate = report.metrics.pass_rate.mean
    if min_pass_rate is not None and (rate is None or rate < min_pass_rate):
        print(f"pass rate {rate if rate is not None else 'n/a'} is below --min-pass-rate {min_pass_rate}", file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from evals.harness.store import RunStore

    return _write_report(RunStore.open(args.run_dir), args.compare, args.min_pass_rate)
