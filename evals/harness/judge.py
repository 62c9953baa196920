"""The optional LLM judge: scores free-text rubric items that no string check can express."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from string import Template

from assistant.models.base import ChatModel, Message
from evals.harness.trace import CheckResult, TurnRecord
from prompts import load_prompt

_VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["pass", "fail"]}, "reason": {"type": "string", "maxLength": 200}},
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}


class Judge:
    """Asks a chat model for a constrained pass/fail verdict per rubric item."""

    def __init__(self, model: ChatModel, lock: threading.Lock | None = None):
        self.model = model
        self.lock = lock

    def score(self, rubric: list[str], turn: TurnRecord) -> list[CheckResult]:
        tools = "\n".join(f"- {c.name}: {c.summary or 'ERROR: ' + str(c.error)}" for c in turn.tool_calls) or "(no tool was called)"
        return [self._verdict(item, turn, tools) for item in rubric]

    def _verdict(self, item: str, turn: TurnRecord, tools: str) -> CheckResult:
        prompt = Template(load_prompt("evals/judge.md")).substitute(question=turn.user, tools=tools, answer=turn.answer, rubric=item)
        with self.lock or nullcontext():
            decision = self.model.complete_json([Message(role="user", content=prompt)], _VERDICT_SCHEMA, max_new_tokens=96)
        return CheckResult(kind="rubric", description=item, passed=decision.get("verdict") == "pass", detail=str(decision.get("reason", "")))


def unjudged(rubric: list[str]) -> list[CheckResult]:
    """Rubric items recorded as not run when no --judge model was given."""
    return [CheckResult(kind="rubric", description=item, passed=None, detail="no --judge model") for item in rubric]
