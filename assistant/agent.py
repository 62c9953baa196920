"""The agent loop: model -> tool calls -> results -> model, bounded, then a grounded answer.

The loop is a LangGraph state graph with three nodes:

    choose --(tool)--> act --> choose ... --(none / step bound)--> answer

`choose` asks the model for a JSON decision constrained to the tool names (then, in a second
constrained call, for the chosen tool's pydantic argument schema), so that even a 0.5B model
cannot produce a malformed call. `act` runs the LangChain tool; its errors go back to the model
as errors. `answer` renders the reply from named fields of the typed results (`assistant.claims`):
every figure, code, side and verdict is written by code from the field that answers the question,
never typed by the model. The model writes only turns that need no tool, and those pass the claim
check (numbers, codes, verdicts, sides against the conversation's results) or are rebuilt.
A question the conversation already answered is answered from it, without running tools again; one that asks
for something no tool result holds (the patient's blood pressure, the scanner's price: `assistant.no_field`) is
answered plainly that the scan and the tools don't give it, without guessing or running tools;
requests for a diagnosis or a treatment decision (`assistant.decisions`) get the measurements that
bear on them and leave the decision to the treating clinician.

Every step is emitted as a typed `AgentEvent`, which the UI renders, the CLI prints and the
evals record.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from string import Template
from typing import Any, Literal, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from pydantic import ValidationError

from assistant.choosers import NO_TOOL, example_index, make_chooser, previous_request
from assistant.claims import BUNDLED, check_claims, contradictions, pick_claims, render
from assistant.config import Settings, get_settings
from assistant.decisions import CONFIDENT, asks_for_a_decision
from assistant.findings import Claim
from assistant.grounding import (
    GroundingReport,
    check_grounding,
    coordinate_triples,
    invented_arguments,
    invented_texts,
    side_named,
)
from assistant.models.base import ChatModel, Message, ModelError
from assistant.no_field import asks_for_no_field
from assistant.privacy import PrivacyGate
from assistant.segmentation.prompts import structure_named
from assistant.session import ScanSession, ToolRecord
from assistant.terminology.languages import languages_named
from prompts import load_prompt
from tools import build_tools
from tools.base import ScanTool, ToolError

log = logging.getLogger(__name__)

HISTORY_WINDOW = 12  # messages of earlier turns a prompt holds at most
HISTORY_BLOCK = 6  # the window's start moves by this many messages at once (see Agent._history_window)
ANSWER_TOKENS = 200  # answers are one to three sentences; a cap keeps a rambling model from stalling the CPU


class InputError(ValueError):
    """The user's message cannot be processed (empty, too long); the text says what to do."""


# --- events --------------------------------------------------------------------------------


@dataclass
class ToolCallEvent:
    call_id: str
    name: str
    arguments: dict[str, Any]
    kind: Literal["tool_call"] = "tool_call"


@dataclass
class ToolResultEvent:
    call_id: str
    record: ToolRecord
    kind: Literal["tool_result"] = "tool_result"


@dataclass
class TokenEvent:
    text: str
    kind: Literal["token"] = "token"


@dataclass
class AnswerEvent:
    text: str
    grounding: GroundingReport
    replaced: bool = False  # True when the model's wording failed the claim check and was rebuilt from the fields
    claims: list[Claim] = field(default_factory=list)  # the fields the answer states, each rendered by code
    problems: list[str] = field(default_factory=list)  # what the claim check found in the model's wording
    kind: Literal["answer"] = "answer"


AgentEvent = ToolCallEvent | ToolResultEvent | TokenEvent | AnswerEvent


@dataclass
class TurnTrace:
    """Everything one user turn did: for the CLI's --json, the evals and the logs."""

    user: str
    tool_calls: list[ToolRecord] = field(default_factory=list)
    answer: str = ""
    grounding: GroundingReport = field(default_factory=GroundingReport)
    replaced: bool = False
    claims: list[Claim] = field(default_factory=list)
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens the runtime reused from its prompt/KV cache (where it says)
    first_token_seconds: float | None = None  # from the message to the first text shown
    # seconds by stage (STAGES; "tool:<name>" per tool); "other" is what no stage took (graph, checks, logging)
    stages: dict[str, float] = field(default_factory=dict)
    looked_at_volume: bool = False  # a vision model wrote the answer looking at the scan
    volume_note: str | None = None  # why a vision model did not look at it

    def add_time(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "question": self.user,
            "answer": self.answer,
            "tool_calls": [
                {
                    "name": r.name,
                    "arguments": r.arguments,
                    "result": r.result.model_dump(mode="json", exclude_none=True) if r.result else None,
                    "error": r.error,
                    "seconds": round(r.seconds, 3),
                }
                for r in self.tool_calls
            ],
            "grounding": {"numbers": self.grounding.numbers, "ungrounded": self.grounding.ungrounded},
            "claims": [{"field": f"{c.tool}.{c.path}", "text": c.text, "earlier": c.earlier} for c in self.claims],
            "answer_replaced": self.replaced,
            "seconds": round(self.seconds, 2),
            "first_token_seconds": None if self.first_token_seconds is None else round(self.first_token_seconds, 3),
            "stages": {stage: round(seconds, 3) for stage, seconds in self.stages.items()},
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens, "cached": self.cached_prompt_tokens},
        }


# Where a turn's seconds go, in the order a turn runs them; tools add "tool:<name>".
STAGES = ("read_arguments", "choose", "fill_arguments", "answer_render", "answer_prefill", "answer_decode", "other")


# --- the graph -----------------------------------------------------------------------------


class _State(TypedDict, total=False):
    messages: list[Message]
    records: list[ToolRecord]
    pending: tuple[str, dict[str, Any]] | None
    steps: int
    quoted: list[ToolRecord]  # earlier turns' results this turn answers from, without running their tools again
    refers_back: bool  # "what did you say?": what earlier answers stated comes first
    no_field: bool  # asks for something no tool result holds (blood pressure, the scanner's price): said plainly


# "again", "remind me", "the number you gave": the answer is already in the conversation (en/es/fr/de/pt).
_REFERS_BACK = re.compile(
    r"\b(again|remind|repeat|you (just )?(said|gave|told|mentioned|found|measured|reported)|earlier|previous(ly)?|"
    r"last time|what was (that|the)|that (number|figure|value|volume|score|code|distance|measurement|result|thickness))\b"
    r"|\b(otra vez|de nuevo|repet\w*|recu[eé]rd\w*|rappel\w*|encore|r[ée]p[ée]t\w*|noch ?mal|wiederhol\w*|erinner\w*|"
    r"novamente|de novo|lembr\w*)\b",
    re.IGNORECASE,
)
# "that diagnosis", "ese diagnóstico", "ce terme", "diese Diagnose", "esse código": the concept of the last look-up.
_TERM_REFERENCE = re.compile(
    r"\b(that|this|the same|same|ese|esa|este|esta|ce|cette|cet|diese[rsn]?|jene[rsn]?|esse|essa|aquele|aquela)\s+"
    r"(diagnos\w*|term\w*|t[eé]rmino|condition|disease|concept|code|c[oó]digo|enfermedad|maladie|krankheit|doen[çc]a|"
    r"diagn[oó]stico|begriff|finding|hallazgo)\b",
    re.IGNORECASE,
)
_OTHER_SIDE = re.compile(r"\b(other|opposite) (side|one|hemisphere)\b|\bcontralateral\b|\b(otro|autre|anderen?|outro) lado\b",
                         re.IGNORECASE)
_WORDS_TOOLS = ("lookup_term", "translate_text", "normalize_terms")  # about words, not the scan
# Where a request joins clauses: "segment the brain and then look up ...", "..., then ...", "...; ...".
_CLAUSES = re.compile(r"\b(?:and then|and also|and|then|also|plus)\b|[,;]", re.IGNORECASE)
_GENERIC = re.compile(r"\b(describe|summar\w*|overview|tell me about|what (is|do we have)|what kind)\b", re.IGNORECASE)


class Agent:
    """One conversation with one model over one `ScanSession`."""

    def __init__(self, model: ChatModel, session: ScanSession | None = None, settings: Settings | None = None):
        self.model = model
        self.session = session or ScanSession()
        self.settings = settings or get_settings()
        self.tools: dict[str, ScanTool] = {t.name: t for t in build_tools(self.session)}
        self.chooser = make_chooser(self.settings.tool_chooser, model, lambda: self.session.volume)
        self.history: list[Message] = []  # user messages, tool results and answers of past turns
        self.traces: list[TurnTrace] = []
        self._turn = TurnTrace(user="")  # the turn in progress; token counts accumulate here
        self._counted = model.last_usage
        self._graph = self._build_graph()

    # -- public --------------------------------------------------------------------------

    def run(self, user_message: str) -> Iterator[AgentEvent]:
        """Answer one user message, yielding each step as it happens."""
        text = self._validate(user_message)
        trace = TurnTrace(user=text)
        self._turn = trace
        started = time.perf_counter()
        state: _State = {"messages": [Message(role="user", content=text)], "records": [], "pending": None, "steps": 0,
                         "quoted": []}
        limit = 3 * self.settings.max_agent_steps + 5
        for event in self._graph.stream(state, stream_mode="custom", config={"recursion_limit": limit}):
            if isinstance(event, (TokenEvent, AnswerEvent)) and trace.first_token_seconds is None:
                trace.first_token_seconds = time.perf_counter() - started
            if isinstance(event, ToolResultEvent):
                trace.tool_calls.append(event.record)
            if isinstance(event, AnswerEvent):
                trace.answer, trace.grounding, trace.replaced = event.text, event.grounding, event.replaced
                trace.claims = event.claims
            yield event
        trace.seconds = time.perf_counter() - started
        trace.add_time("other", max(trace.seconds - sum(trace.stages.values()), 0.0))
        self.traces.append(trace)
        volume = self.session.volume  # the PHI gate again: the user may have typed the patient's name
        text = json.dumps(trace.to_json(), default=str)[:2000]
        log.info("turn %s", PrivacyGate(self.settings).scrub(text, volume.identifiers if volume else None))

    def warm(self) -> None:
        """Have the model read this conversation's prompt opening (system prompt, tool menu, scan line, history) before
        the first question, so that a turn reads only its own words. Called off the turn, when a scan is shown."""
        self.model.warm(self._context({"messages": []}))

    def ask(self, user_message: str) -> TurnTrace:
        """Run a turn to completion and return its trace (for the CLI and evals)."""
        for _ in self.run(user_message):
            pass
        return self.traces[-1]

    # -- nodes ---------------------------------------------------------------------------

    def _build_graph(self):
        graph = StateGraph(_State)
        graph.add_node("choose", self._choose)
        graph.add_node("act", self._act)
        graph.add_node("answer", self._answer)
        graph.add_edge(START, "choose")
        graph.add_conditional_edges("choose", lambda s: "act" if s["pending"] else "answer", ["act", "answer"])
        graph.add_edge("act", "choose")
        graph.add_edge("answer", END)
        return graph.compile()

    def _choose(self, state: _State) -> dict[str, Any]:
        if state["steps"] >= self.settings.max_agent_steps:
            return {"pending": None}
        request = state["messages"][0].content
        earlier = self._earlier_records(state)
        if not state["records"] and earlier and _REFERS_BACK.search(request) and (
                self._stated() or pick_claims(request, _claims(earlier))[1]):
            return {"pending": None, "quoted": earlier, "refers_back": True}  # "remind me": said before, not measured again
        if not state["records"] and asks_for_no_field(request):
            return {"pending": None, "no_field": True}  # no tool can give it: said plainly, nothing guessed or run
        pending = self.decide(state["messages"], state["records"])
        same = next((r for r in reversed(earlier) if pending and (r.name, r.arguments) == pending
                     and not pending[1].get("refine")), None)
        if same is not None:  # the same call on the same scan earlier in the conversation: its result answers
            return {"pending": None, "quoted": [same]}
        return {"pending": pending}

    def _stated(self) -> list[Claim]:
        """What earlier answers stated, as claims quoted from the conversation."""
        return [c.model_copy(update={"earlier": True}) for t in self.traces for c in t.claims if not c.earlier]

    def _earlier_records(self, state: _State) -> list[ToolRecord]:
        """Successful results of earlier turns on the scan now loaded (loading a scan clears them)."""
        current = {id(r) for r in state["records"]}
        return [r for r in self.session.records if r.result is not None and id(r) not in current]

    def decide(self, messages: list[Message], records: list[ToolRecord] = ()) -> tuple[str, dict[str, Any]] | None:
        """The next tool call (name, arguments) for the turn so far, or None to answer now.

        `messages` starts with the user's message and holds this turn's tool results; `records`
        are this turn's calls. Public so the tool-choice benchmark measures the same path.
        A call whose arguments the request states plainly is read by code (`ScanTool.read_arguments`), and is then the
        whole request: after it, the answer.
        """
        with self._stage("read_arguments"):
            read = self.read_call(messages[0].content)
        if read is not None:
            return None if records else read
        with self._stage("choose"):
            name = self.choose_tool(messages, records)
        if name in ("translate_text", "normalize_terms") and _TERM_REFERENCE.search(messages[0].content) and any(
                r.name in ("lookup_term", "normalize_terms") and r.result is not None for r in self.session.records):
            name = "lookup_term"  # "that diagnosis in Spanish": the concept named earlier, looked up in Spanish
        if name in _WORDS_TOOLS and asks_for_a_decision(messages[0].content, CONFIDENT):
            name = NO_TOOL  # "should I give alteplase?" needs the scan's findings, not the drug's code or translation
        if name == NO_TOOL:
            return None
        state: _State = {"messages": list(messages), "records": list(records), "pending": None, "steps": len(records)}
        with self._stage("fill_arguments"):
            return name, self._fill_arguments(state, self.tools[name])

    def read_call(self, request: str) -> tuple[str, dict[str, Any]] | None:
        """The call a request states plainly ("segment the left hippocampus", "ICD-10 code for stroke"), with no model
        call; None when no tool, or more than one, reads it, or when it joins two different actions ("segment the
        brain and measure the distance from ... to ..."), which the chooser and the model decide.
        "Segment the left hippocampus and tell me its volume" is one action and a question about its result."""
        read = [(name, arguments) for name, tool in self.tools.items()
                if (arguments := type(tool).read_arguments(request)) is not None]
        if len(read) != 1 or self._joins_actions(request, read[0][0]):
            return None
        name, arguments = read[0]
        tool = self.tools[name]
        if name in _WORDS_TOOLS and asks_for_a_decision(request, CONFIDENT):
            return None  # the scan's findings answer a decision request, not a code
        arguments = self._resolved(tool, tool.with_request(arguments, request), request)
        try:
            tool.args_schema.model_validate(arguments)
        except ValidationError:
            return None
        return name, arguments

    def _joins_actions(self, request: str, name: str) -> bool:
        """Whether a clause other than the one asking for `name` asks for an action (another tool's, or the same tool on
        another structure): "and" / "then" / commas join actions, or an action and a question about its result."""
        clauses = [c for c in _CLAUSES.split(request) if c and c.strip()]
        own = self.tools[name].action
        first = next((i for i, c in enumerate(clauses) if own is not None and own.search(c)), 0)
        for clause in clauses[:first] + clauses[first + 1:]:
            if any(t.action is not None and t.action.search(clause) for t in self.tools.values()):
                return True
            if name == "segment" and structure_named(clause):
                return True
        return False

    def choose_tool(self, messages: list[Message], records: list[ToolRecord] = ()) -> str:
        """The chooser's pick for the turn so far: a tool name, or NO_TOOL."""
        called = [r.name for r in records]
        name = self.chooser.choose(self.choice_context(list(messages)), messages[0].content, list(self.tools), called)
        self._count_usage()
        return name if name in self.tools and name not in called else NO_TOOL

    def _fill_arguments(self, state: _State, tool: ScanTool) -> dict[str, Any]:
        """Constrained argument generation, checked twice before the tool runs, then corrected with
        the user's own values where the model's still contradict the request."""
        schema = tool.args_schema.model_json_schema()
        if not schema.get("properties"):
            return {}
        sources = [m.content for m in [*self.history, *state["messages"]]]
        verbatim = [name for name, field in schema["properties"].items() if field.get("verbatim")]
        arguments = self._generate_arguments(state, tool, schema, sources, verbatim)
        request = state["messages"][0].content
        # file-header text reaches the model in tool results: a text or path argument may not come from there
        said = [m.content for m in [*self.history, *state["messages"]] if m.role != "tool"]
        return self._resolved(tool, _with_users_values(arguments, tool, request, sources, verbatim, said), request)

    def _resolved(self, tool: ScanTool, arguments: dict[str, Any], request: str) -> dict[str, Any]:
        """References to earlier turns made concrete: "that diagnosis" is the concept last looked up, "the other
        side" / "the right one" the structure last segmented on the other / named side."""
        earlier = [r for r in self.session.records if r.result is not None]
        if tool.name == "lookup_term" and _TERM_REFERENCE.search(request):
            concept = next((c for r in reversed(earlier) for c in r.result.claims(r.name)
                            if c.path == "hits.0.concept.preferred" or (r.name == "normalize_terms" and c.kind == "code")), None)
            if concept is not None:
                label = concept.value if isinstance(concept.value, str) and ":" not in concept.value else concept.text.split(" [")[0]
                return {**arguments, "query": label}
        if tool.name == "segment" and not coordinate_triples(request):
            target = next((r.result.segmentation.target for r in reversed(earlier) if r.name == "segment"), None)
            side = side_named(target or "")
            if target and side and (_OTHER_SIDE.search(request) or (side_named(request) and not arguments.get("structure"))):
                new_side = side_named(request) or {"left": "right", "right": "left"}[side]
                base = re.sub(r"\b(left|right)\b\s*", "", target.split(" (")[0], flags=re.IGNORECASE).strip()
                return {k: v for k, v in arguments.items() if k not in ("points", "box", "refine")} | {"structure": f"{new_side} {base}"}
        return arguments

    def _generate_arguments(self, state: _State, tool: ScanTool, schema: dict[str, Any], sources: list[str],
                            verbatim: list[str]) -> dict[str, Any]:
        """Optional arguments whose numbers appear nowhere in the conversation are dropped (the tool's
        default applies: "the centre" stays the centre); arguments failing the schema's validators or
        made up get one repair round with the problem shown to the model."""
        optional = {name for name, field in tool.args_schema.model_fields.items() if not field.is_required()}
        error = ""
        arguments: dict[str, Any] = {}
        rounds = 1 if self.model.decider else 2  # the decider's prompt has no place for the problem: a second round repeats the first
        for _ in range(rounds):
            try:
                arguments = self._model_arguments(state, tool, schema, error)
            except ModelError as exc:  # e.g. cut off mid-JSON: say so, ask once more
                self._count_usage()
                log.warning("argument generation for %s failed: %s", tool.name, exc)
                error, arguments = "Your previous answer was not complete JSON. Reply with short, complete JSON.", {}
                continue
            self._count_usage()
            invented = invented_arguments(arguments, sources)  # copied texts are replaced afterwards, not retried
            arguments = {k: v for k, v in arguments.items() if not (k in invented and k in optional)}
            try:
                tool.args_schema.model_validate(arguments)
            except ValidationError as exc:
                error = f"Your previous arguments {json.dumps(arguments)} were invalid: {_brief(exc)}. Fix them."
                continue
            if not invented or set(invented) <= optional:
                return arguments
            error = f"These values were not given by the user: {', '.join(invented)}. Use only values from the conversation."
        return arguments  # still invalid: the tool reports the validation error to the model

    def _model_arguments(self, state: _State, tool: ScanTool, schema: dict[str, Any], error: str) -> dict[str, Any]:
        """The model's arguments: a model that decides itself fills them looking at the scan, the text model from
        the agent's argument prompt (with the last round's problem, if any)."""
        if self.model.decider is not None:
            previous = previous_request([*self.history, *state["messages"]])
            return self.model.decider.fill_arguments(state["messages"][0].content, previous, tool.name, schema, self.session.volume)
        return self.model.complete_json(self.argument_messages(state["messages"], tool, error), schema, max_new_tokens=160)

    def choice_context(self, messages: list[Message]) -> list[Message]:
        """What a chooser sees before its own instruction; public so fine-tuning trains on exactly this."""
        return self._context(_State(messages=messages, records=[], pending=None, steps=0))

    def argument_messages(
        self, messages: list[Message], tool: ScanTool, error: str = "", exclude: str | None = None
    ) -> list[Message]:
        """The prompt that fills `tool`'s arguments, public so fine-tuning trains on exactly this;
        `exclude` (an example id) keeps a training example out of its own retrieved examples."""
        nearest = [e for e, _ in example_index().nearest(messages[0].content, 5, [tool.name]) if e.id != exclude][:4]
        examples = "\n".join(f'- "{e.text}" -> {json.dumps(e.arguments)}' for e in nearest)
        prompt = Template(load_prompt("agent/fill_arguments.md")).substitute(tool=tool.name, examples=examples, error=error)
        card = f"The tool {tool.name}:\n{tool.description}"  # after the shared prefix: other calls reuse its cache
        return self._context(_State(messages=messages, records=[], pending=None, steps=0)) + [
            Message(role="user", content=f"{card}\n\n{prompt}")
        ]

    def _act(self, state: _State) -> dict[str, Any]:
        write = get_stream_writer()
        name, arguments = state["pending"]
        call_id = uuid.uuid4().hex[:8]
        write(ToolCallEvent(call_id, name, arguments))
        record = ToolRecord(name=name, arguments=arguments)
        started = time.perf_counter()
        try:
            message = self.tools[name].invoke({"name": name, "args": arguments, "id": call_id, "type": "tool_call"})
            record.result = message.artifact
            content = message.content
        except (ToolError, ValidationError, ValueError) as exc:
            record.error = _brief(exc) if isinstance(exc, ValidationError) else str(exc)
            content = f"ERROR: {record.error}"
        except Exception as exc:  # a tool bug must not end the conversation
            log.exception("tool %s crashed", name)
            record.error = f"The {name} tool failed unexpectedly ({type(exc).__name__})."
            content = f"ERROR: {record.error}"
        record.seconds = time.perf_counter() - started
        self._turn.add_time(f"tool:{name}", record.seconds)
        self.session.records.append(record)
        write(ToolResultEvent(call_id, record))
        tool_message = Message(role="tool", name=name, content=content)
        return {
            "messages": state["messages"] + [tool_message],
            "records": state["records"] + [record],
            "pending": None,
            "steps": state["steps"] + 1,
        }

    def _answer(self, state: _State) -> dict[str, Any]:
        """The answer (a turn answers once): the model's prefill and decode are their own stages, the rest is rendering."""
        started = time.perf_counter()
        update = self._answer_turn(state)
        model = sum(self._turn.stages.get(stage, 0.0) for stage in ("answer_prefill", "answer_decode"))
        self._turn.add_time("answer_render", time.perf_counter() - started - model)
        return update

    def _answer_turn(self, state: _State) -> dict[str, Any]:
        write = get_stream_writer()
        request = state["messages"][0].content
        records, quoted = state["records"], state.get("quoted", [])
        decision = asks_for_a_decision(request)
        conversation = [m.content for m in [*self.history, *state["messages"]] if m.role in ("user", "assistant")]
        direct = [r.result.direct_answer() if r.result is not None else None for r in records]
        failures = [f"The {r.name} tool could not do it: {r.error}" for r in records if r.error]
        now = _claims([r for r in records if r.result is not None])
        earlier = [c.model_copy(update={"earlier": True}) for c in _claims(quoted or self._earlier_records(state))]
        draft, problems, replaced = "", [], False
        if records and all(direct):  # e.g. a translation: shown exactly, not reworded
            picked, text = now, "\n\n".join(direct)
        elif state.get("no_field"):
            picked, text = [], load_prompt("agent/no_field.md")
        elif now or quoted:
            stated = self._stated()
            picked, matched = pick_claims(request, stated) if state.get("refers_back") and stated else ([], False)
            if state.get("refers_back") and stated and not matched:  # "what was that number again?": the last answer's
                last = next(t.claims for t in reversed(self.traces) if t.claims)
                picked, matched = [c.model_copy(update={"earlier": True}) for c in last], True
            if not matched:
                picked, matched = pick_claims(request, now or earlier)
            if not matched and not _GENERIC.search(request) and not {c.tool for c in picked} & BUNDLED:
                failures.insert(0, "No field of the results answers exactly that; here is what the tools reported.")
            same_calls = [e for e in self._earlier_records(state) if any((e.name, e.arguments) == (r.name, r.arguments) for r in records)]
            failures[:0] = contradictions([*picked, *(c.model_copy(update={"earlier": True}) for c in _claims(same_calls))])
            text = render(picked)
        else:  # no result this turn: the conversation may answer, or the model words a turn that needs no tool
            failed = {r.name for r in records if r.error}
            # for a failed call, only that tool's earlier results can stand in (not the spacing for a segmentation)
            pool = [c for c in earlier if c.tool in failed] if failed else earlier
            picked, matched = pick_claims(request, pool) if pool else ([], False)
            picked = picked if matched else []
            if picked or decision or failures:
                text = render(picked)
            else:
                draft = self._model_answer(state, write)
                problems = check_claims(draft, earlier, conversation) if draft else ["empty answer"]
                replaced = bool(problems)
                text = _no_claim_answer(draft, problems)
        if self._turn.looked_at_volume and draft and not replaced:
            from assistant.vlm.backends import model_observation

            self.session.observations.append(model_observation(draft, self.model.name, request))
        if failures:
            text = f"{text}\n\n" + "\n".join(failures) if text else "\n".join(failures)
        if decision:  # said in code, every time: the decision belongs to the treating clinician
            text = f"{text}\n\n{load_prompt('agent/decision_notice.md').strip()}".strip()
        if not draft or replaced:
            write(TokenEvent(text))
        report = check_grounding(text, [c.text for c in [*picked, *earlier]] + conversation + failures)
        write(AnswerEvent(text=text, grounding=report, replaced=replaced, claims=picked, problems=problems))
        self.history.extend(state["messages"] + [Message(role="assistant", content=text)])
        return {"messages": state["messages"] + [Message(role="assistant", content=text)]}

    def _model_answer(self, state: _State, write) -> str:
        messages = self._context(state) + [Message(role="user", content=load_prompt("agent/answer.md"))]
        pieces: list[str] = []
        started = time.perf_counter()
        first: float | None = None
        for piece in self.model.stream(messages, volume=self.session.volume, max_new_tokens=ANSWER_TOKENS):
            first = first or time.perf_counter()
            pieces.append(piece)
        ended = time.perf_counter()
        self._turn.add_time("answer_prefill", (first or ended) - started)  # the prompt read, up to the first token
        self._turn.add_time("answer_decode", ended - (first or ended))
        self._count_usage()
        # read in the thread that streamed: the model is shared, these flags are per thread
        self._turn.looked_at_volume = getattr(self.model, "last_looked_at_volume", False)
        self._turn.volume_note = getattr(self.model, "last_volume_note", None)
        return "".join(pieces).strip()

    def _count_usage(self) -> None:
        """Add the model's last generation to the turn (backends make a new `Usage` per generation)."""
        usage = self.model.last_usage
        if usage is self._counted:
            return
        self._counted = usage
        self._turn.prompt_tokens += usage.prompt_tokens
        self._turn.completion_tokens += usage.completion_tokens
        self._turn.cached_prompt_tokens += usage.cached_prompt_tokens or 0

    @contextmanager
    def _stage(self, stage: str) -> Iterator[None]:
        """Add the seconds of the block to the turn's `stage`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._turn.add_time(stage, time.perf_counter() - started)

    # -- prompts -------------------------------------------------------------------------

    def _context(self, state: _State) -> list[Message]:
        """System prompt (with the tool menu) + recent history + this turn: the same opening for every call of a
        conversation, so that the runtime's prompt/KV cache reuses it and each call reads only what is new (prefill
        dominates latency on a CPU). A step's own text (the tool card, its instruction) comes after it."""
        system = Template(load_prompt("agent/system.md")).substitute(scan=self._scan_context(), tools=self._tool_menu())
        messages = [Message(role="system", content=system.strip()), *self._history_window(), *state["messages"]]
        volume = self.session.volume  # the PHI gate's last line: no identifier of the scan reaches a model
        return PrivacyGate(self.settings).messages(messages, volume.identifiers if volume else None)

    def _history_window(self) -> list[Message]:
        """The last HISTORY_WINDOW messages or fewer, starting at a user message, without tool results; the start moves
        by whole blocks of HISTORY_BLOCK messages, so successive turns open with the same history (a sliding window would
        change the prompt from its first history message on, and with it everything the cache holds after it)."""
        excess = len(self.history) - HISTORY_WINDOW
        start = 0 if excess <= 0 else (excess // HISTORY_BLOCK + 1) * HISTORY_BLOCK
        while start < len(self.history) and self.history[start].role != "user":
            start += 1
        # earlier turns' tool results stay out: their answers state what counts, the records keep the rest (for "remind
        # me", "the other side"), and a conversation of look-ups would otherwise make every prompt hundreds of tokens longer
        return [m for m in self.history[start:] if m.role != "tool"]

    def _tool_menu(self) -> str:
        return "Tools you can call:\n" + "\n".join(
            f"- {t.name}: {t.description.split(chr(10))[0]}" for t in self.tools.values()
        )

    def _scan_context(self) -> str:
        if self.session.volume is None:
            return "No scan is loaded yet; tools that need a scan will fail until the user uploads one."
        v = self.session.volume
        dims = " x ".join(map(str, v.shape))
        return f"Loaded scan: {v.name}, {v.modality.value}, {dims} voxels (voxel indices start at zero)."

    def _validate(self, user_message: str) -> str:
        text = (user_message or "").strip()
        if not text:
            raise InputError("The message is empty: type a question about the scan.")
        limit = self.settings.max_message_chars
        if len(text) > limit:
            raise InputError(
                f"The message is {len(text):,} characters long; the limit is {limit:,}. "
                "Shorten it, or ask about one part at a time."
            )
        return text


def _brief(exc: ValidationError | Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _with_users_values(arguments: dict[str, Any], tool: ScanTool, request: str, sources: list[str],
                       verbatim: list[str], said: list[str]) -> dict[str, Any]:
    """The user's own words, language and points where the model's arguments contradict or omit them,
    then what the tool itself reads from the request (`ScanTool.with_request`). Verbatim texts must
    come from what was `said` (the user's and the assistant's messages, not tool results)."""
    arguments = dict(arguments)
    for name in invented_texts(arguments, verbatim, said):  # the model copied an example's text or a header's
        value = tool.users_words(name, request)
        log.info("argument %s of %s not from the conversation; using %r", name, tool.name, value)
        if value is None:
            arguments.pop(name)
        else:
            arguments[name] = value
    fields = tool.args_schema.model_fields
    named = [code for code in languages_named(request) if code != "en"]
    for name in ("target_language", "language"):  # "into Spanish" means es, whatever the model copied
        if name in fields and len(named) == 1:
            arguments[name] = named[0]
        elif name in fields and not named and not fields[name].is_required():
            arguments.pop(name, None)  # no language asked for: the tool's default, not a copied one
    schema = tool.args_schema.model_json_schema()["properties"]
    points = [name for name, field in schema.items() if _is_point(field)]
    wrong = [name for name in points
             if not isinstance(arguments.get(name), list) or name in invented_arguments(arguments, sources)]
    if wrong and len(triples := coordinate_triples(request)) >= len(points):  # the user's points, in order
        log.info("coordinates %s of %s missing or not from the conversation; using the request's points", wrong, tool.name)
        arguments.update(zip(points, triples))
    return tool.with_request(arguments, request)


def _is_point(field: dict[str, Any]) -> bool:
    """A schema field holding one x, y, z point."""
    return any(option.get("type") == "array" and option.get("minItems") == option.get("maxItems") == 3
               for option in field.get("anyOf", [field]))


def _claims(records: list[ToolRecord]) -> list[Claim]:
    return [claim for r in records if r.result is not None for claim in r.result.claims(r.name)]


def _no_claim_answer(draft: str, problems: list[str]) -> str:
    """The model's wording when it states nothing the conversation does not support; otherwise what it can say."""
    if not problems:
        return draft
    log.info("model answer rejected by the claim check: %s", "; ".join(problems))
    return ("I can't state that: no tool in this conversation measured it. Ask me to measure something on the scan "
            "(its geometry, an intensity, a distance, a structure's volume, an anomaly screen) or to look up a term.")
