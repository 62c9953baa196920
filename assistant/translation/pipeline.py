"""Terminology-aware translation of a clinical text (WMT 2023 terminology-task style).

find required terms -> protect them with placeholders the engine passes through -> translate ->
restore with article/adjective agreement -> check every required term is present -> on a miss,
re-decode with the engine's own wrong rendering banned, then let an LLM refine -> flag what is
still missing. The result says which engine produced the text and which steps each sentence took.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pydantic import BaseModel, Field, computed_field

from assistant.config import Settings
from assistant.imaging.progress import ProgressCallback, report
from assistant.models.base import ChatModel, ModelError
from assistant.terminology.glossary import Glossary
from assistant.terminology.languages import normalize_lang
from assistant.translation.agreement import agree, is_plural, plural_determiner
from assistant.translation.engines import (EngineOutput, TranslationEngine, TranslationError, local_model_dir,
                                           pick_engine)
from assistant.translation.phrasebook import PhrasebookSource
from assistant.translation.postedit import english_leftovers, post_edit
from assistant.translation.refine import LANGUAGE_NAMES, refine_translation
from assistant.translation.terms import (
    REQUIRED_ORIGINS,
    GlossaryTermSource,
    Icd10TitleSource,
    TermConstraint,
    TermIndexSource,
    TermOrigin,
    TermSource,
    TermSpan,
    resolve_terms,
    term_present,
    term_span,
)

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 100_000
_PLACEHOLDER_PREFIXES = ("ZXTERM", "QXTERM", "ZQTERM")
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "prof", "e.g", "i.e", "vs", "approx", "fig", "no", "st", "cf", "ca", "pt"}
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s+[\"'(\[¿¡]?[A-Z0-9])")


class RequiredTerm(BaseModel):
    source: str
    target: str
    origin: TermOrigin
    concept_id: str | None = None
    found: bool = Field(description="The target term appears in every sentence holding the source term.")
    sentences: list[int] = Field(default_factory=list, description="Indexes of the sentences holding it.")


class SentenceTranslation(BaseModel):
    index: int
    source: str
    text: str
    required: list[str] = Field(default_factory=list, description="Target terms this sentence must contain.")
    missing: list[str] = Field(default_factory=list, description="Required target terms not found in `text`.")
    steps: list[str] = Field(default_factory=list, description="placeholders, redecode, refine, ... in order.")
    unknown_words: list[str] = Field(default_factory=list, description="Words the engine left untranslated.")
    untranslated: list[str] = Field(default_factory=list,
                                    description="English words copied into the translation (names and drug names "
                                                "excepted): each one is flagged for review.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def flagged(self) -> bool:
        return bool(self.missing)


class TranslationResult(BaseModel):
    source_lang: str
    target_lang: str
    engine: str | None = Field(description="The engine that produced the text; None when no engine exists.")
    translation: str | None
    sentences: list[SentenceTranslation] = Field(default_factory=list)
    terms: list[RequiredTerm] = Field(default_factory=list)
    message: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def flagged_sentences(self) -> list[SentenceTranslation]:
        return [sentence for sentence in self.sentences if sentence.flagged]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def untranslated_words(self) -> dict[int, list[str]]:
        """Sentence index -> English words left in its translation."""
        return {sentence.index: sentence.untranslated for sentence in self.sentences if sentence.untranslated}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def term_success_rate(self) -> float | None:
        required = sum(len(sentence.required) for sentence in self.sentences)
        missing = sum(len(sentence.missing) for sentence in self.sentences)
        return None if not required else 1.0 - missing / required

    def highlighted_markdown(self) -> str:
        """The translation for the UI: required terms in bold, flagged sentences marked."""
        if self.translation is None:
            return self.message or ""
        parts = []
        for sentence in self.sentences:
            text = sentence.text
            for target in sorted(set(sentence.required) - set(sentence.missing), key=len, reverse=True):
                text = re.sub(rf"(?<![\w*])({re.escape(target)})(?![\w*])", r"**\1**", text, flags=re.IGNORECASE)
            if sentence.flagged:
                text += f" ⚠ *missing: {', '.join(sentence.missing)}*"
            parts.append(text)
        return "\n".join(parts)


@dataclass(frozen=True)
class _Sentence:
    start: int
    end: int
    spans: tuple[TermSpan, ...]


def sentence_bounds(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: lines are split at ., ! or ? followed by a capital,
    except after common abbreviations and initials."""
    bounds = []
    for line in re.finditer(r"[^\n]+", text):
        start = line.start() + len(line.group()) - len(line.group().lstrip())
        for end in _SENTENCE_END.finditer(line.group()):
            cut = line.start() + end.end()
            previous_word = re.findall(r"[\w.]+$", text[start:line.start() + end.start()])
            word = previous_word[0].casefold().rstrip(".") if previous_word else ""
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
            bounds.append((start, cut))
            start = cut + len(text[cut:line.end()]) - len(text[cut:line.end()].lstrip())
        if text[start:line.end()].strip():
            bounds.append((start, line.start() + len(line.group().rstrip())))
    return bounds


def default_term_sources(glossary: Glossary | None, settings: Settings | None = None) -> list[TermSource]:
    """The user's glossary, then the shared term index (or, without it, the ICD-10 titles)."""
    sources: list[TermSource] = [GlossaryTermSource(glossary)] if glossary else []
    try:
        from assistant.terminology import get_term_index  # type: ignore[attr-defined]
    except ImportError:
        log.info("term index not installed; using ICD-10 titles as the term source")
        return [*sources, Icd10TitleSource()]
    return [*sources, TermIndexSource(get_term_index(settings))]


def translate_text(
    text: str,
    target_lang: str,
    *,
    source_lang: str = "en",
    glossary: Glossary | None = None,
    engine: str | TranslationEngine | None = None,
    refiner: ChatModel | None = None,
    term_sources: Sequence[TermSource] | None = None,
    protect_terms: bool = True,
    redecode: bool = True,
    phrasebook: bool = True,
    repair: bool = True,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
) -> TranslationResult:
    """Translate `text` with every required term enforced and checked; see the module docstring."""
    source_lang, target_lang = normalize_lang(source_lang), normalize_lang(target_lang)
    if source_lang == target_lang:
        raise TranslationError(f"The text is already in {LANGUAGE_NAMES.get(target_lang, target_lang)}.")
    text = (text or "").replace("\x00", "")
    if not text.strip():
        raise TranslationError("There is no text to translate.")
    if len(text) > MAX_TEXT_CHARS:
        raise TranslationError(f"The text has {len(text):,} characters; at most {MAX_TEXT_CHARS:,} are translated "
                               "at once. Split it into parts.")
    sources = default_term_sources(glossary, settings) if term_sources is None else term_sources
    spans = resolve_terms(text, sources, source_lang, target_lang)
    chosen = engine if isinstance(engine, TranslationEngine) else pick_engine(source_lang, target_lang, engine, settings)
    if chosen is None:
        return _no_engine(text, source_lang, target_lang, spans, settings)

    protected = spans
    if phrasebook and protect_terms and chosen.uses_phrasebook:
        protected = resolve_terms(text, [*sources, PhrasebookSource()], source_lang, target_lang)
    sentences = [_Sentence(start, end, tuple(s for s in protected if start <= s.start and s.end <= end))
                 for start, end in sentence_bounds(text)]
    report(progress, 0.05, f"Translating {len(sentences)} sentences with {chosen.name}")
    results = _draft(text, sentences, chosen, source_lang, target_lang, protect_terms and chosen.keeps_placeholders,
                     repair)
    report(progress, 0.6, "Checking required terms")
    missing = [r for r in results if r.missing]
    if missing and redecode and chosen.can_ban_words:
        _redecode(results, missing, sentences, chosen, source_lang, target_lang)
    if refiner is not None:
        pending = [r for r in results if r.missing]
        for done, result in enumerate(pending):
            report(progress, 0.8 + 0.2 * done / len(pending), f"Refining sentence {result.index + 1} with {refiner.name}")
            _refine(result, sentences[result.index], refiner, source_lang, target_lang)
    for result in results:
        result.untranslated = english_leftovers(result.source, result.text, target_lang, allowed=result.required)
    report(progress, 1.0, "Done")
    return TranslationResult(source_lang=source_lang, target_lang=target_lang, engine=chosen.name,
                       translation=_reassemble(text, sentences, results), sentences=results,
                       terms=_required_terms(spans, sentences, results),
                       message=_flag_message(results))


def _draft(text: str, sentences: Sequence[_Sentence], engine: TranslationEngine, source_lang: str,
           target_lang: str, use_placeholders: bool, repair: bool = False) -> list[SentenceTranslation]:
    prefix = next((p for p in _PLACEHOLDER_PREFIXES if p.casefold() not in text.casefold()), None)
    use_placeholders = use_placeholders and prefix is not None
    protected = list(sentences) if use_placeholders else [replace(s, spans=()) for s in sentences]
    outputs: list[EngineOutput | None] = [None] * len(sentences)
    if use_placeholders and engine.selective_placeholders:
        # translate plainly first; protect only the terms the engine itself did not render
        outputs = list(engine.translate_batch([text[s.start:s.end] for s in sentences], source_lang, target_lang))
        protected = [replace(sentence, spans=tuple(span for span in sentence.spans
                                                   if not term_present(span.constraint.target, output.text)))
                     for sentence, output in zip(sentences, outputs, strict=True)]
    redo = [i for i, sentence in enumerate(protected) if outputs[i] is None or sentence.spans]
    redone = engine.translate_batch([_protect(text, protected[i], prefix) if protected[i].spans
                                     else text[protected[i].start:protected[i].end] for i in redo],
                                    source_lang, target_lang) if redo else []
    for i, output in zip(redo, redone, strict=True):
        outputs[i] = output
    results, lost = [], []
    for index, (sentence, output) in enumerate(zip(sentences, outputs, strict=True)):
        assert output is not None
        steps = ["placeholders"] if protected[index].spans else []
        translated = output.text
        if use_placeholders and engine.selective_placeholders:
            rendered = [span for span in sentence.spans if span not in protected[index].spans]
            translated = _agree_rendered(translated, rendered, _placeholder(prefix, len(sentence.spans)), target_lang)
        if steps:
            restored = _restore(translated, protected[index], prefix, target_lang)
            if restored is None:
                lost.append(index)
                steps.append("placeholder-lost")
            else:
                translated = restored
        if repair:
            translated = _repaired(text[sentence.start:sentence.end], translated, target_lang, steps)
        unknown = [word for word in output.unknown_words if not (prefix and word.startswith(prefix))]
        results.append(_checked(index, text, sentence, translated, steps, unknown))
    if lost:  # the engine mangled a placeholder: translate those sentences unprotected instead
        retried = engine.translate_batch([text[sentences[i].start:sentences[i].end] for i in lost], source_lang, target_lang)
        for index, output in zip(lost, retried, strict=True):
            source = text[sentences[index].start:sentences[index].end]
            translated = _repaired(source, output.text, target_lang, results[index].steps) if repair else output.text
            results[index] = _checked(index, text, sentences[index], translated, results[index].steps,
                                      list(output.unknown_words))
    return results


def _repaired(source: str, translated: str, target_lang: str, steps: list[str]) -> str:
    repaired = post_edit(source, translated, target_lang)
    if repaired != translated:
        steps.append("repair")
    return repaired


def _checked(index: int, text: str, sentence: _Sentence, translated: str, steps: list[str],
             unknown: list[str]) -> SentenceTranslation:
    required = list(dict.fromkeys(span.constraint.target for span in sentence.spans
                                  if span.constraint.origin in REQUIRED_ORIGINS))
    return SentenceTranslation(index=index, source=text[sentence.start:sentence.end], text=translated,
                               required=required, missing=[t for t in required if not term_present(t, translated)],
                               steps=steps, unknown_words=unknown)


def _placeholder(prefix: str, number: int) -> str:
    return f"{prefix}{number}"


def _protect(text: str, sentence: _Sentence, prefix: str) -> str:
    pieces, cursor = [], sentence.start
    for number, span in enumerate(sentence.spans):
        pieces += [text[cursor:span.start], _placeholder(prefix, number)]
        cursor = span.end
    pieces.append(text[cursor:sentence.end])
    return "".join(pieces)


def _agree_rendered(translated: str, spans: Sequence[TermSpan], placeholder: str, target_lang: str) -> str:
    """Articles and adjectives made to agree with the terms the engine rendered by itself (a pivot
    language can give a noun another gender: 'una pequeña derrame pleural')."""
    for span in spans:
        found = term_span(span.constraint.target, translated)
        if found is None or span.constraint.gender is None:
            continue
        start, end = found
        surface = translated[start:end]
        marked = agree(translated[:start] + placeholder + translated[end:], placeholder, span.constraint.gender,
                       target_lang, plural=is_plural(surface))
        translated = marked.replace(placeholder, surface, 1)
    return translated


def _restore(translated: str, sentence: _Sentence, prefix: str, target_lang: str) -> str | None:
    """Put the target terms back in place of the placeholders; None if one did not survive."""
    for number, span in enumerate(sentence.spans):
        placeholder = _placeholder(prefix, number)
        pattern = re.compile(rf"(?<!\w){placeholder}(?!\d)", re.IGNORECASE)
        if not pattern.search(translated):
            return None
        translated = agree(translated, placeholder, span.constraint.gender, target_lang,
                           plural=is_plural(span.constraint.target))
        translated = plural_determiner(translated, placeholder, span.constraint.target, target_lang)
        target = span.constraint.target

        def substitute(match: re.Match[str], target: str = target) -> str:
            at_start = not re.search(r"\w", translated[:match.start()])
            return target[:1].upper() + target[1:] if at_start else target

        translated = pattern.sub(substitute, translated)
    return translated


def _redecode(results: list[SentenceTranslation], missing: list[SentenceTranslation], sentences: Sequence[_Sentence],
              engine: TranslationEngine, source_lang: str, target_lang: str) -> None:
    """Translate each missed source term alone; the words of that rendering that are not in the
    required term are what the engine prefers, so re-decode the sentence with them banned."""
    constraints: dict[str, TermConstraint] = {}
    for result in missing:
        for span in sentences[result.index].spans:
            if span.constraint.target in result.missing:
                constraints.setdefault(span.constraint.key, span.constraint)
    renderings = engine.translate_batch([c.source for c in constraints.values()], source_lang, target_lang)
    banned_by_target = {c.target: _wrong_words(output.text, c.target) for c, output in zip(constraints.values(), renderings)}
    for result in missing:
        banned = sorted({word for target in result.missing for word in banned_by_target.get(target, [])})
        if not banned:
            continue
        retry = engine.translate_batch([result.source], source_lang, target_lang, banned_phrases=banned)[0].text
        still_missing = [t for t in result.required if not term_present(t, retry)]
        result.steps.append("redecode")
        if len(still_missing) < len(result.missing):
            result.text, result.missing = retry, still_missing


def _wrong_words(rendering: str, target: str) -> list[str]:
    wanted = {word.casefold() for word in re.findall(r"\w+", target)}
    return [word for word in re.findall(r"\w{3,}", rendering) if word.casefold() not in wanted]


def _refine(result: SentenceTranslation, sentence: _Sentence, refiner: ChatModel, source_lang: str,
            target_lang: str) -> None:
    constraints = [span.constraint for span in sentence.spans]
    try:
        refined = refine_translation(refiner, result.source, result.text, constraints, source_lang, target_lang)
    except ModelError as exc:
        log.warning("refinement of sentence %d failed: %s", result.index, exc)
        result.steps.append("refine-failed")
        return
    result.steps.append("refine")
    still_missing = [t for t in result.required if not term_present(t, refined)]
    if refined and len(still_missing) < len(result.missing):
        result.text, result.missing = refined, still_missing


def _reassemble(text: str, sentences: Sequence[_Sentence], results: Sequence[SentenceTranslation]) -> str:
    """Translated sentences joined as the source was: line breaks kept, other gaps one space."""
    pieces, previous_end = [], 0
    for sentence, result in zip(sentences, results, strict=True):
        gap = text[previous_end:sentence.start]
        pieces += ["\n" * gap.count("\n") if "\n" in gap else (" " if pieces else ""), result.text]
        previous_end = sentence.end
    return "".join(pieces)


def _required_terms(spans: Sequence[TermSpan], sentences: Sequence[_Sentence],
                    results: Sequence[SentenceTranslation]) -> list[RequiredTerm]:
    terms: dict[str, RequiredTerm] = {}
    for constraint in (span.constraint for span in spans):
        holding = [i for i, sentence in enumerate(sentences) if any(s.constraint.key == constraint.key for s in sentence.spans)]
        terms.setdefault(constraint.key, RequiredTerm(
            source=constraint.source, target=constraint.target, origin=constraint.origin,
            concept_id=constraint.concept_id, sentences=holding,
            found=all(constraint.target not in results[i].missing for i in holding)))
    return list(terms.values())


def _flag_message(results: Sequence[SentenceTranslation]) -> str | None:
    flagged = [r for r in results if r.missing]
    english = [r for r in results if r.untranslated]
    parts = []
    if flagged:
        parts.append(f"{len(flagged)} sentence(s) miss a required term and need review: "
                     + "; ".join(f"sentence {r.index + 1} lacks {', '.join(r.missing)}" for r in flagged))
    if english:
        parts.append("English left untranslated: " + "; ".join(
            f"sentence {r.index + 1}: {', '.join(r.untranslated)}" for r in english))
    return ". ".join(parts) or None


def _no_engine(text: str, source_lang: str, target_lang: str, spans: Sequence[TermSpan],
               settings: Settings | None) -> TranslationResult:
    """No machine translation for this pair: say so, and give the term renderings we do know."""
    terms = {span.constraint.key: RequiredTerm(source=span.constraint.source, target=span.constraint.target,
                                               origin=span.constraint.origin, concept_id=span.constraint.concept_id,
                                               found=False) for span in spans}
    language = LANGUAGE_NAMES.get(target_lang, target_lang)
    message = (f"No offline engine translates {source_lang}→{target_lang} ({language}) on this machine, so no "
               f"translation was made. Put a Marian/NLLB/M2M100 model in {local_model_dir(source_lang, target_lang, settings)} "
               "to enable it." + (f" Known {language} renderings of {len(terms)} term(s) are listed." if terms else ""))
    return TranslationResult(source_lang=source_lang, target_lang=target_lang, engine=None, translation=None,
                       terms=list(terms.values()), message=message)
