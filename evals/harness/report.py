"""The run report: full JSON trace, a Markdown summary, an HTML page, and the comparison with a previous run.

Every pass rate carries its Wilson 95% interval; a comparison tests the paired outcomes with
McNemar's test (overall and per suite) and each scenario's change over repeats with Fisher's.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, select_autoescape
from pydantic import BaseModel, Field

from evals.harness.metrics import Rate, RunMetrics, compute_metrics
from evals.harness.stats import McNemar, fisher_p_value, mcnemar
from evals.harness.trace import ScenarioResult

# Headline figures compared between runs: (field, higher is better).
_COMPARED_METRICS: tuple[tuple[str, bool], ...] = (
    ("tool_precision", True),
    ("tool_recall", True),
    ("argument_accuracy", True),
    ("assertion_pass_rate", True),
    ("grounded_answer_rate", True),
    ("latency_p50_s", False),
    ("latency_p95_s", False),
)


class RunInfo(BaseModel):
    suites: list[str]
    backend: str
    runtime: str
    judge: str | None = None
    repeat: int = 1
    parallel: int = 1
    temperature: float = 0.0  # 0: greedy decoding
    seed: int = 0
    started: str
    seconds: float = 0.0
    git_commit: str | None = None
    pending: int = Field(0, description="scenario runs not recorded yet (a run in progress, killed or sharded)")


class Change(BaseModel):
    name: str
    before: float | None
    after: float | None
    regression: bool
    test: McNemar | None = Field(None, description="paired test of the pass/fail outcomes (pass rates only)")


class ScenarioChange(BaseModel):
    """One scenario that passes less (or more) often than before, with Fisher's p over its repeats."""

    key: str
    passed_before: int
    runs_before: int
    passed_now: int
    runs_now: int
    p_value: float

    def __str__(self) -> str:
        return f"{self.key} ({self.passed_before}/{self.runs_before} -> {self.passed_now}/{self.runs_now}, p={self.p_value:.2g})"


class Comparison(BaseModel):
    previous: str
    previous_backend: str
    pass_rate: Change
    suites: list[Change]
    metrics: list[Change]
    regressions: list[str] = Field(description="scenarios that pass less often than before")
    fixed: list[str]
    new: list[str]
    regression_details: list[ScenarioChange] = Field(default_factory=list)
    fixed_details: list[ScenarioChange] = Field(default_factory=list)


class RunReport(BaseModel):
    info: RunInfo
    metrics: RunMetrics
    results: list[ScenarioResult]
    comparison: Comparison | None = None


def build_report(info: RunInfo, results: list[ScenarioResult], previous: RunReport | None = None, previous_path: str = "") -> RunReport:
    report = RunReport(info=info, metrics=compute_metrics(results), results=results)
    if previous is not None:
        report.comparison = compare(report, previous, previous_path)
    return report


def load_report(path: str | Path) -> RunReport:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; give the report.json of a previous run")
    try:
        return RunReport.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not a ScanChat eval report: {str(exc).splitlines()[0]}") from exc


def _scenario_outcomes(results: list[ScenarioResult]) -> dict[str, dict[int, bool]]:
    """Scored outcomes per scenario key and repeat index."""
    runs: dict[str, dict[int, bool]] = {}
    for result in results:
        if result.status != "skipped":
            runs.setdefault(result.key, {})[result.repeat] = result.status == "passed"
    return runs


def _paired_test(now: dict[str, dict[int, bool]], before: dict[str, dict[int, bool]], keys: set[str]) -> McNemar:
    """McNemar over (scenario, repeat) pairs scored in both runs."""
    return mcnemar(
        (before[key][repeat], now[key][repeat]) for key in sorted(keys) for repeat in sorted(now[key].keys() & before[key].keys())
    )


def _change(name: str, before: float | None, after: float | None, higher_is_better: bool = True, test: McNemar | None = None) -> Change:
    worse = before is not None and after is not None and (after < before if higher_is_better else after > before * 1.25)
    return Change(name=name, before=before, after=after, regression=worse, test=test)


def _scenario_change(key: str, before: dict[int, bool], now: dict[int, bool]) -> ScenarioChange:
    passed_before, passed_now = sum(before.values()), sum(now.values())
    return ScenarioChange(
        key=key,
        passed_before=passed_before,
        runs_before=len(before),
        passed_now=passed_now,
        runs_now=len(now),
        p_value=fisher_p_value(passed_before, len(before), passed_now, len(now)),
    )


def compare(current: RunReport, previous: RunReport, previous_path: str) -> Comparison:
    """Per scenario, suite and metric: what got worse (latency: more than 25 % slower), with paired tests."""
    now, before = _scenario_outcomes(current.results), _scenario_outcomes(previous.results)
    shared = now.keys() & before.keys()
    suite_of = {r.key: r.suite for r in [*current.results, *previous.results]}
    suites = sorted(current.metrics.pass_rate_by_suite.keys() | previous.metrics.pass_rate_by_suite.keys())
    share = {key: sum(v.values()) / len(v) for key, v in now.items()}
    share_before = {key: sum(v.values()) / len(v) for key, v in before.items()}
    regressed = sorted(key for key in shared if share[key] < share_before[key])
    fixed = sorted(key for key in shared if share[key] > share_before[key])
    return Comparison(
        previous=previous_path,
        previous_backend=previous.info.backend,
        pass_rate=_change(
            "pass rate", previous.metrics.pass_rate.mean, current.metrics.pass_rate.mean, test=_paired_test(now, before, shared)
        ),
        suites=[
            _change(
                suite,
                previous.metrics.pass_rate_by_suite.get(suite, Rate(mean=None)).mean,
                current.metrics.pass_rate_by_suite.get(suite, Rate(mean=None)).mean,
                test=_paired_test(now, before, {key for key in shared if suite_of[key] == suite}),
            )
            for suite in suites
        ],
        metrics=[
            _change(name, getattr(previous.metrics, name), getattr(current.metrics, name), higher)
            for name, higher in _COMPARED_METRICS
        ],
        regressions=regressed,
        fixed=fixed,
        new=sorted(now.keys() - before.keys()),
        regression_details=[_scenario_change(key, before[key], now[key]) for key in regressed],
        fixed_details=[_scenario_change(key, before[key], now[key]) for key in fixed],
    )


# --- writers -------------------------------------------------------------------------------


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0%}" if percent else f"{value:.2f}"


def _metric_rows(m: RunMetrics) -> list[tuple[str, str]]:
    return [
        ("Scenarios", f"{m.scenarios} ({m.passed} passed, {m.failed} failed, {m.errors} errors, {m.skipped} skipped)"),
        ("Pass rate", str(m.pass_rate)),
        ("Tool selection precision / recall", f"{_fmt(m.tool_precision)} / {_fmt(m.tool_recall)}"),
        ("Argument accuracy", _fmt(m.argument_accuracy)),
        ("Assertion pass rate", _fmt(m.assertion_pass_rate)),
        ("Grounded answers (model's own numbers traced to tools)", _fmt(m.grounded_answer_rate)),
        ("Answers replaced by tool summaries", _fmt(m.replaced_answer_rate)),
        ("Latency per turn p50 / p95 (s)", f"{_fmt(m.latency_p50_s, False)} / {_fmt(m.latency_p95_s, False)} over {m.turns} turns"),
        ("First token p50 (s)", _fmt(m.first_token_p50_s, False)),
        ("Tokens (prompt / completion)", f"{m.prompt_tokens:,} / {m.completion_tokens:,}"),
        ("Prompt tokens reused from the runtime's cache", f"{m.cached_prompt_tokens:,}"),
        ("Answers a vision model wrote looking at the scan", f"{m.answers_looking_at_volume} of {m.turns} turns"),
        ("Time by stage (s, summed over turns)", ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in m.stage_seconds.items()) or "n/a"),
    ]


def to_markdown(report: RunReport) -> str:
    info, m = report.info, report.metrics
    lines = [
        f"# ScanChat eval: {', '.join(info.suites)}",
        "",
        f"Backend `{info.backend}` ({info.runtime}), judge `{info.judge or 'none'}`, repeat {info.repeat}, "
        f"parallel {info.parallel}, temperature {info.temperature} (seed {info.seed}), started {info.started}, {info.seconds:.0f} s, commit `{info.git_commit or '?'}`.",
        *(["", f"**Incomplete:** {info.pending} scenario runs not recorded yet (`--resume` the run folder)."] if info.pending else []),
        "",
        "| Metric | Value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in _metric_rows(m)],
        "",
        "| Suite | Pass rate |",
        "|---|---|",
        *[f"| {suite} | {rate} |" for suite, rate in m.pass_rate_by_suite.items()],
        "",
        "| Tag | Pass rate |",
        "|---|---|",
        *[f"| {tag} | {rate} |" for tag, rate in m.pass_rate_by_tag.items()],
    ]
    if report.comparison:
        c = report.comparison
        lines += [
            "",
            f"## Compared with `{c.previous}` ({c.previous_backend})",
            "",
            "| | Before | After | Paired test |",
            "|---|---|---|---|",
        ]
        for change in [c.pass_rate, *c.suites, *c.metrics]:
            percent = not change.name.startswith("latency")
            flag = " **REGRESSION**" if change.regression else ""
            test = str(change.test) if change.test else ""
            lines.append(f"| {change.name}{flag} | {_fmt(change.before, percent)} | {_fmt(change.after, percent)} | {test} |")
        lines += ["", "**Regressions:** " + (", ".join(f"`{k}`" for k in c.regressions) or "none")]
        lines += [f"- {change}" for change in c.regression_details]
        lines += ["", "Fixed: " + (", ".join(f"`{k}`" for k in c.fixed) or "none")]
    flaky = [stat for stat in m.scenario_stats if stat.flakiness > 0]
    if info.repeat > 1:
        lines += ["", "## Flaky scenarios", "", "| Scenario | Passed | Flakiness |", "|---|---|---|"]
        lines += [f"| {stat.key} | {stat} | {stat.flakiness:.0%} |" for stat in flaky] or ["| none | | |"]
    lines += ["", "## Scenarios", "", "| Scenario | Repeat | Status | s | Why |", "|---|---|---|---|---|"]
    for r in report.results:
        reason = r.reason.replace("|", "\\|").replace("\n", " ")[:300]
        lines.append(f"| {r.key} | {r.repeat} | {r.status} | {r.seconds:.1f} | {reason} |")
    return "\n".join(lines) + "\n"


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ScanChat eval: {{ info.suites|join(', ') }}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
.passed{background:#e8f7e8}.failed{background:#fde8e8}.error{background:#f9d0d0}.skipped{color:#888}
.regression{background:#f8b4b4;font-weight:bold}pre{white-space:pre-wrap;margin:0;font-size:12px}
details{margin:.3em 0}summary{cursor:pointer}
</style></head><body>
<h1>ScanChat eval: {{ info.suites|join(', ') }}</h1>
<p>Backend <code>{{ info.backend }}</code> ({{ info.runtime }}), judge <code>{{ info.judge or 'none' }}</code>,
repeat {{ info.repeat }}, parallel {{ info.parallel }}, temperature {{ info.temperature }} (seed {{ info.seed }}), started {{ info.started }}, {{ '%.0f'|format(info.seconds) }} s,
commit <code>{{ info.git_commit or '?' }}</code>.</p>
{% if info.pending %}<p class="regression">Incomplete: {{ info.pending }} scenario runs not recorded yet.</p>{% endif %}
<table>{% for name, value in rows %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
<table><tr><th>Suite</th><th>Pass rate</th></tr>
{% for suite, rate in metrics.pass_rate_by_suite.items() %}<tr><td>{{ suite }}</td><td>{{ rate }}</td></tr>{% endfor %}</table>
<table><tr><th>Tag</th><th>Pass rate</th></tr>
{% for tag, rate in metrics.pass_rate_by_tag.items() %}<tr><td>{{ tag }}</td><td>{{ rate }}</td></tr>{% endfor %}</table>
{% if comparison %}
<h2>Compared with {{ comparison.previous }} ({{ comparison.previous_backend }})</h2>
<table><tr><th></th><th>Before</th><th>After</th><th>Paired test</th></tr>
{% for c in changes %}<tr class="{{ 'regression' if c.regression }}"><td>{{ c.name }}</td><td>{{ fmt(c.before, not c.name.startswith('latency')) }}</td><td>{{ fmt(c.after, not c.name.startswith('latency')) }}</td><td>{{ c.test or '' }}</td></tr>{% endfor %}
</table>
<p class="{{ 'regression' if comparison.regressions }}">Regressions: {{ comparison.regressions|join(', ') or 'none' }}</p>
<ul>{% for d in comparison.regression_details %}<li>{{ d }}</li>{% endfor %}</ul>
<p>Fixed: {{ comparison.fixed|join(', ') or 'none' }}</p>
{% endif %}
{% if info.repeat > 1 %}<h2>Flaky scenarios</h2>
<table><tr><th>Scenario</th><th>Passed</th><th>Flakiness</th></tr>
{% for s in metrics.scenario_stats if s.flakiness > 0 %}<tr><td>{{ s.key }}</td><td>{{ s }}</td><td>{{ '%.0f%%'|format(100 * s.flakiness) }}</td></tr>{% else %}<tr><td colspan="3">none</td></tr>{% endfor %}
</table>{% endif %}
<h2>Scenarios</h2>
{% for r in results %}
<details class="{{ r.status }}{{ ' regression' if r.key in regressions }}"><summary><b>{{ r.key }}</b> #{{ r.repeat }}: {{ r.status }}
({{ '%.1f'|format(r.seconds) }} s){% if r.reason %}: {{ r.reason }}{% endif %}</summary>
<p>{{ r.file }} · tags {{ r.tags|join(', ') }}</p>
{% if r.traceback %}<pre>{{ r.traceback }}</pre>{% endif %}
{% for t in r.turns %}
<table>
<tr><th>User</th><td>{% if t.upload %}[upload {{ t.upload }}] {% endif %}{{ t.user }}{% if t.user_chars > t.user|length %} ({{ t.user_chars }} chars){% endif %}</td></tr>
{% for call in t.tool_calls %}<tr><th>{{ call.name }}</th><td><code>{{ call.arguments|tojson }}</code> ({{ call.seconds }} s)<pre>{{ call.summary or ('ERROR: ' ~ call.error) }}</pre></td></tr>{% endfor %}
<tr><th>Answer</th><td><pre>{{ t.answer or t.error }}</pre>{% if t.answer_replaced %}<i>model wording replaced (ungrounded: {{ t.ungrounded|join(', ') }})</i>{% endif %}</td></tr>
<tr><th>Timing</th><td>{{ t.seconds }} s, first token {{ t.first_token_seconds }} s, {{ t.prompt_tokens }} + {{ t.completion_tokens }} tokens in {{ t.model_calls }} calls</td></tr>
{% for c in t.checks %}<tr class="{{ 'passed' if c.passed else ('skipped' if c.passed is none else 'failed') }}"><th>{{ c.kind }}</th><td>{{ c.description }}{% if c.detail %} — {{ c.detail }}{% endif %}</td></tr>{% endfor %}
</table>
{% endfor %}
</details>
{% endfor %}
</body></html>
"""


def to_html(report: RunReport) -> str:
    environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    comparison = report.comparison
    changes = [comparison.pass_rate, *comparison.suites, *comparison.metrics] if comparison else []
    return environment.from_string(_HTML).render(
        info=report.info,
        metrics=report.metrics,
        rows=_metric_rows(report.metrics),
        comparison=comparison,
        changes=changes,
        regressions=set(comparison.regressions) if comparison else set(),
        results=report.results,
        fmt=_fmt,
    )


def write_reports(report: RunReport, out_dir: Path) -> dict[str, Path]:
    """report.json (full trace, readable back by --compare), report.md and report.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["json"].write_text(report.model_dump_json(indent=1), encoding="utf-8")
    paths["markdown"].write_text(to_markdown(report), encoding="utf-8")
    paths["html"].write_text(to_html(report), encoding="utf-8")
    return paths
