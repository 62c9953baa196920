"""The VLM's own tool decisions: which tool answers a request, and with which arguments, written by the same model
that looks at the scan, with the scan's visual tokens in front of the request.

The text model is handed the agent's long prompts (rules, scan line, tool menu, retrieved examples); on this CPU
one training step over them takes minutes. The VLM is trained on short prompts instead: the request, the earlier
request it may refer to, and the tool names or the chosen tool's fields, from the same tool-calling bank
(`prompts/agent/tool_examples.jsonl`, the training split). Its replies are held to the JSON schema by constrained
decoding, like every structured decision, and the agent checks and corrects the arguments as it does the text
model's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from string import Template
from typing import Any, Literal

from assistant.choosers import NO_TOOL, ToolCallExample
from prompts import load_prompt

DecisionTopic = Literal["tool choice", "tool arguments"]
DECISION_TOPICS: tuple[DecisionTopic, ...] = ("tool choice", "tool arguments")


def _previous(previous: str | None) -> str:
    return f"Earlier request: {previous.strip()}\n" if previous and previous.strip() else ""


def choice_prompt(request: str, previous: str | None, tools: Sequence[str]) -> str:
    """The question that picks a tool; the tools are listed in a fixed order, "none" last."""
    choices = ", ".join([*sorted(t for t in tools if t != NO_TOOL), NO_TOOL])
    return Template(load_prompt("vlm/choose_tool.md")).substitute(previous=_previous(previous), request=request.strip(),
                                                                 choices=choices)


def arguments_prompt(request: str, previous: str | None, tool: str, schema: dict[str, Any]) -> str:
    """The question that fills `tool`'s arguments; the schema's field names say what each value is."""
    fields = ", ".join(schema.get("properties", {}))
    return Template(load_prompt("vlm/fill_arguments.md")).substitute(previous=_previous(previous), request=request.strip(),
                                                                    tool=tool, fields=fields)


@dataclass(frozen=True)
class Decision:
    """One training decision: its prompt (before the chat wrapping and the scan), the JSON reply, and whether the
    request was made with a scan loaded (then the scan's tokens come with it)."""

    topic: DecisionTopic
    prompt: str
    answer: str
    with_scan: bool


def decisions_for(examples: Sequence[ToolCallExample], schemas: dict[str, dict[str, Any]]) -> list[Decision]:
    """A choice for every example and, where its tool takes arguments and the example names them, the arguments."""
    tools = list(schemas)
    decisions = []
    for example in examples:
        with_scan = example.scan is not None
        decisions.append(Decision("tool choice", choice_prompt(example.text, example.previous, tools),
                                  json.dumps({"tool": example.tool}), with_scan))
        schema = schemas.get(example.tool)
        if schema and schema.get("properties") and example.arguments:
            decisions.append(Decision("tool arguments", arguments_prompt(example.text, example.previous, example.tool, schema),
                                      json.dumps(example.arguments), with_scan))
    return decisions


def tool_schemas() -> dict[str, dict[str, Any]]:
    """Every tool's argument schema, by name, as the agent builds its tools."""
    from assistant.session import ScanSession
    from tools import build_tools

    return {tool.name: tool.args_schema.model_json_schema() for tool in build_tools(ScanSession())}
