"""Playing scenarios through the real agent, one fresh conversation each, recording everything.

The runner drives `Agent.run`, the generator the UI consumes, so an eval sees exactly what a
clinician would. A scenario that raises is recorded with its traceback and the run goes on.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from assistant.agent import Agent, AnswerEvent, TokenEvent, ToolResultEvent
from assistant.config import Settings, get_settings
from assistant.models.base import ChatModel, ModelError, ModelWrapper, Sampling, Usage
from assistant.session import ScanSession, ToolRecord
from assistant.volume import Volume
from evals.harness.checks import check_turn
from evals.harness.judge import Judge, unjudged
from evals.harness.schema import ScanRef, Scenario, Turn
from evals.harness.store import Shard
from evals.harness.trace import ScenarioResult, ToolCallTrace, TurnRecord
from tools import build_tools

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, ScenarioResult], None]
Job = tuple[Scenario, int]  # a scenario and its repeat index
_SHOWN_MESSAGE_CHARS = 500


class MeteredModel(ModelWrapper):
    """One scenario's view of the shared model: calls serialised when `lock` is given, tokens counted.

    A local model is not thread-safe, so parallel scenarios share one lock around each call;
    an HTTP endpoint gets no lock and runs truly in parallel. With `sampling`, call i of the
    scenario gets seed `sampling.seed + i`, so a repeat samples the same way wherever it runs.
    """

    def __init__(self, inner: ChatModel, lock: threading.Lock | None, sampling: Sampling | None = None):
        super().__init__(inner)
        self.lock = lock
        self.sampling = sampling
        self.prompt_tokens = self.completion_tokens = self.cached_prompt_tokens = self.calls = 0
        self.total_calls = 0

    def stream(self, messages, **kwargs: Any) -> Iterator[str]:
        if self.sampling:
            kwargs["sampling"] = Sampling(self.sampling.temperature, self.sampling.seed + self.total_calls)
        with self.lock or nullcontext():
            yield from self.inner.stream(messages, **kwargs)
            usage = self.inner.last_usage
        self.last_usage = Usage(**vars(usage))
        self.cached_prompt_tokens += usage.cached_prompt_tokens or 0
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.calls += 1
        self.total_calls += 1

    def take_counts(self) -> tuple[int, int, int, int]:
        """Tokens (prompt, completion, cached prompt) and calls since the last take (one turn's worth)."""
        counts = (self.prompt_tokens, self.completion_tokens, self.cached_prompt_tokens, self.calls)
        self.prompt_tokens = self.completion_tokens = self.cached_prompt_tokens = self.calls = 0
        return counts


def plan_jobs(
    scenarios: Sequence[Scenario], repeat: int = 1, shard: Shard | None = None, done: set[tuple[str, int]] = frozenset()
) -> list[Job]:
    """Every (scenario, repeat) of the run, this shard's share (every N-th), less those already done."""
    jobs = [(s, r) for r in range(repeat) for s in scenarios]
    if shard is not None:
        jobs = jobs[shard.index - 1 :: shard.count]
    return [(s, r) for s, r in jobs if (s.key, r) not in done]


def registered_tools() -> set[str]:
    return {tool.name for tool in build_tools(ScanSession())}


def load_scan_ref(ref: ScanRef, scenario_file: str, settings: Settings) -> Volume:
    """The scan a scenario names (a sample, a path relative to the scenario file, or a rewritten DICOM copy),
    transformed as it asks."""
    from evals.harness.transforms import transformed

    return transformed(_load_scan_ref(ref, scenario_file, settings), ref.transform)


def _load_scan_ref(ref: ScanRef, scenario_file: str, settings: Settings) -> Volume:
    from assistant.scans.loading import load_scan

    if ref.sample and not ref.dicom_fields:
        from assistant.scans.samples import load_sample

        return load_sample(ref.sample)
    if ref.sample:
        from assistant.scans.samples import sample_path

        source = sample_path(ref.sample)
    else:
        source = ref.path if ref.path.is_absolute() else Path(scenario_file).parent / ref.path
    if not ref.dicom_fields:
        return load_scan(source, settings)
    with tempfile.TemporaryDirectory(prefix="scanchat-eval-") as folder:
        return load_scan(_rewritten_dicom(source, ref.dicom_fields, Path(folder)), settings)


def _rewritten_dicom(source: Path, fields: dict[str, str], folder: Path) -> Path:
    """A copy of a DICOM file or series with header text fields replaced (e.g. an injected instruction)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    written = 0
    for file in files:
        target = folder / file.relative_to(source.parent if source.is_file() else source)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            dataset = pydicom.dcmread(file)
        except InvalidDicomError:
            shutil.copy2(file, target)
            continue
        for keyword, text in fields.items():
            setattr(dataset, keyword, text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # over-long LO values are the point of some scenarios
            dataset.save_as(target)
        written += 1
    if not written:
        raise ValueError(f"dicom_fields needs a DICOM scan, and {source.name} has no DICOM files")
    return folder / source.name


class EvalRunner:
    """Runs scenarios against one model (and optionally a judge), each in a fresh session."""

    def __init__(
        self,
        model: ChatModel,
        settings: Settings | None = None,
        *,
        serialize: bool = True,
        judge: ChatModel | None = None,
        temperature: float = 0.0,
        seed: int = 0,
    ):
        if temperature < 0:
            raise ValueError("--temperature must be 0 (greedy) or more")
        if temperature > 0 and not model.supports_sampling:
            raise ModelError(f"{model.name} ({model.runtime}) decodes greedily only; --temperature needs llamacpp, transformers or openai")
        self.model = model
        self.settings = settings or get_settings()
        self.temperature, self.seed = temperature, seed
        self.lock = threading.Lock() if serialize else None
        judge_lock = self.lock if judge is model else (threading.Lock() if serialize else None)
        self.judge = Judge(judge, judge_lock) if judge is not None else None
        self.available_tools = registered_tools()

    def run(
        self,
        scenarios: Sequence[Scenario],
        repeat: int = 1,
        parallel: int = 1,
        progress: ProgressCallback | None = None,
    ) -> list[ScenarioResult]:
        """Every scenario `repeat` times, `parallel` at once; results in scenario order."""
        return self.run_jobs(plan_jobs(scenarios, repeat), parallel, progress)

    def run_jobs(self, jobs: Sequence[Job], parallel: int = 1, progress: ProgressCallback | None = None) -> list[ScenarioResult]:
        """The jobs, `parallel` at once; `progress` sees each result as it finishes (to save it at once)."""
        results: dict[int, ScenarioResult] = {}
        with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="eval") as pool:
            futures = {pool.submit(self.run_scenario, s, r): i for i, (s, r) in enumerate(jobs)}
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = result = future.result()
                if progress:
                    progress(done, len(jobs), result)
        return [results[i] for i in range(len(jobs))]

    def warm_up(self, scenario: Scenario) -> None:
        """Play `scenario` once, unrecorded, so the models and classifiers a scenario loads lazily are loaded.

        Throughput is measured over the work itself: without this the first scenario of every process
        (every Ray worker) also pays those loads, several seconds each.
        """
        self.run_scenario(scenario)

    def run_scenario(self, scenario: Scenario, repeat: int = 0) -> ScenarioResult:
        """One scenario in a fresh session; never raises."""
        result = ScenarioResult(
            suite=scenario.suite, name=scenario.name, file=scenario.file, tags=scenario.tags, repeat=repeat, status="passed"
        )
        missing = scenario.mentioned_tools - self.available_tools
        if missing:
            result.status, result.reason = "skipped", f"tools not registered: {', '.join(sorted(missing))}"
            return result
        started = time.perf_counter()
        agent: Agent | None = None
        try:
            session = ScanSession()
            if scenario.scan:
                session.load(load_scan_ref(scenario.scan, scenario.file, self.settings))
            agent = Agent(MeteredModel(self.model, self.lock, self.sampling(scenario, repeat)), session, self.settings)
            for index, turn in enumerate(scenario.turns):
                record = self._play_turn(agent, scenario, turn, result.turns)
                result.turns.append(record)
                if record.traceback:  # an unexpected crash ends the conversation
                    result.status, result.reason, result.traceback = "error", record.error or "", record.traceback
                    break
        except Exception as exc:  # setup failed (scan missing, model broken): record and go on
            log.exception("scenario %s crashed", scenario.key)
            result.status, result.reason, result.traceback = "error", f"{type(exc).__name__}: {exc}", traceback.format_exc()
        result.seconds = time.perf_counter() - started
        if agent is not None:
            result.messages = [m.model_dump(exclude_none=True) for m in agent.history]
        if result.status == "passed":
            failed = [c for c in result.checks if c.passed is False]
            if failed:
                result.status = "failed"
                result.reason = "; ".join(f"{c.description}" + (f" ({c.detail})" if c.detail else "") for c in failed)[:500]
        return result

    def sampling(self, scenario: Scenario, repeat: int) -> Sampling | None:
        """Greedy at temperature 0; else a seed fixed by (run seed, scenario, repeat), not by scheduling."""
        if not self.temperature:
            return None
        return Sampling(self.temperature, zlib.crc32(f"{self.seed}:{scenario.key}:{repeat}".encode()) % 2**31)

    def _play_turn(self, agent: Agent, scenario: Scenario, turn: Turn, earlier: list[TurnRecord]) -> TurnRecord:
        """One user turn through `Agent.run`; `earlier` turns let `number_from` look back."""
        if turn.upload:
            agent.session.load(load_scan_ref(turn.upload, scenario.file, self.settings))
        message = turn.message()
        shown = message if len(message) <= _SHOWN_MESSAGE_CHARS else message[:_SHOWN_MESSAGE_CHARS] + " […]"
        record = TurnRecord(
            index=len(earlier),
            user=shown,
            user_chars=len(message),
            upload=turn.upload.label() if turn.upload else None,
            expected_tools=sorted(turn.expect.expected_tools) if (turn.expect.tools_called or turn.expect.no_tool) else None,
        )
        metered: MeteredModel = agent.model  # type: ignore[assignment]
        metered.take_counts()
        started = time.perf_counter()
        turns_before = len(agent.traces)
        try:
            for event in agent.run(message):
                if isinstance(event, TokenEvent) and record.first_token_seconds is None:
                    record.first_token_seconds = round(time.perf_counter() - started, 3)
                elif isinstance(event, ToolResultEvent):
                    record.tool_calls.append(_call_trace(event.record))
                elif isinstance(event, AnswerEvent):
                    record.answer = event.text
                    record.draft_grounded = event.grounding.ok
                    record.ungrounded = list(event.grounding.ungrounded)
                    record.answer_replaced = event.replaced
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            if type(exc).__name__ != turn.expect.error:
                record.traceback = traceback.format_exc()
        record.seconds = round(time.perf_counter() - started, 3)
        record.prompt_tokens, record.completion_tokens, record.cached_prompt_tokens, record.model_calls = metered.take_counts()
        if len(agent.traces) > turns_before:  # the turn finished: its time by stage
            record.stages = {stage: round(seconds, 3) for stage, seconds in agent.traces[-1].stages.items()}
            record.looked_at_volume = agent.traces[-1].looked_at_volume
        record.checks = check_turn(turn.expect, record, [*earlier, record])
        if turn.expect.rubric and not record.error:
            record.checks += self.judge.score(turn.expect.rubric, record) if self.judge else unjudged(turn.expect.rubric)
        return record


def _call_trace(record: ToolRecord) -> ToolCallTrace:
    return ToolCallTrace(
        name=record.name,
        arguments=record.arguments,
        result=record.result.model_dump(mode="json", exclude_none=True) if record.result else None,
        summary=record.result.summary() if record.result else None,
        error=record.error,
        seconds=round(record.seconds, 3),
    )
