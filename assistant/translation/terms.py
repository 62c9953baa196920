"""Which source terms a document must render with which target terms, and where they occur.

Required terms come from three sources, in order of authority: the user's glossary, the shared
term index (its labels in the target language), and, when the index is not installed, the
official ICD-10 titles. They are resolved once per document, so one source term gets one
target term throughout (document consistency by construction).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal, Protocol

from pydantic import BaseModel

from assistant.terminology.glossary import Glossary
from assistant.terminology.variants import uk_spelling, us_spelling
from assistant.translation.agreement import Gender, guess_gender, is_plural
from assistant.translation.engines import TranslationError

log = logging.getLogger(__name__)

TermOrigin = Literal["glossary", "term-index", "icd10", "phrasebook"]
_ORIGIN_RANK: dict[str, int] = {"glossary": 0, "term-index": 1, "icd10": 2, "phrasebook": 3}
# Origins whose terms the user asked for (checked, counted, flagged); the phrasebook only helps the engine.
REQUIRED_ORIGINS = frozenset({"glossary", "term-index", "icd10"})
_MAX_TERM_WORDS = 6


class TermConstraint(BaseModel):
    """A required rendering: `source` (matched case-insensitively) must appear as `target`."""

    source: str
    target: str
    origin: TermOrigin
    concept_id: str | None = None
    gender: Gender | None = None

    @property
    def key(self) -> str:
        return self.source.casefold()


@dataclass(frozen=True)
class TermSpan:
    start: int
    end: int
    constraint: TermConstraint


class TermSource(Protocol):
    """Finds required terms in a text; the term index and the ICD-10 titles both fit."""

    def find(self, text: str, source_lang: str, target_lang: str) -> list[TermSpan]: ...


class GlossaryTermSource:
    """The user's glossary, matched as whole words, case-insensitively."""

    def __init__(self, glossary: Glossary) -> None:
        self.glossary = glossary

    def find(self, text, source_lang, target_lang):
        used = {term.casefold() for term in self.glossary.terms(target_lang) if variant_pattern(term).search(text)}
        conflicts = [c for c in self.glossary.conflicts if c.lang == target_lang and c.source.casefold() in used]
        if conflicts:
            described = "; ".join(f"{c.source!r} → {' / '.join(c.targets)}" for c in conflicts)
            raise TranslationError(f"The glossary {self.glossary.path} gives several {target_lang} terms for "
                                   f"words in this text ({described}); keep one per term and retry.")
        spans = []
        for source, target in self.glossary.terms(target_lang).items():
            constraint = TermConstraint(source=source, target=target, origin="glossary",
                                        gender=guess_gender(target, target_lang))
            spans += [TermSpan(m.start(), m.end(), number_matched(constraint, m.group(), target_lang))
                      for m in variant_pattern(source).finditer(text)]
        return spans


class TermIndexSource:
    """Mentions the shared term index recognises, rendered with its label in the target language."""

    def __init__(self, index: object) -> None:
        self.index = index

    def find(self, text, source_lang, target_lang):
        spans = []
        for mention in self.index.normalize(text, lang=source_lang):  # type: ignore[attr-defined]
            label = mention.concept.labels.get(target_lang)
            if label:
                target = _as_running_text(label, target_lang)
                spans.append(TermSpan(mention.start, mention.end, TermConstraint(
                    source=mention.text, target=target, origin="term-index", concept_id=mention.concept.id,
                    gender=guess_gender(target, target_lang))))
        return spans


class Icd10TitleSource:
    """Short official ICD-10 titles ("Pulmonary embolism" -> "Embolia pulmonar") found verbatim."""

    def __init__(self, exclude_codes: Iterable[str] = ()) -> None:
        self.exclude_codes = frozenset(exclude_codes)

    def find(self, text, source_lang, target_lang):
        if source_lang != "en":
            return []
        titles = _short_icd10_titles(target_lang)
        words = list(re.finditer(r"\w+(?:[-']\w+)*", text))
        spans = []
        for first in range(len(words)):
            for last in range(min(len(words), first + _MAX_TERM_WORDS) - 1, first - 1, -1):
                start, end = words[first].start(), words[last].end()
                found = titles.get(_fold(text[start:end]))
                if found and found[0] not in self.exclude_codes:
                    code, target = found
                    spans.append(TermSpan(start, end, TermConstraint(
                        source=text[start:end], target=target, origin="icd10", concept_id=f"ICD-10:{code}",
                        gender=guess_gender(target, target_lang))))
                    break
        return spans


_ENGLISH_QUALIFIER = re.compile(r",\s*(unspecified|not elsewhere classified)\s*$", re.IGNORECASE)
_TARGET_QUALIFIER = re.compile(r",?\s*(no especificad[oa]s?|não especificad[oa]s?|no clasificad[oa]s? en otra parte|"
                               r"não classificad[oa]s? em outra parte|nicht näher bezeichnet|sans précision)\s*$",
                               re.IGNORECASE)
_LEADING_ARTICLE = re.compile(r"^(o|a|os|as|el|la|los|las|le|la|les|der|die|das)\s+", re.IGNORECASE)


@cache
def _short_icd10_titles(target_lang: str) -> dict[str, tuple[str, str]]:
    """Folded English title -> (code, target title) for titles usable as running-text terms:
    at most four words, no brackets or enumerations; a trailing 'unspecified' is dropped on both
    sides, and a plain title wins over one that needed that."""
    from assistant.translation.icd10 import icd10_titles

    try:
        titles = icd10_titles(target_lang)
    except ValueError:
        return {}
    short: dict[str, tuple[str, str]] = {}
    for title in sorted(titles, key=lambda title: bool(_ENGLISH_QUALIFIER.search(title.english))):
        english = _ENGLISH_QUALIFIER.sub("", title.english)
        target = _LEADING_ARTICLE.sub("", _TARGET_QUALIFIER.sub("", title.translated))
        if any(mark in english + target for mark in ",;()[]") or len(english.split()) > 4:
            continue
        if re.search(r"\b(other|and|or|without|due to|unspecified)\b", english, re.IGNORECASE):
            continue
        short.setdefault(_fold(english), (title.code, _as_running_text(target, target_lang)))
    return short


def _as_running_text(label: str, lang: str) -> str:
    """'Embolia pulmonar' -> 'embolia pulmonar' for use mid-sentence; acronyms ('VIH') and
    German nouns keep their capitals."""
    first = label.split()[0] if label.split() else ""
    if lang == "de" or any(letter.isupper() for letter in first[1:]):
        return label
    return label[:1].lower() + label[1:]


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def number_matched(constraint: TermConstraint, matched: str, target_lang: str) -> TermConstraint:
    """The constraint with its target in the plural when a singular source term was matched in the
    plural ("nodules" for the term "nodule")."""
    from assistant.translation.agreement import pluralize

    term_word, found_word = constraint.source.split()[-1].casefold(), matched.split()[-1].casefold()
    if found_word == term_word or term_word.endswith("s") or not found_word.endswith("s") \
            or target_lang not in ("es", "pt"):
        return constraint
    return constraint.model_copy(update={"target": pluralize(constraint.target, target_lang)})


def _plural_tolerant(word: str) -> str:
    """A regex for an English word and its plural (effusion(s), artery/arteries, diagnosis/diagnoses)."""
    if word.endswith("sis"):
        return re.escape(word[:-2]) + "[ie]s"
    if word.endswith("y") and len(word) > 3:
        return re.escape(word[:-1]) + "(?:y|ies)"
    if word[-1:].isalpha() and not word.endswith("s"):
        return re.escape(word) + "(?:s|es)?"
    return re.escape(word)


@cache
def variant_pattern(term: str) -> re.Pattern[str]:
    """Matches `term` as whole words in US or UK spelling, with spaces or hyphens between its words
    and its last word singular or plural ("haemorrhage" finds "hemorrhages" and back)."""
    lowered = " ".join(term.casefold().replace("-", " ").split())
    forms = dict.fromkeys([lowered, us_spelling(lowered), uk_spelling(us_spelling(lowered))])
    alternatives = []
    for form in forms:
        words = form.split()
        pieces = [re.escape(word) for word in words[:-1]] + [_plural_tolerant(words[-1])]
        alternatives.append(r"[\s-]+".join(pieces))
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def resolve_terms(text: str, sources: Sequence[TermSource], source_lang: str, target_lang: str) -> list[TermSpan]:
    """Non-overlapping required-term spans of `text`; the more authoritative source, then the
    longer match, wins an overlap; one target per source term (and number) throughout the document."""
    candidates = [span for source in sources for span in source.find(text, source_lang, target_lang)]
    candidates.sort(key=lambda span: (_ORIGIN_RANK[span.constraint.origin], span.start - span.end, span.start))
    chosen_target: dict[tuple[str, bool], TermConstraint] = {}
    taken: list[TermSpan] = []
    for span in candidates:
        if any(span.start < other.end and other.start < span.end for other in taken):
            continue
        # one target per source term and number: 'nodules' elsewhere must not make this 'nodule' plural
        constraint = chosen_target.setdefault((span.constraint.key, is_plural(span.constraint.target)), span.constraint)
        taken.append(TermSpan(span.start, span.end, constraint))
    return sorted(taken, key=lambda span: span.start)


# --- checking ------------------------------------------------------------------------------


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


@cache
def _inflection_pattern(target: str) -> re.Pattern[str]:
    """Matches `target` with Spanish/Portuguese number and gender inflection on each word,
    accent- and case-insensitive, in the spirit of the WMT 2023 lemma-match term metric."""
    parts = []
    for word in _strip_accents(target.casefold()).split():
        stem = re.escape(word)
        if word[-1] in "oa":
            parts.append(re.escape(word[:-1]) + "[oa]s?")
        elif word[-1] in "e":
            parts.append(stem + "s?")
        elif word[-1].isalpha():
            parts.append(stem + "(?:es|s)?")
        else:
            parts.append(stem)
    return re.compile(r"(?<!\w)" + r"[\s-]+".join(parts) + r"(?!\w)")


def term_present(target: str, translation: str) -> bool:
    return bool(target.strip()) and bool(_inflection_pattern(target).search(_strip_accents(translation.casefold())))


def term_span(target: str, translation: str) -> tuple[int, int] | None:
    """Where `target` (in any inflection, as `term_present` matches it) first occurs in `translation`."""
    folded = _strip_accents(translation.casefold())
    if len(folded) != len(translation) or not target.strip():
        return None
    match = _inflection_pattern(target).search(folded)
    return match.span() if match else None
