"""What a run records: every turn's messages, tool calls, answer, timings, tokens and checks.

These models are the JSON report's schema; `--compare` reads a previous run back through them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

CheckKind = Literal["tool_called", "tool_args", "tool_not_called", "no_tool", "answer", "error", "rubric"]
Status = Literal["passed", "failed", "error", "skipped"]


class CheckResult(BaseModel):
    kind: CheckKind
    description: str
    passed: bool | None = Field(description="None when the check could not run (e.g. no judge); not counted")
    detail: str = ""


class ToolCallTrace(BaseModel):
    name: str
    arguments: dict[str, Any]
    result: dict[str, Any] | None = None  # the typed result, as JSON
    summary: str | None = None  # what the model read
    error: str | None = None
    seconds: float = 0.0


class TurnRecord(BaseModel):
    index: int
    user: str = Field(description="the message sent (long messages shortened in the report)")
    user_chars: int
    upload: str | None = None
    tool_calls: list[ToolCallTrace] = Field(default_factory=list)
    answer: str = ""
    draft_grounded: bool | None = Field(None, description="all numbers of the model's own wording traced to a source")
    ungrounded: list[str] = Field(default_factory=list)
    answer_replaced: bool = False
    error: str | None = None  # "InputError: ..." when the turn raised
    traceback: str | None = None
    seconds: float = 0.0
    first_token_seconds: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    model_calls: int = 0
    looked_at_volume: bool = Field(False, description="a vision model wrote the answer looking at the scan")
    stages: dict[str, float] = Field(default_factory=dict, description="seconds by stage (assistant.agent.STAGES)")
    expected_tools: list[str] | None = Field(None, description="None when the turn does not say which tools to call")
    checks: list[CheckResult] = Field(default_factory=list)

    @property
    def called_tools(self) -> set[str]:
        return {call.name for call in self.tool_calls}


class ScenarioResult(BaseModel):
    suite: str
    name: str
    file: str
    tags: list[str]
    repeat: int = 0
    status: Status
    reason: str = ""  # why it failed, errored or was skipped, in one line
    traceback: str | None = None
    turns: list[TurnRecord] = Field(default_factory=list)
    messages: list[dict[str, Any]] = Field(default_factory=list, description="the conversation as the model saw it")
    seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.name}"

    @property
    def checks(self) -> list[CheckResult]:
        return [check for turn in self.turns for check in turn.checks]
