"""lookup_term: a medical term, abbreviation or code -> concepts with codes and translated labels."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from assistant.config import Settings
from assistant.findings import Finding
from assistant.grounding import VERBATIM
from assistant.terminology import TermHit, get_term_index
from assistant.terminology.glossary import GLOSSARY_SOURCE
from assistant.terminology.index import check_search
from assistant.terminology.sources import SOURCE_NAMES
from tools.base import ScanTool, ToolError, ToolResult


class LookupTermArgs(BaseModel):
    query: str = Field(description="The term, abbreviation or code to look up, e.g. 'heart attack', 'PE', 'I21.9'.",
                       json_schema_extra=VERBATIM)
    k: int = Field(5, ge=1, le=20, description="How many concepts to return.")
    language: str = Field("en", description="Language for the labels: 'en', 'de', 'es', 'fr' or 'pt'.")
    sources: list[str] | None = Field(
        None, description=f"Restrict to these terminologies: {', '.join(SOURCE_NAMES)}, or {GLOSSARY_SOURCE} "
                          "(the user's own glossary, when one is configured). Leave empty for all.")


class TermLookup(ToolResult):
    """The concepts found for one query, best first."""

    query: str
    language: str
    hits: list[TermHit]

    def findings(self, arguments: dict) -> list[Finding]:
        """The best match, as the term a report should use for the query."""
        if not self.hits:
            return []
        concept = self.hits[0].concept
        return [Finding(kind="term", what=concept.preferred, concept_id=concept.id, codes=concept.codes,
                        source_tool="lookup_term", parameters=arguments)]

    def summary(self) -> str:
        """The best concept first, without retrieval scores: a small answering model quoted a score of
        1.00 as if it were the code."""
        if not self.hits:
            return f"No concept found for '{self.query}'."
        best, *others = self.hits
        lines = [f"Best match for '{self.query}': {self._line(best)}"]
        if others:
            lines.append("Other candidates:")
            lines += [f"- {self._line(hit)}" for hit in others]
        return "\n".join(lines)

    def _line(self, hit: TermHit) -> str:
        codes = ", ".join(f"{system} {code}" for system, code in hit.concept.codes.items()) or "no code"
        label = ""
        if self.language != "en":
            label = f"; {self.language} label: '{hit.label}'" if hit.label else f"; no {self.language} label"
        return f"{hit.concept.preferred} [{codes}]{label} (source {hit.concept.source}, matched '{hit.matched}')"


def lookup_term(query: str, k: int = 5, language: str = "en", sources: list[str] | None = None,
                settings: Settings | None = None) -> TermLookup:
    """Search the shared term index; bad queries, languages or sources become ToolErrors."""
    try:
        check_search(query, k, language, sources or None)
        hits = get_term_index(settings).search(query, k=k, lang=language, sources=sources or None)
    except ValueError as exc:
        raise ToolError(str(exc)) from exc
    return TermLookup(query=query.strip(), language=language, hits=hits)


class LookupTermTool(ScanTool):
    name: str = "lookup_term"
    args_schema: type[BaseModel] = LookupTermArgs
    needs_scan: ClassVar[bool] = False

    def execute(self, args: LookupTermArgs) -> TermLookup:
        return lookup_term(args.query, args.k, args.language, args.sources)
