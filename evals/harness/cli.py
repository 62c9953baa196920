"""`scanchat eval run SUITE_DIR ...` and `scanchat eval validate PATH`."""

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
    run.add_argument("path", help="a suite folder (evals/suites/smoke), a folder of suites, or one scenario file")
    run.add_argument("--backend", help="registry model name, local model path, or an OpenAI-compatible URL (default: settings)")
    run.add_argument("--repeat", type=int, default=1, help="run every scenario N times (mean ± std of pass rates, flakiness)")
    run.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature instead of greedy decoding (with --repeat: flakiness)")
    run.add_argument("--seed", type=int, default=0, help="sampling seed; each scenario and repeat derives its own from it")
    run.add_argument("--parallel", type=int, default=1, help="scenarios at once (a local model is still called one at a time)")
    run.add_argument("--out", type=Path, help="report folder (default: evals/results/<timestamp>-<suite>)")
    run.add_argument("--compare", type=Path, metavar="PREVIOUS.json", help="a previous run's report.json; regressions are highlighted")
    run.add_argument("--judge", help="model that scores the scenarios' rubric items (skipped when not given)")
    run.add_argument("--tag", action="append", default=[], help="only scenarios with this tag (repeatable)")
    run.add_argument("--min-pass-rate", type=float, help="exit 1 when the mean pass rate is below this (0-1), for CI")
    run.set_defaults(func=_run)

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


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from assistant.models.registry import load_chat_model
    from evals.harness.loading import load_scenarios
    from evals.harness.report import RunInfo, build_report, load_report, to_markdown, write_reports
    from evals.harness.runner import EvalRunner

    if args.repeat < 1 or args.parallel < 1:
        raise ValueError("--repeat and --parallel must be at least 1")
    scenarios = load_scenarios(args.path)
    if args.tag:
        scenarios = [s for s in scenarios if set(args.tag) & set(s.tags)]
        if not scenarios:
            raise ValueError(f"no scenario under {args.path} has the tag(s) {', '.join(args.tag)}")
    previous = load_report(args.compare) if args.compare else None
    settings, name = _backend_settings(args.backend)
    model = load_chat_model(settings, name=name)
    judge = load_chat_model(settings, name=args.judge) if args.judge else None
    runner = EvalRunner(model, settings, serialize=model.runtime != "openai", judge=judge, temperature=args.temperature, seed=args.seed)

    suite_label = Path(args.path).stem if Path(args.path).is_file() else Path(args.path).name
    started = datetime.now()
    clock = time.perf_counter()
    with tqdm(total=len(scenarios) * args.repeat, unit="scenario", desc=f"eval {suite_label}") as bar:

        def progress(_done: int, _total: int, result) -> None:
            bar.set_postfix_str(f"{result.key}: {result.status}")
            bar.update(1)

        results = runner.run(scenarios, repeat=args.repeat, parallel=args.parallel, progress=progress)
    info = RunInfo(
        suites=sorted({s.suite for s in scenarios}),
        backend=args.backend or model.name,
        runtime=model.runtime,
        judge=args.judge,
        repeat=args.repeat,
        parallel=args.parallel,
        temperature=args.temperature,
        seed=args.seed,
        started=started.isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - clock, 1),
        git_commit=_git_commit(),
    )
    report = build_report(info, results, previous, str(args.compare or ""))
    out = args.out or RESULTS_DIR / f"{started:%Y%m%d-%H%M%S}-{suite_label}"
    paths = write_reports(report, out)
    summary = to_markdown(report).split("\n## Scenarios", 1)[0]
    print(summary)
    print(f"reports: {paths['json']}, {paths['markdown'].name}, {paths['html'].name}", file=sys.stderr)
    rate = report.metrics.pass_rate.mean
    if args.min_pass_rate is not None and (rate is None or rate < args.min_pass_rate):
        print(f"pass rate {rate if rate is not None else 'n/a'} is below --min-pass-rate {args.min_pass_rate}", file=sys.stderr)
        return 1
    return 0
