"""The run report: full JSON trace, a Markdown summary, an HTML page, and the comparison with a previous run."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, select_autoescape
from pydantic import BaseModel, Field

from evals.harness.metrics import Rate, RunMetrics, compute_metrics
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
    started: str
    seconds: float = 0.0
    git_commit: str | None = None


class Change(BaseModel):
    name: str
    before: float | None
    after: float | None
    regression: bool


class Comparison(BaseModel):
    previous: str
    previous_backend: str
    pass_rate: Change
    suites: list[Change]
    metrics: list[Change]
    regressions: list[str] = Field(description="scenarios that pass less often than before")
    fixed: list[str]
    new: list[str]


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


def _scenario_pass_shares(results: list[ScenarioResult]) -> dict[str, float]:
    runs: dict[str, list[bool]] = {}
    for result in results:
        if result.status != "skipped":
            runs.setdefault(result.key, []).append(result.status == "passed")
    return {key: sum(v) / len(v) for key, v in runs.items()}


def _change(name: str, before: float | None, after: float | None, higher_is_better: bool = True) -> Change:
    worse = before is not None and after is not None and (after < before if higher_is_better else after > before * 1.25)
    return Change(name=name, before=before, after=after, regression=worse)


def compare(current: RunReport, previous: RunReport, previous_path: str) -> Comparison:
    """Per scenario, suite and metric: what got worse (latency: more than 25 % slower)."""
    now, before = _scenario_pass_shares(current.results), _scenario_pass_shares(previous.results)
    shared = sorted(now.keys() & before.keys())
    suites = sorted(current.metrics.pass_rate_by_suite.keys() | previous.metrics.pass_rate_by_suite.keys())
    return Comparison(
        previous=previous_path,
        previous_backend=previous.info.backend,
        pass_rate=_change("pass rate", previous.metrics.pass_rate.mean, current.metrics.pass_rate.mean),
        suites=[
            _change(
                suite,
                previous.metrics.pass_rate_by_suite.get(suite, Rate(mean=None)).mean,
                current.metrics.pass_rate_by_suite.get(suite, Rate(mean=None)).mean,
            )
            for suite in suites
        ],
        metrics=[
            _change(name, getattr(previous.metrics, name), getattr(current.metrics, name), higher)
            for name, higher in _COMPARED_METRICS
        ],
        regressions=[key for key in shared if now[key] < before[key]],
        fixed=[key for key in shared if now[key] > before[key]],
        new=sorted(now.keys() - before.keys()),
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
    ]


def to_markdown(report: RunReport) -> str:
    info, m = report.info, report.metrics
    lines = [
        f"# ScanChat eval: {', '.join(info.suites)}",
        "",
        f"Backend `{info.backend}` ({info.runtime}), judge `{info.judge or 'none'}`, repeat {info.repeat}, "
        f"parallel {info.parallel}, started {info.started}, {info.seconds:.0f} s, commit `{info.git_commit or '?'}`.",
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
        lines += ["", f"## Compared with `{c.previous}` ({c.previous_backend})", "", "| | Before | After |", "|---|---|---|"]
        for change in [c.pass_rate, *c.suites, *c.metrics]:
            percent = not change.name.startswith("latency")
            flag = " **REGRESSION**" if change.regression else ""
            lines.append(f"| {change.name}{flag} | {_fmt(change.before, percent)} | {_fmt(change.after, percent)} |")
        lines += ["", "**Regressions:** " + (", ".join(f"`{k}`" for k in c.regressions) or "none")]
        lines += ["", "Fixed: " + (", ".join(f"`{k}`" for k in c.fixed) or "none")]
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
repeat {{ info.repeat }}, parallel {{ info.parallel }}, started {{ info.started }}, {{ '%.0f'|format(info.seconds) }} s,
commit <code>{{ info.git_commit or '?' }}</code>.</p>
<table>{% for name, value in rows %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
<table><tr><th>Suite</th><th>Pass rate</th></tr>
{% for suite, rate in metrics.pass_rate_by_suite.items() %}<tr><td>{{ suite }}</td><td>{{ rate }}</td></tr>{% endfor %}</table>
<table><tr><th>Tag</th><th>Pass rate</th></tr>
{% for tag, rate in metrics.pass_rate_by_tag.items() %}<tr><td>{{ tag }}</td><td>{{ rate }}</td></tr>{% endfor %}</table>
{% if comparison %}
<h2>Compared with {{ comparison.previous }} ({{ comparison.previous_backend }})</h2>
<table><tr><th></th><th>Before</th><th>After</th></tr>
{% for c in changes %}<tr class="{{ 'regression' if c.regression }}"><td>{{ c.name }}</td><td>{{ fmt(c.before, not c.name.startswith('latency')) }}</td><td>{{ fmt(c.after, not c.name.startswith('latency')) }}</td></tr>{% endfor %}
</table>
<p class="{{ 'regression' if comparison.regressions }}">Regressions: {{ comparison.regressions|join(', ') or 'none' }}</p>
<p>Fixed: {{ comparison.fixed|join(', ') or 'none' }}</p>
{% endif %}
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
