"""Checks that the numbers in an answer were produced by a tool (or given by the user).

A clinician who reads "the brain is 1,180 mL" must be able to trust that some tool measured
1,180 mL. The check is deliberately strict: a number counts as grounded when a source number
rounds to it at the precision the answer wrote it with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import BaseModel

# 1,234.5 | -12 | 0.75 | 3e-4; not parts of identifiers such as "T1" or "ICD-10" codes.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
# Small bare integers are how answers count and enumerate ("2 regions", "step 1"); followed by
# a unit ("1 mm", "2.0 mL") they are measurements and must be grounded like any other number.
_TRIVIAL = {"0", "1", "2", "3"}
_UNIT_AFTER = re.compile(r"\s*(?:mm|cm|m|ml|mL|l|L|HU|%|voxels?|slices?|s|ms|cc|mm2|mm3|cm3|T|kV|kVp|a\.u\.)\b")


class GroundingReport(BaseModel):
    numbers: list[str] = []
    ungrounded: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.ungrounded


def numbers_in(text: str) -> list[str]:
    return [m.group(0) for m in _NUMBER.finditer(text)]


def _value(token: str) -> float:
    return float(token.replace(",", ""))


def _decimals(token: str) -> int:
    mantissa = token.replace(",", "").lower().split("e")[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def _matches(token: str, source: float) -> bool:
    value = _value(token)
    if value == source:
        return True
    # "1180" written from 1179.6 is grounded; "12" (cm) written from 120 (mm) is not.
    return round(abs(source), _decimals(token)) == abs(value)


def check_grounding(answer: str, sources: Iterable[str]) -> GroundingReport:
    """Numbers in `answer` that no source text (tool results, the user's messages) supports."""
    source_values = [_value(t) for text in sources for t in numbers_in(text)]
    matches = list(_NUMBER.finditer(answer))
    ungrounded = [
        m.group(0)
        for m in matches
        if not _is_count(m, answer) and not any(_matches(m.group(0), s) for s in source_values)
    ]
    return GroundingReport(numbers=[m.group(0) for m in matches], ungrounded=ungrounded)


def _is_count(match: re.Match[str], text: str) -> bool:
    return match.group(0) in _TRIVIAL and not _UNIT_AFTER.match(text, match.end())


def _numbers_of(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _numbers_of(item)]
    return []


def invented_arguments(arguments: dict[str, object], sources: Iterable[str]) -> list[str]:
    """Argument names whose numbers appear nowhere in the conversation (the model made them up).

    Coordinates, radii and sizes must come from the user (or an earlier tool result); a small
    model filling a schema tends to invent plausible ones, such as a point for "the centre".
    """
    known = {_value(t) for text in sources for t in numbers_in(text)}
    return [
        name for name, value in arguments.items()
        if any(n not in known for n in _numbers_of(value))
    ]


VERBATIM = {"verbatim": True}  # json_schema_extra of an argument the model must copy from the conversation
_WORD = re.compile(r"[^\W\d_]{3,}")


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def invented_texts(arguments: dict[str, object], verbatim_fields: Iterable[str], sources: Iterable[str]) -> list[str]:
    """Verbatim argument names (a text to translate, a term to look up) with a word that appears
    nowhere in the conversation: a small model tends to copy its few-shot example's text, or to
    blend it with the user's ("Mild generalised cerebral atrophy" for "Mild cerebral atrophy").

    A word counts as present when a word of the conversation shares all but its last three letters with it (an
    ending: "seizure" / "seizures") or is a shortening of it of five letters or more ("hippocampus" / "hippo"); "head"
    in the scan's name does not make "headache" said.
    """
    said = {w for text in sources for w in _words(text)}
    invented = []
    for name in verbatim_fields:
        value = arguments.get(name)
        words = _words(value) if isinstance(value, str) else []
        if any(not _said_word(w, said) for w in words):
            invented.append(name)
    return invented


def _said_word(word: str, said: set[str]) -> bool:
    if word in said:
        return True
    stem = word[: max(4, len(word) - 3)]
    return any(w.startswith(stem) or (len(w) >= 5 and word.startswith(w)) for w in said)


_QUOTED = re.compile(r"(?<!\w)[\"“'‘]([^\"”'’]{3,})[\"”'’](?!\w)")


def users_passage(request: str) -> str:
    """The material a request hands over, in the user's own words: the quoted part, else what follows
    the last colon or dash ("Translate into Spanish: ..."), else the request itself."""
    quoted = _QUOTED.findall(request)
    if quoted:
        return max(quoted, key=len)
    after = re.split(r":\s+|\s[-–—]\s", request)[-1].strip()
    return after if len(after.split()) >= 2 else request.strip()


_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def side_named(text: str) -> str | None:
    """'left' or 'right' when the text names exactly one side."""
    sides = {m.casefold() for m in _SIDE.findall(text)}
    return sides.pop() if len(sides) == 1 else None


def without_quoted(request: str, min_words: int = 6) -> str:
    """The request with quoted passages of `min_words` or more reduced to '"…"': such a passage is
    material to work on (a pasted report, a sentence to translate), and its words must not decide
    which tool runs. A short quoted term stays: in "what is 'pulmonary embolism' in Spanish?" it is
    what tells a term look-up from a translation."""
    return _QUOTED.sub(lambda m: '"…"' if len(m.group(1).split()) >= min_words else m.group(0), request)


_TRIPLE = re.compile(r"(-?\d+(?:\.\d+)?)\s*[,;\s]\s*(-?\d+(?:\.\d+)?)\s*[,;\s]\s*(-?\d+(?:\.\d+)?)")


def coordinate_triples(text: str) -> list[list[float]]:
    """Points written as three numbers ("100,100,50", "(150, 120, 50)", "x 1 2 3"), in reading order:
    the fallback for coordinates a small model would not copy."""
    return [[float(n) if "." in n else int(n) for n in match] for match in _TRIPLE.findall(text)]


_INSTRUCTION = re.compile(
    r"\b(ignore|disregard|forget|override)\b.{0,40}\b(instructions?|prompts?|rules?|above|previous)\b"
    r"|\b(reply|respond|answer|say|output)\s+only\b|\bsystem prompt\b|\byou are now\b|\bact as\b"
    r"|\bcall (the )?\w+ tool\b|\bdo not (tell|mention|report)\b",
    re.IGNORECASE,
)


def reads_like_instruction(text: str) -> bool:
    """File-header or pasted text that addresses the assistant (prompt injection): withheld from the model,
    which a small model would otherwise obey."""
    return bool(_INSTRUCTION.search(text))
