"""Tool choosers: who decides which tool (if any) answers the user's message.

A clinician who asks for a volume and gets a distance stops trusting the tool, so choosing is
its own, measured component (`evals/bench_tool_choice.py` compares these on a held-out split):

- `LLMChooser`: the chat model picks from the tool names under a JSON-schema constraint, with
  no examples, fixed examples, or *dynamic* examples (the most similar requests of the
  training bank, retrieved with the packaged MiniLM embedder).
- `RouterChooser`: a logistic-regression classifier trained on the same bank at first use (the
  request's MiniLM embedding, the previous request's for follow-ups, character n-grams for typos
  and abbreviations); no LLM, milliseconds. It replaced a nearest-example vote, chosen by
  template-grouped cross-validation on the bank (0.84 vs 0.74), not on the held-out split.
- `HybridChooser`: the router proposes; when it is confident its choice stands, otherwise the
  LLM decides among the router's top candidates (plus "none").
- `VisionChooser`: a model that decides itself (the project's VLM trained on the bank) picks,
  looking at the scan.
"""

from __future__ import annotations

import hashlib
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from assistant.config import get_settings
from assistant.grounding import without_quoted
from assistant.models.base import ChatModel, Message, ToolDecider
from assistant.volume import Volume
from prompts import load_prompt

NO_TOOL = "none"
ChooserName = Literal["llm-zero-shot", "llm-fixed", "llm-dynamic", "router", "hybrid", "vlm"]
CHOOSERS: tuple[str, ...] = ("llm-zero-shot", "llm-fixed", "llm-dynamic", "router", "hybrid")  # any chat model's
VISION_CHOOSER = "vlm"  # only a model with a decider
EMBEDDER = "minilm-onnx"  # torch-free, and the bank's requests are English


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


def _bank_cache(examples: Sequence[ToolCallExample], kind: str, suffix: str) -> Path:
    """A cache file for what is derived from these examples; a changed bank gets a new file."""
    digest = hashlib.sha256("".join(e.model_dump_json() for e in examples).encode()).hexdigest()[:16]
    return get_settings().cache_dir / "agent" / f"{kind}-{EMBEDDER}-{digest}{suffix}"


class _ExampleIndex:
    """The bank's requests embedded once (and cached on disk); nearest examples by cosine similarity."""

    def __init__(self, examples: Sequence[ToolCallExample]):
        from assistant.terminology.embeddings import get_embedder

        self.examples = list(examples)
        self.embedder = get_embedder(EMBEDDER)
        cached = _bank_cache(self.examples, "bank-vectors", ".npy")
        try:
            self.vectors = np.load(cached)
        except (OSError, ValueError):  # absent or unreadable: embed again
            self.vectors = self.embedder.encode([e.text for e in self.examples])
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, self.vectors)

    def nearest(self, text: str, k: int, allowed: Sequence[str]) -> list[tuple[ToolCallExample, float]]:
        scores = self.vectors @ self.embedder.encode([text], query=True)[0]
        ranked = [(self.examples[i], float(scores[i])) for i in np.argsort(-scores)]
        return [(e, s) for e, s in ranked if e.tool in allowed][:k]


@cache
def example_index() -> _ExampleIndex:
    return _ExampleIndex(example_bank())


def _format_examples(examples: Sequence[ToolCallExample]) -> str:
    return "\n".join(f'- "{e.text}" -> {{"tool": "{e.tool}"}}' for e in examples)


def choice_schema(names: Sequence[str]) -> dict[str, Any]:
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
        decision = self.model.complete_json(messages, choice_schema([*tools, NO_TOOL]), max_new_tokens=24)
        return decision.get("tool", NO_TOOL)


class _RouterModel:
    """Tool probabilities for a request: logistic regression on [request embedding, previous-request
    embedding (zeros when there is none), character 2-4-grams of the request], each request read
    without its quoted passages (`without_quoted`: a pasted report that says "call translate" is
    not a request to translate)."""

    PREVIOUS_WEIGHT = 0.5  # the earlier turn informs, the request itself dominates

    def __init__(self, examples: Sequence[ToolCallExample]):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.embedder = example_index().embedder
        cached = _bank_cache(examples, "router-long-quotes-set-aside", ".pkl")
        try:  # our own file in the user's cache, written below
            self.ngrams, self.classifier = pickle.loads(cached.read_bytes())
            return
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError):
            pass
        self.ngrams = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2)
        texts = [without_quoted(e.text) for e in examples]
        self.ngrams.fit([t.lower() for t in texts])
        requests = self._embed(texts, query=False)
        previous = self._embed([without_quoted(e.previous) if e.previous else None for e in examples], query=False)
        features = self._features(requests, previous, texts)
        self.classifier = LogisticRegression(C=16.0, max_iter=3000).fit(features, [e.tool for e in examples])
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(pickle.dumps((self.ngrams, self.classifier)))

    def _embed(self, texts: Sequence[str | None], query: bool) -> np.ndarray:
        present = [i for i, t in enumerate(texts) if t]
        vectors = np.zeros((len(texts), self.embedder.dim), dtype=np.float32)
        if present:
            vectors[present] = self.embedder.encode([texts[i] for i in present], query=query)
        return vectors

    def _features(self, requests: np.ndarray, previous: np.ndarray, texts: Sequence[str]):
        from scipy import sparse

        dense = sparse.csr_matrix(np.hstack([requests, self.PREVIOUS_WEIGHT * previous]))
        return sparse.hstack([dense, self.ngrams.transform([t.lower() for t in texts])]).tocsr()

    def probabilities(self, request: str, previous: str | None) -> dict[str, float]:
        request, previous = without_quoted(request), without_quoted(previous) if previous else None
        features = self._features(self._embed([request], query=True), self._embed([previous], query=True), [request])
        return {str(tool): float(p) for tool, p in zip(self.classifier.classes_, self.classifier.predict_proba(features)[0])}


@cache
def router_model() -> _RouterModel:
    return _RouterModel(example_bank())


def previous_request(context: Sequence[Message]) -> str | None:
    """The user's message before the current one (the context ends with the current turn)."""
    users = [m.content for m in context if m.role == "user"]
    return users[-2] if len(users) >= 2 else None


class RouterChooser(ToolChooser):
    """The bank-trained classifier's most probable tool; no LLM."""

    name = "router"
    second_tool_share = 0.2  # a mixed request shows as split probability; below this share, stop

    def ranking(self, request: str, tools: Sequence[str], previous: str | None = None) -> list[tuple[str, float]]:
        """Allowed tools with their probability renormalised over them, best first."""
        allowed = {*tools, NO_TOOL}
        probabilities = {t: p for t, p in router_model().probabilities(request, previous).items() if t in allowed}
        total = sum(probabilities.values()) or 1.0
        return sorted(((tool, p / total) for tool, p in probabilities.items()), key=lambda kv: -kv[1])

    def follow_ups(self, request: str, tools: Sequence[str], called: Sequence[str], previous: str | None = None) -> list[str]:
        """After a first call: other tools that hold a real share of the probability (mixed requests)."""
        return [t for t, share in self.ranking(request, tools, previous)
                if t not in called and t != NO_TOOL and share >= self.second_tool_share]

    def choose(self, context: list[Message], request: str, tools: Sequence[str], called: Sequence[str] = ()) -> str:
        previous = previous_request(context)
        if called:
            return next(iter(self.follow_ups(request, tools, called, previous)), NO_TOOL)
        ranking = self.ranking(request, tools, previous)
        return ranking[0][0] if ranking else NO_TOOL


class HybridChooser(ToolChooser):
    """The router proposes; a clear majority of its neighbours decides, otherwise the LLM decides
    among the router's top candidates. (With the threshold at unanimity the 0.5B model overrode
    a 0.81 majority for "slice thickness" with "none"; a majority is the safer authority.)"""

    name = "hybrid"

    def __init__(self, model: ChatModel, candidates: int = 3, unanimous_share: float = 0.6):
        self.router = RouterChooser()
        self.llm = LLMChooser(model, "dynamic")
        self.candidates, self.unanimous_share = candidates, unanimous_share

    def choose(self, context: list[Message], request: str, tools: Sequence[str], called: Sequence[str] = ()) -> str:
        previous = previous_request(context)
        if called:
            shortlist = self.router.follow_ups(request, tools, called, previous)
            return self.llm.choose(context, request, shortlist) if shortlist else NO_TOOL
        ranking = self.router.ranking(request, tools, previous)
        if ranking and ranking[0][1] >= self.unanimous_share:
            return ranking[0][0]
        shortlist = [t for t, _ in ranking[: self.candidates] if t != NO_TOOL] or list(tools)
        return self.llm.choose(context, request, shortlist)


class VisionChooser(ToolChooser):
    """The model's own choice, made looking at the scan. One tool per turn: it was trained on single choices,
    and asked again after a call it would pick another tool for a request that needed one."""

    name = VISION_CHOOSER

    def __init__(self, decider: ToolDecider, volume: Callable[[], Volume | None]):
        self.decider, self.volume = decider, volume

    def choose(self, context: list[Message], request: str, tools: Sequence[str], called: Sequence[str] = ()) -> str:
        if called:
            return NO_TOOL
        return self.decider.choose_tool(request, previous_request(context), list(tools), self.volume())


def make_chooser(name: str, model: ChatModel, volume: Callable[[], Volume | None] = lambda: None) -> ToolChooser:
    """`volume` gives the scan of the moment, for a chooser that looks at it."""
    if name == VISION_CHOOSER:
        if model.decider is None:
            raise ValueError(f"The {VISION_CHOOSER!r} tool chooser needs a model that decides tools itself (a ScanChat VLM "
                             f"trained with --tool-bank); {model.name} does not. Choose one of {', '.join(CHOOSERS)}.")
        return VisionChooser(model.decider, volume)
    if name == "router":
        return RouterChooser()
    if name == "hybrid":
        return HybridChooser(model)
    examples = {"llm-zero-shot": "none", "llm-fixed": "fixed", "llm-dynamic": "dynamic"}.get(name)
    if examples is None:
        raise ValueError(f"Unknown tool chooser {name!r}; choose one of {', '.join([*CHOOSERS, VISION_CHOOSER])}.")
    return LLMChooser(model, examples)  # type: ignore[arg-type]
