"""normalize_terms: a sentence or report -> the medical concepts it mentions, with character spans."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import BaseModel, Field

from assistant.config import Settings
from assistant.findings import Claim, Finding, not_an_answer
from assistant.grounding import VERBATIM
from assistant.terminology import TermMention, get_term_index
from assistant.terminology.index import check_text
from tools.base import ScanTool, ToolError, ToolResult


class NormalizeTermsArgs(BaseModel):
    text: str = Field(description="The sentence, finding or report whose medical terms should be identified.",
                      json_schema_extra=VERBATIM)
    language: str = Field("en", description="Language of the labels to report: 'en', 'de', 'es', 'fr' or 'pt'.")


class NormalizedTerms(ToolResult):
    """Each concept mention with its span in the text."""

    language: str = not_an_answer(description="language of the labels")
    mentions: list[TermMention] = not_an_answer(description="concepts mentioned in the text (claims: see `claims`)")

    def claims(self, tool: str) -> list[Claim]:
        """Each mention's concept and codes (a mention is an exact or above-threshold match in the text itself)."""
        claims = []
        for index, mention in enumerate(self.mentions):
            codes = ", ".join(f"{system} {code}" for system, code in mention.concept.codes.items()) or "no code"
            label = mention.concept.label(self.language)
            translated = f", {self.language}: '{label}'" if self.language != "en" and label else ""
            claims.append(Claim(tool=tool, path=f"mentions.{index}", meaning=f"concept for '{mention.text}'", kind="code",
                                value=mention.concept.id, text=f"{mention.concept.preferred} [{codes}]{translated}",
                                headline=True, asked_as=["code", "concepts", "terms"]))
        return claims or [Claim(tool=tool, path="mentions", meaning="concepts recognised", kind="text", value=[],
                                text="none", headline=True)]

    def findings(self, arguments: dict) -> list[Finding]:
        return [
            Finding(kind="term", what=m.concept.preferred, where=f"'{m.text}' [{m.start}:{m.end}]",
                    concept_id=m.concept.id, codes=m.concept.codes, source_tool="normalize_terms", parameters=arguments)
            for m in self.mentions
        ]

    def summary(self) -> str:
        if not self.mentions:
            return "No medical concept recognised in the text."
        lines = []
        for mention in self.mentions:
            codes = ", ".join(f"{system} {code}" for system, code in mention.concept.codes.items())
            label = mention.concept.label(self.language)
            translated = f", {self.language}: '{label}'" if self.language != "en" and label else ""
            lines.append(f"'{mention.text}' -> {mention.concept.preferred} [{codes}] (source {mention.concept.source}{translated})")
        return "\n".join(lines)


def normalize_terms(text: str, language: str = "en", settings: Settings | None = None) -> NormalizedTerms:
    """Find the concepts in `text`; empty, huge or badly labelled input becomes a ToolError."""
    try:
        check_text(text, language)
        mentions = get_term_index(settings).normalize(text, lang=language)
    except ValueError as exc:
        raise ToolError(str(exc)) from exc
    return NormalizedTerms(language=language, mentions=mentions)


class NormalizeTermsTool(ScanTool):
    name: str = "normalize_terms"
    args_schema: type[BaseModel] = NormalizeTermsArgs
    needs_scan: ClassVar[bool] = False
    action: ClassVar[re.Pattern[str] | None] = re.compile(
        r"\b(normali[sz]e|code (this|the) (report|note|text)|extract (the )?terms)\b", re.IGNORECASE)

    def execute(self, args: NormalizeTermsArgs) -> NormalizedTerms:
        return normalize_terms(args.text, args.language)
