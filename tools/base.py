"""What every ScanChat tool is made of.

A tool module in `tools/` holds, in this order:

1. ``<Name>Args``: a pydantic model of the arguments the model fills (this is the JSON schema
   the model is constrained to, so field descriptions are written for the model);
2. a typed result, a subclass of `ToolResult` whose `summary()` is what the model reads and whose fields
   each declare their clinical meaning (`assistant.findings.meaning`): answers are rendered from them (`claims()`);
3. a plain-Python function doing the work (``describe_scan(volume) -> ScanDescription``), used
   by the CLI, the report writer and tests without any agent;
4. a `ScanTool` subclass wiring 1-3 into LangChain, with its description (a short "model card":
   what it does, inputs, when not to use it) in ``prompts/tools/<name>.md``;
5. optionally ``add_cli(subparsers)`` registering a ``scanchat <command>``.

Tools never import the UI. Errors a user can act on are raised as `ToolError` and reach the
model (and the chat) as an error message instead of a crash.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict

from assistant.findings import Claim, Finding, FieldMeaning
from assistant.grounding import users_passage
from prompts import load_prompt


class ToolError(ValueError):
    """A tool could not do what was asked; the message says why, in words a clinician can act on."""


class NoScanError(ToolError):
    """The tool needs a scan and none is loaded."""


class ToolResult(BaseModel):
    """Base of every typed tool result.

    Results are pydantic models so that the UI, the report writer and evals read fields, never
    re-parse text. `summary()` is the compact text the model sees and must quote from.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def summary(self) -> str:
        return self.model_dump_json(exclude_none=True)

    def findings(self, arguments: dict[str, Any]) -> list[Finding]:
        """What of this result belongs in a report (none by default); `arguments` are the call's."""
        return []

    def claims(self, tool: str) -> list[Claim]:
        """Every statement an answer may make from this result, one per declared field (see `assistant.findings.meaning`)."""
        return field_claims(self, tool)

    def direct_answer(self) -> str | None:
        """The answer itself, when no model should reword it (a translation must reach the user exactly);
        None lets the model phrase the answer from `summary()`."""
        return None


MAX_LISTED = 3  # items of a list field (regions, hits) an answer may cite


def field_claims(model: BaseModel, tool: str, prefix: str = "", context: str = "") -> list[Claim]:
    """Claims of the fields of `model` that declare a meaning; nested models and lists of them are walked,
    their parent's description (or a list item's position) added to each meaning so it stays unambiguous."""
    claims: list[Claim] = []
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        value = getattr(model, name)
        if value is None or extra.get("answer", False) is None:
            continue
        path = f"{prefix}{name}"
        if "answer" not in extra:
            nested = f"{info.description}{', ' + context if context else ''}" if info.description else context
            if isinstance(value, BaseModel):
                claims += field_claims(value, tool, f"{path}.", nested)
            elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
                for index, item in enumerate(value[:MAX_LISTED]):
                    claims += field_claims(item, tool, f"{path}.{index}.", f"{nested} #{index + 1}")
            continue
        about = FieldMeaning(**extra["answer"])
        unit = getattr(model, about.unit[1:], "") if about.unit.startswith("@") else about.unit  # "@unit": a sibling field
        described = f"{info.description}{', ' + context if context else ''}"
        claims.append(Claim(tool=tool, path=path, meaning=described, kind=about.kind, value=value,
                            text=render_value(value, about, unit), headline=about.headline, asked_as=about.asked_as))
        if about.parts and isinstance(value, (tuple, list)):
            for i, (part, v) in enumerate(zip(about.parts, value)):
                said, *asked = part.split("|")  # "spacing between slices (z)|slice interval": its meaning, then ways of asking
                claims.append(Claim(tool=tool, path=f"{path}.{i}", meaning=f"{said}{', ' + context if context else ''}",
                                    kind=about.kind, value=v, text=render_value(v, about, unit), asked_as=asked))
    return claims


def render_value(value: Any, about: FieldMeaning, unit: str = "") -> str:
    """A field's value as an answer writes it: formatted by its declared spec, with its unit."""
    if isinstance(value, bool):
        return about.says[int(value)] if about.says else ("yes" if value else "no")
    if isinstance(value, (tuple, list)):
        return " x ".join(render_value(v, about) for v in value) + (f" {unit}" if unit else "")
    text = format(value, about.fmt) if isinstance(value, (int, float)) else str(value)
    return f"{text} {unit}".strip()


class ScanTool(BaseTool):
    """A LangChain tool bound to one conversation's `ScanSession`.

    Subclasses set `name`, `args_schema` and implement `execute(args)`; the description is read
    from ``prompts/tools/<name>.md``. `invoke` returns a ToolMessage whose content is the
    result's summary and whose artifact is the typed result.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    session: Any  # assistant.session.ScanSession (Any: avoids a circular import at class creation)
    description: str = ""
    response_format: str = "content_and_artifact"
    needs_scan: ClassVar[bool] = True
    # The words that ask for this tool's action ("segment", "distance"): a request joining two clauses that ask for
    # two different actions goes to the model, not to `read_arguments`.
    action: ClassVar[re.Pattern[str] | None] = None

    def model_post_init(self, context: Any) -> None:
        if not self.description:
            self.description = load_prompt(f"tools/{self.name}.md")

    def users_words(self, field: str, request: str) -> Any:
        """The user's own value for a verbatim `field` that the model did not copy from the conversation:
        the quoted or handed-over part of the request for a required text, None (the default applies) otherwise."""
        return users_passage(request) if self.args_schema.model_fields[field].is_required() else None

    @classmethod
    def read_arguments(cls, request: str) -> dict[str, Any] | None:
        """The arguments of a request that asks for this tool and states them plainly ("segment the left
        hippocampus"), read by code so that no model call chooses the tool or fills them; None when the request
        does not (then the chooser and the model decide)."""
        return None

    def with_request(self, arguments: dict[str, Any], request: str) -> dict[str, Any]:
        """The model's arguments corrected by what the request plainly says, where the tool knows how to
        read it (a side, a follow-up on the last mask)."""
        return arguments

    def execute(self, args: BaseModel) -> ToolResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, **kwargs: Any) -> tuple[str, ToolResult]:
        if self.needs_scan:
            self.session.require_volume()
        result = self.execute(self.args_schema(**kwargs))
        return result.summary(), result
