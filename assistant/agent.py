"""The agent loop: model -> tool calls -> results -> model, bounded, then a grounded answer.

The loop is a LangGraph state graph with three nodes:

    choose --(tool)--> act --> choose ... --(none / step bound)--> answer

`choose` asks the model for a JSON decision constrained to the tool names (then, in a second
constrained call, for the chosen tool's pydantic argument schema), so that even a 0.5B model
cannot produce a malformed call. `act` runs the LangChain tool; its errors go back to the model
as errors. `answer` streams the reply, which is then checked: a number no tool produced
replaces the model's wording with the tools' own summaries.

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
from dataclasses import dataclass, field
from string import Template
from typing import Any, Literal, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from pydantic import ValidationError

from assistant.choosers import NO_TOOL, example_index, make_chooser
from assistant.config import Settings, get_settings
from assistant.grounding import (
    GroundingReport,
    check_grounding,
    coordinate_triples,
    invented_arguments,
    invented_texts,
    numbers_in,
)
from assistant.models.base import ChatModel, Message, ModelError
from assistant.privacy import PrivacyGate
from assistant.session import ScanSession, ToolRecord
from assistant.terminology.languages import languages_named
from prompts import load_prompt
from tools import build_tools
from tools.base import ScanTool, ToolError

log = logging.getLogger(__name__)

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
    replaced: bool = False  # True when the model's wording was replaced by the tools' summaries
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
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

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
            "answer_replaced": self.replaced,
            "seconds": round(self.seconds, 2),
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
        }


# --- the graph -----------------------------------------------------------------------------


class _State(TypedDict):
    messages: list[Message]
    records: list[ToolRecord]
    pending: tuple[str, dict[str, Any]] | None
    steps: int


_DECISION_REQUEST = re.compile(
    r"\b(diagnos\w*|prognos\w*|differential)\b"
    r"|\bdo(es)? (he|she|they|the patient|this patient|my patient|it) (have|suffer)\b"
    r"|\b(is|could) (it|this|that) (be )?(a |an )?(cancer|malignan\w*|benign|tumou?r|metasta\w*|alzheimer\w*|dementia|stroke|ms|lymphoma)\b"
    r"|\b(should|shall|can|could|do|must) (we|i|you|they) (operate|treat|start|stop|give|prescribe|discharge|admit|"
    r"anticoagulate|thrombolyse|thrombolyze|biopsy|resect|irradiate)\b"
    r"|\bshould (we|i|they|the patient)\b.*\b(theatre|theater|surgery|operat\w*|treat\w*|admit\w*|discharg\w*|give|"
    r"start|stop|anticoagul\w*|thromboly\w*|biops\w*|intubat\w*|transfer\w*|send)\b"
    r"|\b(dose|dosage|dosing)\b|\b(need|needs|require|requires) (surgery|an operation|treatment|a biopsy)\b"
    r"|\b(treatment|therapy|management) (plan|decision|options?)\b",
    re.IGNORECASE,
)


def asks_for_a_decision(request: str) -> bool:
    """A request for a diagnosis or a treatment decision, which the answer must decline however it is phrased."""
    return bool(_DECISION_REQUEST.search(request))


class Agent:
    """One conversation with one model over one `ScanSession`."""

    def __init__(self, model: ChatModel, session: ScanSession | None = None, settings: Settings | None = None):
        self.model = model
        self.session = session or ScanSession()
        self.settings = settings or get_settings()
        self.tools: dict[str, ScanTool] = {t.name: t for t in build_tools(self.session)}
        self.chooser = make_chooser(self.settings.tool_chooser, model)
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
        state: _State = {"messages": [Message(role="user", content=text)], "records": [], "pending": None, "steps": 0}
        limit = 3 * self.settings.max_agent_steps + 5
        for event in self._graph.stream(state, stream_mode="custom", config={"recursion_limit": limit}):
            if isinstance(event, ToolResultEvent):
                trace.tool_calls.append(event.record)
            if isinstance(event, AnswerEvent):
                trace.answer, trace.grounding, trace.replaced = event.text, event.grounding, event.replaced
            yield event
        trace.seconds = time.perf_counter() - started
        self.traces.append(trace)
        volume = self.session.volume  # the PHI gate again: the user may have typed the patient's name
        text = json.dumps(trace.to_json(), default=str)[:2000]
        log.info("turn %s", PrivacyGate(self.settings).scrub(text, volume.identifiers if volume else None))

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
        return {"pending": self.decide(state["messages"], state["records"])}

    def decide(self, messages: list[Message], records: list[ToolRecord] = ()) -> tuple[str, dict[str, Any]] | None:
        """The next tool call (name, arguments) for the turn so far, or None to answer now.

        `messages` starts with the user's message and holds this turn's tool results; `records`
        are this turn's calls. Public so the tool-choice benchmark measures the same path.
        """
        name = self.choose_tool(messages, records)
        if name == NO_TOOL:
            return None
        state: _State = {"messages": list(messages), "records": list(records), "pending": None, "steps": len(records)}
        return name, self._fill_arguments(state, self.tools[name])

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
        # file-header text reaches the model in tool results: a text or path argument may not come from there
        said = [m.content for m in [*self.history, *state["messages"]] if m.role != "tool"]
        return _with_users_values(arguments, tool, state["messages"][0].content, sources, verbatim, said)

    def _generate_arguments(self, state: _State, tool: ScanTool, schema: dict[str, Any], sources: list[str],
                            verbatim: list[str]) -> dict[str, Any]:
        """Optional arguments whose numbers appear nowhere in the conversation are dropped (the tool's
        default applies: "the centre" stays the centre); arguments failing the schema's validators or
        made up get one repair round with the problem shown to the model."""
        optional = {name for name, field in tool.args_schema.model_fields.items() if not field.is_required()}
        error = ""
        arguments: dict[str, Any] = {}
        for _ in range(2):
            messages = self.argument_messages(state["messages"], tool, error)
            try:
                arguments = self.model.complete_json(messages, schema, max_new_tokens=160)
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

    def choice_context(self, messages: list[Message]) -> list[Message]:
        """What a chooser sees before its own instruction; public so fine-tuning trains on exactly this."""
        return self._context(_State(messages=messages, records=[], pending=None, steps=0), self._tool_menu())

    def argument_messages(
        self, messages: list[Message], tool: ScanTool, error: str = "", exclude: str | None = None
    ) -> list[Message]:
        """The prompt that fills `tool`'s arguments, public so fine-tuning trains on exactly this;
        `exclude` (an example id) keeps a training example out of its own retrieved examples."""
        nearest = [e for e, _ in example_index().nearest(messages[0].content, 5, [tool.name]) if e.id != exclude][:4]
        examples = "\n".join(f'- "{e.text}" -> {json.dumps(e.arguments)}' for e in nearest)
        prompt = Template(load_prompt("agent/fill_arguments.md")).substitute(tool=tool.name, examples=examples, error=error)
        card = f"The tool {tool.name}:\n{tool.description}"
        return self._context(_State(messages=messages, records=[], pending=None, steps=0), card) + [
            Message(role="user", content=prompt)
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
        write = get_stream_writer()
        results = [r.result for r in state["records"]]
        direct = [result.direct_answer() if result is not None else None for result in results]
        answered_directly = bool(direct) and all(direct)  # e.g. a translation: shown exactly, not reworded
        if answered_directly:
            text = "\n\n".join(direct)
            write(TokenEvent(text))
        else:
            text = self._model_answer(state, write)
        if getattr(self.model, "last_looked_at_volume", False) and text and not answered_directly:
            from assistant.vlm.backends import model_observation

            self.session.observations.append(model_observation(text, self.model.name, state["messages"][0].content))
        sources = [m.content for m in state["messages"]] + [self._scan_context()]
        report = check_grounding(text, sources)
        replaced = False
        if not report.ok or not text:
            text = _fallback_answer(text, report, state["records"])
            replaced = True
        measured = [r.result.summary() for r in state["records"]
                    if r.result is not None and any(f.quantities for f in r.result.findings(r.arguments))]
        if measured and not replaced and not answered_directly and not numbers_in(text):
            text = _appended(text, "Measured: " + "\n".join(measured), write)  # the answer must carry the tools' figures
        failures = [f"The {r.name} tool could not do it: {r.error}" for r in state["records"]
                    if r.error and r.error not in text]
        if failures and not replaced:  # said in code: a small model smooths a failure over
            text = _appended(text, "\n".join(failures), write)
        if not replaced and not answered_directly and (missing := _missing_key_facts(text, state["records"])):
            text = _appended(text, "\n".join(missing), write)  # a code or requested label the model's wording dropped
        if asks_for_a_decision(state["messages"][0].content) and "clinician" not in text.lower():
            notice = load_prompt("agent/decision_notice.md").strip()  # said in code: a small model forgets the rule
            text = _appended(text, notice, write)
        write(AnswerEvent(text=text, grounding=report, replaced=replaced))
        self.history.extend(state["messages"] + [Message(role="assistant", content=text)])
        return {"messages": state["messages"] + [Message(role="assistant", content=text)]}

    def _model_answer(self, state: _State, write) -> str:
        messages = self._context(state) + [Message(role="user", content=load_prompt("agent/answer.md"))]
        pieces: list[str] = []
        for piece in self.model.stream(messages, volume=self.session.volume, max_new_tokens=ANSWER_TOKENS):
            pieces.append(piece)
            write(TokenEvent(piece))
        self._count_usage()
        return "".join(pieces).strip()

    def _count_usage(self) -> None:
        """Add the model's last generation to the turn (backends make a new `Usage` per generation)."""
        usage = self.model.last_usage
        if usage is self._counted:
            return
        self._counted = usage
        self._turn.prompt_tokens += usage.prompt_tokens
        self._turn.completion_tokens += usage.completion_tokens

    # -- prompts -------------------------------------------------------------------------

    def _context(self, state: _State, tools: str = "") -> list[Message]:
        """System prompt + recent history + this turn. Each step gets only the tool text it needs
        (a line per tool to choose, one full model card to fill arguments, none to answer), which
        keeps prompts short: prefill dominates latency on a CPU."""
        system = Template(load_prompt("agent/system.md")).substitute(scan=self._scan_context(), tools=tools)
        messages = [Message(role="system", content=system.strip()), *self.history[-12:], *state["messages"]]
        volume = self.session.volume  # the PHI gate's last line: no identifier of the scan reaches a model
        return PrivacyGate(self.settings).messages(messages, volume.identifiers if volume else None)

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


def _appended(text: str, addition: str, write) -> str:
    """The answer with a paragraph the agent adds itself, streamed like the rest."""
    write(TokenEvent(f"\n\n{addition}"))
    return f"{text}\n\n{addition}".strip()


def _missing_key_facts(answer: str, records: list[ToolRecord]) -> list[str]:
    """The sentences stating the tools' key values that the answer does not contain, each once."""
    folded = answer.casefold()
    sentences = [sentence for r in records if r.result is not None
                 for value, sentence in r.result.key_facts().items() if value.casefold() not in folded]
    return list(dict.fromkeys(sentences))


def _fallback_answer(draft: str, report: GroundingReport, records: list[ToolRecord]) -> str:
    """The tools' own words, when the model's wording cannot be trusted."""
    lines = [r.result.summary() for r in records if r.result is not None]
    lines += [f"The {r.name} tool reported an error: {r.error}" for r in records if r.error]
    if not lines:
        if draft and report.ungrounded:
            return "I can't state those figures: no tool measured them. Ask me to measure something on the scan."
        return "I could not produce an answer. Try rephrasing the question."
    return "\n".join(lines)
