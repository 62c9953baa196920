"""What a scenario file may say: the scan, the turns, and what each turn must (not) do.

Every model forbids unknown keys, so a typo ("tool_called") is an error with a file and line
instead of an expectation that silently never runs. Shorthands keep scenarios readable:
``scan: ct-head`` names a sample, ``- describe_scan`` expects a tool with any arguments, and a
bare argument value means ``equals``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

Language = Literal["en", "es", "pt", "de", "fr"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _exactly_one(model: BaseModel, names: tuple[str, ...]) -> None:
    given = [name for name in names if name in model.model_fields_set]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(names)} (got {', '.join(given) or 'none'})")


def _valid_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return pattern


# --- scans ---------------------------------------------------------------------------------


class ScanRef(_Strict):
    """A scan to load: a bundled sample or a file, optionally with DICOM text fields rewritten.

    `dicom_fields` writes a copy of a DICOM sample with, say, an instruction hidden in
    SeriesDescription, to check that header text is treated as data, not as orders.
    """

    sample: str | None = None
    path: Path | None = None
    dicom_fields: dict[str, str] = Field(default_factory=dict, description="DICOM keyword -> text, set in a copy")
    transform: list[Literal["reorient", "resample", "crop", "rename"]] = Field(
        default_factory=list, description="applied in order after loading (evals/harness/transforms.py)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value} if ("/" in value or "." in value) else {"sample": value}
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ScanRef:
        _exactly_one(self, ("sample", "path"))
        return self

    @field_validator("sample")
    @classmethod
    def _known_sample(cls, name: str | None) -> str | None:
        try:
            from assistant.scans.samples import SAMPLES
        except ImportError:  # the sample registry is optional for validation
            return name
        if name is not None and name not in SAMPLES:
            raise ValueError(f"unknown sample {name!r}; known samples: {', '.join(sorted(SAMPLES))}")
        return name

    @field_validator("dicom_fields")
    @classmethod
    def _dicom_keywords(cls, fields: dict[str, str]) -> dict[str, str]:
        from pydicom.datadict import tag_for_keyword

        unknown = [keyword for keyword in fields if tag_for_keyword(keyword) is None]
        if unknown:
            raise ValueError(f"not DICOM keywords: {', '.join(unknown)} (use names such as SeriesDescription)")
        return fields

    def label(self) -> str:
        return (self.sample or str(self.path)) + "".join(f" +{t}" for t in self.transform)


# --- tool expectations ---------------------------------------------------------------------


class ArgConstraint(_Strict):
    """One argument of an expected tool call; a bare value in YAML means `equals`."""

    equals: Any = None
    one_of: list[Any] | None = None
    within: float | list[float] | list[list[float]] | None = Field(
        None, description="a number, a point or a list of points; each number within tolerance"
    )
    tolerance: float = Field(0.0, ge=0)
    regex: str | None = None
    contains: str | None = Field(None, description="case-insensitive substring of a text argument")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else {"equals": value}

    @model_validator(mode="after")
    def _one_kind(self) -> ArgConstraint:
        _exactly_one(self, ("equals", "one_of", "within", "regex", "contains"))
        if "tolerance" in self.model_fields_set and "within" not in self.model_fields_set:
            raise ValueError("tolerance only applies to within")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        return pattern if pattern is None else _valid_regex(pattern)

    def describe(self) -> str:
        if "within" in self.model_fields_set:
            return f"within {self.tolerance} of {self.within}"
        if self.one_of is not None:
            return f"one of {self.one_of}"
        if self.regex is not None:
            return f"matches /{self.regex}/"
        if self.contains is not None:
            return f"contains {self.contains!r}"
        return f"equals {self.equals!r}"


class ToolExpectation(_Strict):
    """A tool the turn must call, with constraints on some of its arguments."""

    tool: str
    args: dict[str, ArgConstraint] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"tool": value} if isinstance(value, str) else value


# --- answer assertions ---------------------------------------------------------------------


class ContainsCheck(_Strict):
    contains: str = Field(min_length=1)
    case_sensitive: bool = False


class ContainsAnyCheck(_Strict):
    contains_any: list[str] = Field(min_length=1)
    case_sensitive: bool = False


class NotContainsCheck(_Strict):
    not_contains: list[str] = Field(min_length=1)
    case_sensitive: bool = False

    @field_validator("not_contains", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class RegexCheck(_Strict):
    regex: str
    case_sensitive: bool = False

    @field_validator("regex")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        return _valid_regex(pattern)


class NumberSource(_Strict):
    """A figure a tool produced: `field` is a dotted path into its typed result (``intensity.p50``, ``spacing_mm.2``)."""

    tool: str
    field: str = Field(pattern=r"^[A-Za-z_]\w*(\.\w+)*$")
    tolerance: float = Field(0.0, ge=0, description="absolute")
    relative: float = Field(0.0, ge=0, description="relative, e.g. 0.01 for 1 %")


class NumberFromCheck(_Strict):
    number_from: NumberSource


class ConceptRef(_Strict):
    """A concept the answer must mention, by index id or by one of its codes (e.g. ICD-10 ``I21``)."""

    id: str | None = None
    code: str | None = None
    lang: Language = "en"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_key(self) -> ConceptRef:
        _exactly_one(self, ("id", "code"))
        return self


class ConceptCheck(_Strict):
    concept: ConceptRef


class LanguageCheck(_Strict):
    language: Language


_ANSWER_CHECK_KEYS = ("contains", "contains_any", "not_contains", "regex", "number_from", "concept", "language")


def _answer_check_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_unset=True)
    if not isinstance(value, dict):
        return None
    kinds = [key for key in _ANSWER_CHECK_KEYS if key in value]
    return kinds[0] if len(kinds) == 1 else None


AnswerCheck = Annotated[
    Annotated[ContainsCheck, Tag("contains")]
    | Annotated[ContainsAnyCheck, Tag("contains_any")]
    | Annotated[NotContainsCheck, Tag("not_contains")]
    | Annotated[RegexCheck, Tag("regex")]
    | Annotated[NumberFromCheck, Tag("number_from")]
    | Annotated[ConceptCheck, Tag("concept")]
    | Annotated[LanguageCheck, Tag("language")],
    Discriminator(
        _answer_check_kind,
        custom_error_type="answer_check",
        custom_error_message=f"each answer check needs exactly one of: {', '.join(_ANSWER_CHECK_KEYS)}",
    ),
]


# --- turns and scenarios -------------------------------------------------------------------


class TurnExpectation(_Strict):
    tools_called: list[ToolExpectation] = Field(default_factory=list)
    tools_not_called: list[str] = Field(default_factory=list)
    no_tool: bool = Field(False, description="the turn must be answered without calling any tool")
    answer: list[AnswerCheck] = Field(default_factory=list)
    rubric: list[str] = Field(default_factory=list, description="items for the optional LLM judge")
    error: str | None = Field(None, description="exception class the turn must raise, e.g. InputError")

    @field_validator("rubric", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> TurnExpectation:
        if self.no_tool and self.tools_called:
            raise ValueError("no_tool and tools_called contradict each other")
        clash = {e.tool for e in self.tools_called} & set(self.tools_not_called)
        if clash:
            raise ValueError(f"{', '.join(sorted(clash))} is both expected and forbidden")
        if self.error and (self.tools_called or self.no_tool or self.answer or self.rubric):
            raise ValueError("a turn expected to raise an error has no answer or tools to check")
        return self

    @property
    def expected_tools(self) -> set[str]:
        return {e.tool for e in self.tools_called}

    @property
    def mentioned_tools(self) -> set[str]:
        """Tools this expectation needs to exist to be meaningful."""
        sources = {c.number_from.tool for c in self.answer if isinstance(c, NumberFromCheck)}
        return self.expected_tools | sources


class Turn(_Strict):
    user: str = Field(description="the clinician's message (may be empty to test refusal)")
    repeat_user: int = Field(1, ge=1, le=100_000, description="send the message this many times over (long inputs)")
    click: tuple[int, int, int] | None = Field(None, description="a voxel clicked in the viewer before asking")
    upload: ScanRef | None = Field(None, description="a scan uploaded before this turn, replacing the current one")
    expect: TurnExpectation = Field(default_factory=TurnExpectation)

    def message(self) -> str:
        """The text the UI would send: a click prefixes the message exactly as ui/app.py writes it."""
        text = self.user * self.repeat_user
        return f"Clicked point: voxel {list(self.click)}. {text}" if self.click else text


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="unique within its suite")
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    split: Literal["dev", "test"] | None = Field(None, description="tune on dev; the test half is reported once per change")
    scan: ScanRef | None = Field(None, description="loaded before the first turn; none for no-scan scenarios")
    turns: list[Turn] = Field(min_length=1)
    # Filled by the loader, not written in YAML files.
    suite: str = ""
    file: str = ""
    line: int = 0

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.name}"

    @property
    def mentioned_tools(self) -> set[str]:
        return set().union(*(turn.expect.mentioned_tools for turn in self.turns))
