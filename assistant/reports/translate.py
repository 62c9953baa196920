"""The report in another language, section by section, through the terminology-aware translator.

Required terms (glossary, term index labels) are enforced by `assistant.translation`; the
sentences where a required term is still missing are kept as flags to show beside the text.
"""

from __future__ import annotations

from assistant.config import Settings
from assistant.imaging.progress import ProgressCallback, report
from assistant.models.base import ChatModel
from assistant.reports.model import SECTIONS, ReportContent, ReportError, ReportTranslation, ReportText
from assistant.terminology.glossary import Glossary
from assistant.translation import TranslationError, translate_text


def translate_report(content: ReportContent, target_lang: str, *, glossary: Glossary | None = None,
                     refiner: ChatModel | None = None, settings: Settings | None = None,
                     progress: ProgressCallback | None = None) -> ReportTranslation:
    """Translate the title and every non-empty section; raises ReportError when no engine can."""
    fields = [name for name in ("title", *SECTIONS) if getattr(content.text, name).strip()]
    translated: dict[str, str] = {}
    highlighted: dict[str, str] = {}
    engines, flagged = set(), []
    required = missing = 0
    for done, name in enumerate(fields):
        report(progress, done / len(fields), f"Translating {name.replace('_', ' ')}")
        try:
            result = translate_text(getattr(content.text, name), target_lang, source_lang=content.language,
                                    glossary=glossary, refiner=refiner, settings=settings)
        except TranslationError as exc:
            raise ReportError(f"The report could not be translated: {exc}") from exc
        if result.translation is None:
            raise ReportError(result.message or f"No translation engine is installed for {content.language} -> {target_lang}.")
        translated[name] = result.translation
        highlighted[name] = result.highlighted_markdown()
        engines.add(result.engine)
        flagged += [s.text for s in result.flagged_sentences]
        required += sum(len(s.required) for s in result.sentences)
        missing += sum(len(s.missing) for s in result.sentences)
    report(progress, 1.0, "Translated")
    conflicts = [c for c in (glossary.conflicts if glossary else []) if c.lang == target_lang]
    return ReportTranslation(
        language=target_lang,
        text=ReportText(**{**content.text.model_dump(), **translated}),
        engine=", ".join(sorted(e for e in engines if e)) or None,
        term_success_rate=None if not required else 1.0 - missing / required,
        flagged_sentences=flagged,
        highlighted=highlighted,
        notes=[f"Glossary conflict: '{c.source}' has several {c.lang} translations ({', '.join(c.targets)}, "
               f"lines {', '.join(str(n) for n in c.lines if n)}); the first was used. Fix the glossary."
               for c in conflicts],
    )


def with_translation(content: ReportContent, translation: ReportTranslation) -> ReportContent:
    """The content with `translation` replacing any earlier one in the same language."""
    others = [t for t in content.translations if t.language != translation.language]
    return content.model_copy(update={"translations": [*others, translation]})
