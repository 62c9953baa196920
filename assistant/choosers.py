"""Tool choosers: who decides which tool (if any) answers the user's message.

A clinician who asks for a volume and gets a distance stops trusting the tool, so choosing is
its own, measured component (`evals/bench_tool_choice.py` compares these on a held-out split):

- `LLMChooser`: the chat model picks from the tool names under a JSON-schema constraint, with
  no examples, fixed examples, or *dynamic* examples (the most similar requests of the
  training bank, retrieved with the packaged MiniLM embedder).
- `RouterChooser`: nearest-example vote over the same bank; no LLM, milliseconds.
- `HybridChooser`: the router proposes; when it is confident its choice stands, otherwise the
  LLM decides among the router's top candidates (plus "none").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from assistant.models.base import ChatModel, Message
from prompts import load_prompt

NO_TOOL = "none"
ChooserName = Literal["llm-zero-shot", "llm-fixed", "llm-dynamic", "router", "hybrid"]
CHOOSERS: tuple[str, ...] = ("llm-zero-shot", "llm-fixed", "llm-dynamic", "router", "hybrid")


class ToolCallExample(BaseModel):
    """One request with the tool call it needs; the unit of the tool-calling dataset."""

    id: str
    text: str
    tool: str  # a tool name, or "none"
    arguments: dict[str, Any] = {}  # the arguments that must be right (others are free)
    previous: str | None = None  # an earlier user turn this one refers to
    scan: str | None = "ct-head"


def parse_examples(text: str) -> list[ToolCallExample]:
    return [ToolCallExample.model_validate_json(line) for line in text.splitlines() if line.strip()]


@cache
def example_bank() -> tuple[ToolCallExample, ...]:
    """The training split, shipped with the prompts: retrieval examples at run time."""
    text = resources.files("prompts").joinpath("agent/tool_examples.jsonl").read_text(encoding="utf-8")
    return tuple(parse_examples(text))


class _ExampleIndex:
    """The bank's requests embedded once; nearest examples by cosine similarity."""

    def __init__(self, examples: Sequence[ToolCallExample]):
        from assistant.terminology.embeddings import get_embedder

        self.examples = list(examples)
        self.embedder = get_embedder("minilm-onnx")
        self.vectors = self.embedder.encode([e.text for e in self.examples])

    def nearest(self, text: str, k: int, allowed: Sequence[str]) -> list[tuple[ToolCallExample, float]]:
        scores = self.vectors @ self.embedder.encode([text], query=True)[0]
        ranked = [(self.examples[i], float(scores[i])) for i in np.argsort(-scores)]
        return [(e, s) for e, s in ranked if e.tool in allowed][:k]


@cache
def example_index() -> _ExampleIndex:
    return _ExampleIndex(example_bank())


def _format_examples(examples: Sequence[ToolCallExample]) -> str:
    return "\n".join(f'- "{e.text}" -> {{"tool": "{e.tool}"}}' for e in examples)


def _choice_schema(names: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"tool": {"type": "string", "enum": list(names)}},
        "required": ["tool"],
        "additionalProperties": False,
    }


class ToolChooser(ABC):
    """Picks the next tool for a request. `called` lists the tools this turn already ran: a
    chooser never picks one of them again (one call per tool per turn keeps small models from
    looping), so after the first call it picks a second tool for mixed requests, or NO_TOOL."""

    name: str

    @abstractmethod
    def choose(self, context: list[Message], request: str, tools: Sequence[str], called: Sequence[str] = ()) -> str:
        """The tool for the last user message (`request`), or NO_TOOL; `context` ends with it."""


class LLMChooser(ToolChooser):
    def __init__(self, model: ChatModel, examples: Literal["none", "fixed", "dynamic"] = "dynamic", k: int = 8):
        self.model, self.examples, self.k = model, examples, k
        self.name = {"none": "llm-zero-shot", "fixed": "llm-fixed", "dynamic": "llm-dynamic"}[examples]

    def prompt(self, request: str, tools: Sequence[str]) -> str:
        allowed = [*tools, NO_TOOL]
        if self.examples == "dynamic":
            block = _format_examples([e for e, _ in example_index().nearest(request, self.k, allowed)])
        elif self.examples == "fixed":
            block = load_prompt("agent/fixed_examples.md")
        else:
            block = ""
        header = "Examples of requests and the right choice:\n" if block else ""
        return Template(load_prompt("agent/choose_tool.md")).substitute(
            examples=header + block, choices=", ".join(f'"{t}"' for t in allowed)
        )

    def messages(self, context: list[Message], request: str, tools: Sequence[str]) -> list[Message]:
        """The whole conversation the model sees to choose; public so fine-tuning trains on exactly this."""
        return [*context, Message(role="user", content=self.prompt(request, tools))]

    def choose(self, context: list[Message], request: str, tools: Sequence[str], called: Sequence[str] = ()) -> str:
        tools = [t for t in tools if t not in called]
        messages = self.messages(context, request, tools)
        decision = self.model.complete_json(messages, _choice_schema([*tools, NO_TOOL]), max_new_tokens=24)
        return decision.get("tool", NO_TOOL)


class RouterChooser(ToolChooser):
    """Similarity-weighted vote of the k nearest bank examples."""

    name = "router"
    second_tool_share = 0.2  # a mixed request shows as a split vote; below this share, stop

    def __init__(self, k: int = 5):
        self.k = k

    def ranking(self, request: str, tools: Sequence[str]) -> list[tuple[str, float]]:
        """Tools with their share of the vote, best first (shares sum to 1)."""
        votes: dict[str, float] = defaultdict(float)
        for example, score in example_index().nearest(request, self.k, [*tools, NO_TOOL]):
            votes[example.tool] += max(score, 1e-6)
        total = sum(votes.values()) or 1.0
        return sorted(((tool, v / total) for tool, v in votes.items()), key=lambda kv: -kv[1])

    def follow_ups(self, request: str, tools: Sequence[str], called: Sequence[str]) -> list[str]:
        """After a first call: other tools that hold a real share of the vote (mixed requests)."""
        return [t for t, share in self.ranking(request, tools)
                if t not in called and t != NO_TOOL and share >= self.second_tool_share]

    def choose(self, context: list[Message], request: str, tools: Sequence[str], called: Sequence[str] = ()) -> str:
        if called:
            return next(iter(self.follow_ups(request, tools, called)), NO_TOOL)
        ranking = self.ranking(request, tools)
        return ranking[0][0] if ranking else NO_TOOL


class HybridChooser(ToolChooser):
    """The router proposes; a clear majority of its neighbours decides, otherwise the LLM decides
    among the router's top candidates. (With the threshold at unanimity the 0.5B model overrode
    a 0.81 majority for "slice thickness" with "none"; a majority is the safer authority.)"""

    name = "hybrid"

    def __init__(self, model: ChatModel, candidates: int = 3, unanimous_share: float = 0.6):
        self.router = RouterChooser(k=5)
        self.llm = LLMChooser(model, "dynamic")
        self.candidates, self.unanimous_share = candidates, unanimous_share

    def choose(self, context: list[Message], request: str, tools: Sequence[str], called: Sequence[str] = ()) -> str:
        if called:
            shortlist = self.router.follow_ups(request, tools, called)
            return self.llm.choose(context, request, shortlist) if shortlist else NO_TOOL
        ranking = self.router.ranking(request, tools)
        if ranking and ranking[0][1] >= self.unanimous_share:
            return ranking[0][0]
        shortlist = [t for t, _ in ranking[: self.candidates] if t != NO_TOOL] or list(tools)
        return self.llm.choose(context, request, shortlist)


def make_chooser(name: str, model: ChatModel) -> ToolChooser:
    if name == "router":
        return RouterChooser()
    if name == "hybrid":
        return HybridChooser(model)
    examples = {"llm-zero-shot": "none", "llm-fixed": "fixed", "llm-dynamic": "dynamic"}.get(name)
    if examples is None:
        raise ValueError(f"Unknown tool chooser {name!r}; choose one of {', '.join(CHOOSERS)}.")
    return LLMChooser(model, examples)  # type: ignore[arg-type]
