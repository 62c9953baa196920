"""Scoring one turn against its expectations; each expectation becomes one `CheckResult`."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from assistant.grounding import numbers_in
from evals.harness.schema import (
    AnswerCheck,
    ArgConstraint,
    ConceptCheck,
    ContainsAnyCheck,
    ContainsCheck,
    LanguageCheck,
    NotContainsCheck,
    NumberFromCheck,
    RegexCheck,
    ToolExpectation,
    TurnExpectation,
)
from evals.harness.trace import CheckResult, ToolCallTrace, TurnRecord

# --- language ------------------------------------------------------------------------------

# Frequent function words; enough to tell these five languages apart in a sentence or two.
_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and is are was of to in it this that with for on be not as at by or from has have an which there".split()),
    "es": frozenset("el la los las y es son de del en que un una por con para se no al lo como más pero sus este esta está también hay".split()),
    "pt": frozenset("o a os as e é são de do da dos das em no na que um uma por com para se não ao como mais mas este esta está também há".split()),
    "de": frozenset("der die das und ist sind nicht ein eine mit von zu den dem des auf für im sich auch es wird bei oder kein".split()),
    "fr": frozenset("le la les et est sont de des du un une en que qui dans pour pas sur au avec ce cette par ne il aux".split()),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def language_scores(text: str) -> dict[str, float]:
    """Share of the words of `text` that are each language's function words."""
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return {lang: 0.0 for lang in _STOPWORDS}
    return {lang: sum(w in stop for w in words) / len(words) for lang, stop in _STOPWORDS.items()}


def detect_language(text: str) -> str | None:
    """The most likely of en/es/pt/de/fr, or None when the text has none of their function words."""
    scores = language_scores(text)
    best = max(scores, key=scores.__getitem__)
    return best if scores[best] > 0 else None


# --- tool calls ----------------------------------------------------------------------------


def argument_satisfies(value: Any, constraint: ArgConstraint) -> bool:
    fields = constraint.model_fields_set
    if "within" in fields:
        return _within(value, constraint.within, constraint.tolerance)
    if "one_of" in fields:
        return any(_same(value, option) for option in constraint.one_of or [])
    if "regex" in fields:
        return isinstance(value, str) and re.search(constraint.regex or "", value) is not None
    if "contains" in fields:
        return isinstance(value, str) and (constraint.contains or "").lower() in value.lower()
    return _same(value, constraint.equals)


def _same(value: Any, expected: Any) -> bool:
    """Equality where YAML lists match JSON lists/tuples and 3 matches 3.0."""
    if isinstance(expected, list) and isinstance(value, (list, tuple)):
        return len(value) == len(expected) and all(_same(v, e) for v, e in zip(value, expected))
    if isinstance(expected, str) and isinstance(value, str):
        return value.strip().lower() == expected.strip().lower()
    return value == expected


def _within(value: Any, target: Any, tolerance: float) -> bool:
    if isinstance(target, list):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(target)
            and all(_within(v, t, tolerance) for v, t in zip(value, target))
        )
    return isinstance(value, (int, float)) and not isinstance(value, bool) and target is not None and abs(value - target) <= tolerance


def _tool_checks(expected: ToolExpectation, calls: list[ToolCallTrace]) -> list[CheckResult]:
    """Called at all, then each argument constraint on the call that meets the most of them."""
    matching = [call for call in calls if call.name == expected.tool]
    called = CheckResult(
        kind="tool_called",
        description=f"calls {expected.tool}",
        passed=bool(matching),
        detail="" if matching else f"called: {', '.join(c.name for c in calls) or 'no tool'}",
    )
    if not expected.args:
        return [called]

    def score(call: ToolCallTrace) -> int:
        return sum(argument_satisfies(call.arguments.get(name), c) for name, c in expected.args.items() if name in call.arguments)

    best = max(matching, key=score, default=None)
    results = [called]
    for name, constraint in expected.args.items():
        description = f"{expected.tool}.{name} {constraint.describe()}"
        if best is None:
            results.append(CheckResult(kind="tool_args", description=description, passed=False, detail="tool not called"))
            continue
        value = best.arguments.get(name)
        ok = name in best.arguments and argument_satisfies(value, constraint)
        results.append(CheckResult(kind="tool_args", description=description, passed=ok, detail=f"got {value!r}"))
    return results


# --- answers -------------------------------------------------------------------------------


def _field(result: dict[str, Any] | None, path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _latest_result(history: Sequence[TurnRecord], tool: str) -> dict[str, Any] | None:
    """The most recent successful result of `tool` in this conversation ("and how big is it?")."""
    for turn in reversed(history):
        for call in reversed(turn.tool_calls):
            if call.name == tool and call.result is not None:
                return call.result
    return None


def _number_check(check: NumberFromCheck, answer: str, history: Sequence[TurnRecord]) -> CheckResult:
    source = check.number_from
    description = f"states {source.tool}.{source.field}"
    result = _latest_result(history, source.tool)
    if result is None:
        return CheckResult(kind="answer", description=description, passed=False, detail=f"{source.tool} produced no result")
    target = _field(result, source.field)
    if not isinstance(target, (int, float)) or isinstance(target, bool):
        return CheckResult(kind="answer", description=description, passed=False, detail=f"{source.field} is {target!r}, not a number")
    allowed = max(source.tolerance, source.relative * abs(target))
    found = [float(token.replace(",", "")) for token in numbers_in(answer)]
    ok = any(math.isclose(value, target, abs_tol=allowed + 1e-9) for value in found)
    return CheckResult(
        kind="answer",
        description=f"{description} ({target} ± {allowed:g})",
        passed=ok,
        detail=f"numbers in answer: {found[:12]}",
    )


@cache
def _term_index():
    """The shared term index, or None while `assistant.terminology` does not provide one."""
    import assistant.terminology as terminology

    get_index = getattr(terminology, "get_term_index", None)
    return get_index() if get_index else None


def _concept_check(check: ConceptCheck, answer: str) -> CheckResult:
    ref = check.concept
    description = f"mentions concept {ref.id or ref.code}"
    index = _term_index()
    if index is None:
        return CheckResult(kind="answer", description=description, passed=None, detail="term index not available")
    mentions = index.normalize(answer, lang=ref.lang) if answer.strip() else []
    found = [m.concept for m in mentions]
    ok = any(c.id == ref.id if ref.id else any(_same_code(code, ref.code or "") for code in c.codes.values()) for c in found)
    return CheckResult(kind="answer", description=description, passed=ok, detail=f"found: {[c.id for c in found][:10]}")


def _same_code(code: str, wanted: str) -> bool:
    """I21.9 is an I21: a category matches its subcodes."""
    return code == wanted or code.startswith(wanted + ".")


def answer_check(check: AnswerCheck, answer: str, history: Sequence[TurnRecord]) -> CheckResult:
    if isinstance(check, NumberFromCheck):
        return _number_check(check, answer, history)
    if isinstance(check, ConceptCheck):
        return _concept_check(check, answer)
    if isinstance(check, LanguageCheck):
        found = detect_language(answer)
        return CheckResult(kind="answer", description=f"answers in {check.language}", passed=found == check.language, detail=f"detected {found}")
    fold = (lambda s: s) if check.case_sensitive else str.lower
    if isinstance(check, ContainsCheck):
        return CheckResult(kind="answer", description=f"contains {check.contains!r}", passed=fold(check.contains) in fold(answer))
    if isinstance(check, ContainsAnyCheck):
        hits = [s for s in check.contains_any if fold(s) in fold(answer)]
        return CheckResult(kind="answer", description=f"contains one of {check.contains_any}", passed=bool(hits))
    if isinstance(check, NotContainsCheck):
        hits = [s for s in check.not_contains if fold(s) in fold(answer)]
        return CheckResult(kind="answer", description=f"does not contain {check.not_contains}", passed=not hits, detail=f"found {hits}" if hits else "")
    if isinstance(check, RegexCheck):
        flags = 0 if check.case_sensitive else re.IGNORECASE
        return CheckResult(kind="answer", description=f"matches /{check.regex}/", passed=re.search(check.regex, answer, flags) is not None)
    raise TypeError(f"unhandled answer check {type(check).__name__}")


# --- a whole turn --------------------------------------------------------------------------


def check_turn(expect: TurnExpectation, turn: TurnRecord, history: Sequence[TurnRecord]) -> list[CheckResult]:
    """Every deterministic check of one turn (the judge's rubric is scored separately)."""
    if expect.error:
        raised = (turn.error or "").split(":", 1)[0]
        return [CheckResult(kind="error", description=f"raises {expect.error}", passed=raised == expect.error, detail=turn.error or "no error")]
    if turn.error:
        return [CheckResult(kind="error", description="completes without error", passed=False, detail=turn.error)]
    results: list[CheckResult] = []
    for expected in expect.tools_called:
        results.extend(_tool_checks(expected, turn.tool_calls))
    called = turn.called_tools
    for name in expect.tools_not_called:
        results.append(CheckResult(kind="tool_not_called", description=f"does not call {name}", passed=name not in called))
    if expect.no_tool:
        results.append(CheckResult(kind="no_tool", description="answers without tools", passed=not called, detail=", ".join(sorted(called))))
    results.extend(answer_check(check, turn.answer, history) for check in expect.answer)
    return results
