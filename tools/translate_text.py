"""translate_text: a clinical text in another language, with required medical terms enforced."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from tqdm import tqdm

from assistant.config import Settings, get_settings
from assistant.findings import Claim
from assistant.grounding import VERBATIM, users_passage
from assistant.imaging.progress import ProgressCallback
from assistant.models.base import ChatModel
from assistant.terminology.glossary import Glossary, load_glossary, load_named_glossary
from assistant.terminology.languages import languages_named
from assistant.translation import TranslationResult, translate_text
from tools.base import ScanTool, ToolError, ToolResult


class TranslateTextArgs(BaseModel):
    text: str = Field(description="The text to translate: a sentence, a finding or a whole report.", json_schema_extra=VERBATIM)
    target_language: str = Field(description="Code of the language to translate into, e.g. 'es' or 'pt'.")
    source_language: str = Field("en", description="Code of the language the text is written in.")
    glossary_path: str | None = Field(None, description="Path of the user's CSV, TSV or TBX glossary, if they gave one.",
                                      json_schema_extra=VERBATIM)


class TranslateTextResult(TranslationResult, ToolResult):
    """The translation with its engine, the required terms (found or not) and flagged sentences."""

    def summary(self) -> str:
        if self.translation is None:
            terms = {term.source: term.target for term in self.terms}
            return json.dumps({"translation": None, "message": self.message, "known_terms": terms}, ensure_ascii=False)
        return json.dumps({
            "engine": self.engine,
            "translation": self.translation,
            "required_terms": {term.source: {"target": term.target, "found": term.found} for term in self.terms},
            "flagged_sentences": [{"sentence": s.text, "missing": s.missing} for s in self.flagged_sentences],
            "untranslated_english": {s.text: s.untranslated for s in self.sentences if s.untranslated},
        }, ensure_ascii=False)

    def claims(self, tool: str) -> list[Claim]:
        """The translation is quoted whole (with its term checks), never reworded."""
        return [Claim(tool=tool, path="translation", meaning="translation", kind="text", value=self.translation,
                      text=self.direct_answer(), headline=True)]

    def direct_answer(self) -> str:
        if self.translation is None:
            known = "; ".join(f"{term.source} → {term.target}" for term in self.terms if term.target)
            return self.message + (f"\n\nGlossary and term-index entries: {known}" if known else "")
        lines = [self.translation, ""]
        if self.terms:
            lines.append("Required terms: " + "; ".join(f"{term.target} {'✓' if term.found else '✗ missing'}"
                                                         for term in self.terms))
        lines += [f"Check this sentence, {', '.join(s.missing)} missing: {s.text}" for s in self.flagged_sentences]
        lines += [f"Check this sentence, English left untranslated ({', '.join(s.untranslated)}): {s.text}"
                  for s in self.sentences if s.untranslated]
        lines.append(f"({self.engine})")
        return "\n".join(lines).strip()


def run_translation(text: str, target_language: str, source_language: str = "en",
                    glossary: Glossary | str | Path | None = None, engine: str | None = None,
                    refiner: ChatModel | None = None, settings: Settings | None = None,
                    progress: ProgressCallback | None = None) -> TranslateTextResult:
    """Translate with the user's glossary (a path is the operator's own, from the command line);
    every user error becomes a ToolError."""
    try:
        glossary = load_glossary(glossary, default_lang=target_language) if isinstance(glossary, (str, Path)) else glossary
        result = translate_text(text, target_language, source_lang=source_language, glossary=glossary, engine=engine,
                                refiner=refiner, settings=settings, progress=progress)
    except ValueError as exc:  # TranslationError, GlossaryError, bad language codes
        raise ToolError(str(exc)) from exc
    return TranslateTextResult.model_validate(result.model_dump())


class TranslateTextTool(ScanTool):
    name: str = "translate_text"
    args_schema: type[BaseModel] = TranslateTextArgs
    needs_scan: ClassVar[bool] = False
    action: ClassVar[re.Pattern[str] | None] = re.compile(r"\b(translat\w*)\b", re.IGNORECASE)

    @classmethod
    def read_arguments(cls, request: str) -> dict[str, Any] | None:
        """"Translate 'no acute bleed' into Spanish", "Translate into Portuguese: ...": the handed-over text and the one
        language named outside it. A glossary, a source language or a text without quotes or colon is for the model."""
        passage = users_passage(request)
        if passage == request.strip():
            return None
        outside = request.replace(passage, " ")
        languages = languages_named(outside)
        if (not cls.action.search(outside) or len(languages) != 1
                or re.search(r"\b(glossar\w*|from)\b", outside, re.IGNORECASE)):
            return None
        return {"text": passage, "target_language": languages[0]}

    def execute(self, args: TranslateTextArgs) -> TranslateTextResult:
        """The model or the message named the glossary: it must lie in the glossary folder or an upload."""
        try:
            glossary = load_named_glossary(args.glossary_path, get_settings()) if args.glossary_path else None
        except ValueError as exc:
            raise ToolError(str(exc)) from exc
        return run_translation(args.text, args.target_language, args.source_language, glossary)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("translate", help="translate a text or file with required medical terms enforced")
    p.add_argument("source", metavar="FILE_OR_TEXT", help="a text file, '-' for stdin, or the text itself")
    p.add_argument("--to", required=True, dest="target_language", help="target language code, e.g. es or pt")
    p.add_argument("--from", default="en", dest="source_language", help="source language code (default en)")
    p.add_argument("--glossary", help="glossary whose terms are enforced: CSV or TSV with a header source,target[,lang] "
                   "(the language defaults to --to) or en,es; or TBX")
    p.add_argument("--engine", help="apertium, bergamot, bergamot+apertium (the en->es default), or the folder of a "
                   "local Marian/NLLB/M2M100 model")
    p.add_argument("--refine", action="store_true", help="let the configured LLM repair sentences missing a term")
    p.add_argument("--json", action="store_true", help="print the typed result as JSON")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    if args.source == "-":
        text = sys.stdin.read()
    elif len(args.source) < 4096 and Path(args.source).is_file():
        text = Path(args.source).read_text(encoding="utf-8")
    else:
        text = args.source
    refiner = None
    if args.refine:
        from assistant.models.registry import load_chat_model

        refiner = load_chat_model()
    with tqdm(total=100, desc="translate", unit="%", disable=args.json, leave=False) as bar:
        def progress(fraction: float, message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(round(fraction * 100) - bar.n)

        result = run_translation(text, args.target_language, args.source_language, args.glossary, args.engine,
                                 refiner, progress=progress)
    if args.json:
        print(json.dumps(result.model_dump(), indent=2, ensure_ascii=False))
    else:
        print(result.translation if result.translation is not None else result.summary())
        if result.message:
            print(result.message, file=sys.stderr)
    return 0 if result.translation is not None else 1
