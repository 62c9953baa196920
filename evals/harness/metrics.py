"""The run's figures: pass rates (mean ± std over repeats, Wilson 95% interval), per-scenario flakiness,
tool selection, arguments, grounding, latency."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from pydantic import BaseModel

from assistant.grounding import numbers_in
from evals.harness.stats import flakiness, wilson_interval
from evals.harness.trace import ScenarioResult, TurnRecord


class Rate(BaseModel):
    """A pass rate: mean and population std of the per-repeat rates, n scenarios per repeat, and the
    Wilson 95% interval of all scored runs pooled (`passed` of `trials`)."""

    mean: float | None
    std: float = 0.0
    n: int = 0
    passed: int = 0
    trials: int = 0
    low: float | None = None
    high: float | None = None

    def __str__(self) -> str:
        if self.mean is None:
            return "n/a"
        spread = f" ± {self.std:.0%}" if self.std else ""
        return f"{self.mean:.0%}{spread} [95% CI {self.low:.0%}–{self.high:.0%}] ({self.passed}/{self.trials})"


class ScenarioStats(BaseModel):
    """One scenario over its repeats: how often it passed, with an interval, and how flaky it is."""

    key: str
    runs: int
    passed: int
    low: float
    high: float
    flakiness: float  # share of repeats disagreeing with the majority outcome

    def __str__(self) -> str:
        return f"{self.passed}/{self.runs} [95% CI {self.low:.0%}–{self.high:.0%}]"


class RunMetrics(BaseModel):
    scenarios: int
    passed: int
    failed: int
    errors: int
    skipped: int
    pass_rate: Rate
    pass_rate_by_suite: dict[str, Rate]
    pass_rate_by_tag: dict[str, Rate]
    scenario_stats: list[ScenarioStats] = []
    tool_precision: float | None
    tool_recall: float | None
    argument_accuracy: float | None
    assertion_pass_rate: float | None
    grounded_answer_rate: float | None  # answers with numbers whose model wording traced to sources
    replaced_answer_rate: float | None  # answers the agent replaced with the tools' own summaries
    turns: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    first_token_p50_s: float | None
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    answers_looking_at_volume: int = 0  # turns a vision model answered looking at the scan (the rest: tools' fields, text)
    stage_seconds: dict[str, float] = {}  # summed over the run's turns, by stage (assistant.agent.STAGES)


def pass_rate(results: Sequence[ScenarioResult]) -> Rate:
    """Mean ± std over repeats of the share of scored (not skipped) scenarios that passed, with the
    Wilson interval of every scored run pooled (repeats of one scenario counted as separate trials)."""
    by_repeat: dict[int, list[bool]] = defaultdict(list)
    for result in results:
        if result.status != "skipped":
            by_repeat[result.repeat].append(result.status == "passed")
    rates = [float(np.mean(v)) for v in by_repeat.values() if v]
    if not rates:
        return Rate(mean=None)
    passed, trials = sum(sum(v) for v in by_repeat.values()), sum(len(v) for v in by_repeat.values())
    low, high = wilson_interval(passed, trials)
    return Rate(
        mean=float(np.mean(rates)),
        std=float(np.std(rates)),
        n=len(next(iter(by_repeat.values()))),
        passed=passed,
        trials=trials,
        low=low,
        high=high,
    )


def scenario_stats(results: Sequence[ScenarioResult]) -> list[ScenarioStats]:
    """Per scored scenario, in first-seen order: pass count over repeats, interval, flakiness."""
    outcomes: dict[str, list[bool]] = {}
    for result in results:
        if result.status != "skipped":
            outcomes.setdefault(result.key, []).append(result.status == "passed")
    stats = []
    for key, runs in outcomes.items():
        low, high = wilson_interval(sum(runs), len(runs))
        stats.append(ScenarioStats(key=key, runs=len(runs), passed=sum(runs), low=low, high=high, flakiness=flakiness(runs)))
    return stats


def _grouped(results: Sequence[ScenarioResult], keys: Callable[[ScenarioResult], Iterable[str]]) -> dict[str, Rate]:
    groups: dict[str, list[ScenarioResult]] = defaultdict(list)
    for result in results:
        for key in keys(result):
            groups[key].append(result)
    return {key: pass_rate(groups[key]) for key in sorted(groups)}


def _share(passed: int, total: int) -> float | None:
    return passed / total if total else None


def _check_share(turns: Sequence[TurnRecord], kinds: set[str]) -> float | None:
    scored = [c.passed for t in turns for c in t.checks if c.kind in kinds and c.passed is not None]
    return _share(sum(scored), len(scored))


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def compute_metrics(results: Sequence[ScenarioResult]) -> RunMetrics:
    turns = [t for r in results if r.status != "skipped" for t in r.turns]
    # Tool selection counts distinct tools per turn, over turns that say which tools to call.
    true_pos = false_pos = false_neg = 0
    for turn in turns:
        if turn.expected_tools is None or turn.error:
            continue
        expected, called = set(turn.expected_tools), turn.called_tools
        true_pos += len(expected & called)
        false_pos += len(called - expected)
        false_neg += len(expected - called)
    answered = [t for t in turns if not t.error and t.draft_grounded is not None]
    with_numbers = [t for t in answered if t.ungrounded or numbers_in(t.answer)]
    latencies = [t.seconds for t in turns if not t.error]
    first_tokens = [t.first_token_seconds for t in turns if t.first_token_seconds is not None]
    return RunMetrics(
        scenarios=len(results),
        passed=sum(r.status == "passed" for r in results),
        failed=sum(r.status == "failed" for r in results),
        errors=sum(r.status == "error" for r in results),
        skipped=sum(r.status == "skipped" for r in results),
        pass_rate=pass_rate(results),
        pass_rate_by_suite=_grouped(results, lambda r: [r.suite]),
        pass_rate_by_tag=_grouped(results, lambda r: r.tags),
        scenario_stats=scenario_stats(results),
        tool_precision=_share(true_pos, true_pos + false_pos),
        tool_recall=_share(true_pos, true_pos + false_neg),
        argument_accuracy=_check_share(turns, {"tool_args"}),
        assertion_pass_rate=_check_share(turns, {"answer", "error"}),
        grounded_answer_rate=_share(sum(bool(t.draft_grounded) for t in with_numbers), len(with_numbers)),
        replaced_answer_rate=_share(sum(t.answer_replaced for t in answered), len(answered)),
        turns=len(turns),
        latency_p50_s=_percentile(latencies, 50),
        latency_p95_s=_percentile(latencies, 95),
        first_token_p50_s=_percentile(first_tokens, 50),
        prompt_tokens=sum(t.prompt_tokens for t in turns),
        completion_tokens=sum(t.completion_tokens for t in turns),
        cached_prompt_tokens=sum(t.cached_prompt_tokens for t in turns),
        answers_looking_at_volume=sum(t.looked_at_volume for t in turns),
        stage_seconds=stage_totals(turns),
    )


def stage_totals(turns: Sequence[TurnRecord]) -> dict[str, float]:
    """Seconds by stage summed over `turns`, largest first."""
    totals: dict[str, float] = {}
    for turn in turns:
        for stage, seconds in turn.stages.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return {stage: round(seconds, 2) for stage, seconds in sorted(totals.items(), key=lambda kv: -kv[1])}
