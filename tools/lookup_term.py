"""lookup_term: a medical term, abbreviation or code -> concepts with codes and translated labels."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from assistant.config import Settings
from assistant.findings import Claim, Finding, not_an_answer
from assistant.grounding import VERBATIM
from assistant.terminology import TermHit, get_term_index
from assistant.terminology.coding import CodeAnswer, answer_code, check_system
from assistant.terminology.glossary import GLOSSARY_SOURCE
from assistant.terminology.index import check_search
from assistant.terminology.languages import languages_named
from assistant.terminology.lexical import looks_like_code
from assistant.terminology.sources import SOURCE_NAMES
from tools.base import MAX_LISTED, ScanTool, ToolError, ToolResult


class LookupTermArgs(BaseModel):
    query: str = Field(description="The term, abbreviation or code to look up, e.g. 'heart attack', 'PE', 'I21.9'.",
                       json_schema_extra=VERBATIM)
    k: int = Field(5, ge=1, le=20, description="How many concepts to return.")
    language: str = Field("en", description="Language for the labels: 'en', 'de', 'es', 'fr' or 'pt'.")
    sources: list[str] | None = Field(
        None, description=f"Restrict to these terminologies: {', '.join(SOURCE_NAMES)}, or {GLOSSARY_SOURCE} "
                          "(the user's own glossary, when one is configured). Leave empty for all.")
    system: str | None = Field(
        None, description="When the user asks for a code: the code system, 'icd10', 'icd10cm', 'snomed', 'hpo', "
                          "'radlex' or 'loinc'. The concept is then found in every terminology (lay words included) "
                          "and its code in this system is stated only when the match is confident.")


# A code is stated as the answer only when the best hit's match score (1.0 exact synonym, else its n-gram or embedding
# similarity to the query) reaches this bound; checked on lay names by `python -m evals.terms.bench_code_confidence`.
CONFIDENT_MATCH = 0.85


class TermLookup(ToolResult):
    """The concepts found for one query, best first."""

    query: str = not_an_answer(description="the looked-up term, as asked")
    language: str = not_an_answer(description="language of the labels")
    hits: list[TermHit] = not_an_answer(description="concepts found, best first (claims: see `claims`)")
    code_answer: CodeAnswer | None = Field(
        None, description="The code in the asked system: `code` is set only when `confidence` >= `confidence_bound`; "
                          "otherwise `candidates` are the closest codes, none of them confirmed.")

    @property
    def confident(self) -> bool:
        return bool(self.hits) and self.hits[0].score >= CONFIDENT_MATCH

    def claims(self, tool: str) -> list[Claim]:
        """The best concept's name, codes and label, when its match is confident; otherwise the plain statement that
        there is no confident match, with the candidates (never one of them stated as the code)."""
        if self.code_answer is not None:
            return [self._code_claim(tool)]
        if not self.confident:
            found = "; ".join(self._line(hit) for hit in self.hits[:MAX_LISTED]) or "none"
            return [Claim(tool=tool, path="hits", meaning=f"no confident match for '{self.query}'; closest candidates",
                          kind="text", value=[h.concept.id for h in self.hits[:MAX_LISTED]], text=found, headline=True)]
        best = self.hits[0]
        about = f"for '{self.query}'"
        claims = [Claim(tool=tool, path="hits.0.concept.preferred", meaning=f"best match {about}", kind="label",
                        value=best.concept.preferred, text=best.concept.preferred, headline=True,
                        asked_as=["what is it called", "name", "term", "diagnosis name"])]
        claims += [Claim(tool=tool, path=f"hits.0.concept.codes.{system}", meaning=f"{system} code {about}", kind="code",
                         value=code, text=code, headline=True, asked_as=["code", f"{system} code"])
                   for system, code in best.concept.codes.items()]
        if self.language != "en":
            claims.append(Claim(tool=tool, path="hits.0.label", meaning=f"{self.language} label {about}", kind="label",
                                value=best.label, text=f"'{best.label}'" if best.label else f"no {self.language} label",
                                headline=True, asked_as=["translation", "in Spanish", "in French", "in German", "in Portuguese"]))
        return claims

    def _code_claim(self, tool: str) -> Claim:
        """A code request is answered by concept: the code only above the calibrated bound, else the candidates."""
        answer = self.code_answer
        assert answer is not None
        if answer.code:
            return Claim(tool=tool, path="code_answer.code", meaning=f"{answer.system} code for '{self.query}'",
                         kind="code", value=answer.code, text=self._code_line(), headline=True,
                         asked_as=["code", f"{answer.system} code"])
        return Claim(tool=tool, path="code_answer.candidates",
                     meaning=f"no confident {answer.system} match for '{self.query}'; closest candidates",
                     kind="text", value=[c.code for c in answer.candidates[:3]], text=self._code_line(), headline=True)

    def findings(self, arguments: dict) -> list[Finding]:
        """The best match, as the term a report should use for the query; with a code request, the
        confidently matched code only."""
        if self.code_answer is not None:
            answer = self.code_answer
            if answer.code is None:
                return []
            best = answer.candidates[0]
            return [Finding(kind="term", what=best.title, concept_id=best.concept_id,
                            codes={answer.system: answer.code}, source_tool="lookup_term", parameters=arguments)]
        if not self.hits:
            return []
        concept = self.hits[0].concept
        return [Finding(kind="term", what=concept.preferred, concept_id=concept.id, codes=concept.codes,
                        source_tool="lookup_term", parameters=arguments)]

    def summary(self) -> str:
        """The best concept first, without retrieval scores: a small answering model quoted a score of
        1.00 as if it were the code."""
        code_lines = [self._code_line()] if self.code_answer is not None else []
        if not self.hits:
            return "\n".join([*code_lines, f"No concept found for '{self.query}'."])
        best, *others = self.hits
        lines = [*code_lines, f"Best match for '{self.query}': {self._line(best)}"]
        if others:
            lines.append("Other candidates:")
            lines += [f"- {self._line(hit)}" for hit in others]
        return "\n".join(lines)

    def _code_line(self) -> str:
        """'The ICD-10 code ... is X' only above the calibrated bound; otherwise the candidates, unconfirmed."""
        answer = self.code_answer
        assert answer is not None
        if answer.code:
            return (f"The {answer.system} code for '{self.query}' is {answer.code} ({answer.title}); match confidence "
                    f"{answer.confidence:.2f}, above the bound {answer.confidence_bound:.2f}.")
        closest = "; ".join(f"{c.code} {c.title}" for c in answer.candidates[:3]) or "none"
        return (f"No confident {answer.system} match for '{self.query}' (best confidence {answer.confidence:.2f}, "
                f"below the bound {answer.confidence_bound:.2f}); closest candidates, not confirmed: {closest}.")

    def _line(self, hit: TermHit) -> str:
        codes = hit.concept.codes
        if hit.linked is not None:  # every terminology's code of the concept, not only its own source's
            codes = {system: values[0] for system, values in hit.linked.codes.items()}
            codes |= {system: f"{code} (broader)" for system, code in hit.linked.broader.items() if system not in codes}
        codes = ", ".join(f"{system} {code}" for system, code in codes.items()) or "no code"
        label = ""
        if self.language != "en":
            label = f"; {self.language} label: '{hit.label}'" if hit.label else f"; no {self.language} label"
        return f"{hit.concept.preferred} [{codes}]{label} (source {hit.concept.source}, matched '{hit.matched}')"


# "What is the ICD-10 code for X?", "HPO term for X", "look up X": the system (if any) and the term, read by code.
_SYSTEMS = {"icd10": "icd10", "icd10cm": "icd10cm", "snomed": "snomed", "snomedct": "snomed", "hpo": "hpo",
            "radlex": "radlex", "loinc": "loinc"}
_SYSTEM = r"(?P<system>ICD-?10(?:-?CM)?|SNOMED(?:[- ]?CT)?|HPO|RadLex|LOINC)"  # a terminology as requests name it
_PLAIN_REQUESTS = (
    re.compile(r"^(?:(?:what(?:'s| is)|give me|find|get|tell me|which is)\s+)?(?:the\s+|an?\s+)?"
               rf"(?:{_SYSTEM}\s+)?(?:code|term|concept)\s+"
               r"(?:for|of)\s+(?P<query>.+?)[\s?.!]*$", re.I),
    re.compile(r"^(?:please\s+)?(?:look\s*up|search for|define)\s+(?:the\s+term\s+)?(?P<query>.+?)[\s?.!]*$", re.I),
)
_SYSTEM_AFTER = re.compile(rf"\s+(?:in|from|using|per)\s+{_SYSTEM}$", re.IGNORECASE)
_POLITE_END = re.compile(r"[\s,]+(?:please|thanks|thank you)$", re.IGNORECASE)
_QUERY_WORDS = 6  # a longer "query" is a sentence, not a term: the model reads it
# A request for a code in other words ("Which ICD-10 code is used for a stroke?") is read when the term index finds
# exactly one term in it and every other word only asks: stop words, a terminology's name, the thing asked for. Any
# other word ("the code for a *broken* hip") may change the concept, and the model reads the request.
_ASKS_FOR_CODE = re.compile(r"\b(ICD-?10\w*|SNOMED|HPO|RadLex|LOINC|codes?|term|concept)\b", re.IGNORECASE)
_SYSTEM_NAMED = re.compile(rf"\b{_SYSTEM}\b", re.IGNORECASE)
_ASKING_WORDS = ENGLISH_STOP_WORDS | {
    "code", "codes", "coded", "coding", "term", "concept", "classification", "classify", "classified", "look", "lookup",
    "search", "define", "tell", "give", "need", "want", "use", "used", "using", "please", "official", "standard",
    "medical", "diagnosis", "diagnostic", "billing", "number", "does", "mean", "means", "meaning", "stand", "stands",
    "s", "icd", "icd10", "icd10cm", "10", "cm", "snomed", "snomedct", "ct", "hpo", "radlex", "loinc"}
_REQUEST_WORDS = 14  # a longer request carries more than a code question
# How requests name each terminology (letters and digits only): a source restriction the request does not name is
# one the model copied from its examples ("pulmonary embolism in Spanish" restricted to HPO found no Spanish label).
_SOURCE_WORDS = {"icd10": ("icd10",), "icd10cm": ("icd10cm",), "hpo": ("hpo", "phenotype"),
                 "dicom": ("dicom", "radlex", "loinc", "snomed"), "drugs": ("drug", "medication", "medicine"),
                 GLOSSARY_SOURCE: ("glossary",)}

# A search restricted to one coding terminology is a request for that system's code.
_CODING_SOURCES = {"icd10": "ICD-10", "icd10cm": "ICD-10-CM", "hpo": "HPO"}


def _system_of(named: str | None) -> dict[str, str]:
    """The `system` argument for a terminology as a request names it ("ICD-10", "SNOMED CT"); none when unnamed."""
    return {"system": _SYSTEMS[re.sub(r"[^a-z0-9]", "", named.lower())]} if named else {}


def lookup_term(query: str, k: int = 5, language: str = "en", sources: list[str] | None = None,
                settings: Settings | None = None, system: str | None = None) -> TermLookup:
    """Search the shared term index and, for a code request, answer it by concept; bad queries,
    languages, sources or systems become ToolErrors."""
    try:
        check_search(query, k, language, sources or None)
        system = check_system(system) if system else None
        if system is None and sources and len(sources) == 1:
            system = _CODING_SOURCES.get(sources[0])
        index = get_term_index(settings)
        hits = index.search(query, k=k, lang=language, sources=sources or None)
        code_answer = answer_code(index, query, system, k=max(k, 5)) if system else None
    except ValueError as exc:
        raise ToolError(str(exc)) from exc
    return TermLookup(query=query.strip(), language=language, hits=hits, code_answer=code_answer)


class LookupTermTool(ScanTool):
    name: str = "lookup_term"
    args_schema: type[BaseModel] = LookupTermArgs
    needs_scan: ClassVar[bool] = False
    action: ClassVar[re.Pattern[str] | None] = re.compile(
        r"\b(ICD-?10\w*|SNOMED|HPO|RadLex|LOINC|code|look\s*up|define)\b", re.IGNORECASE)

    @classmethod
    def read_arguments(cls, request: str) -> dict[str, Any] | None:
        """"ICD-10 code for a heart attack", "look up pneumonia": the term and the code system, when the request is
        only that (a language, a number of results or a longer sentence is for the model to read)."""
        if languages_named(request):
            return None
        for pattern in _PLAIN_REQUESTS:
            if match := pattern.match(request.strip()):
                query = _POLITE_END.sub("", match.group("query")).strip(" '\"")
                if not query or len(query.split()) > _QUERY_WORDS:
                    return None
                named = match.groupdict().get("system")
                if tail := _SYSTEM_AFTER.search(query):  # "the code for a stroke in ICD-10"
                    query, named = query[: tail.start()], named or tail.group("system")
                return {"query": query} | _system_of(named)
        return cls._read_by_mention(request)

    @classmethod
    def _read_by_mention(cls, request: str) -> dict[str, Any] | None:
        """A code request in other words: its one term, found by the term index, when no other word could change it."""
        words = list(re.finditer(r"[\w'\-]+(?:\.\w+)*", request))  # "I21.9" is one word
        systems = {re.sub(r"[^a-z0-9]", "", m.group().lower()) for m in _SYSTEM_NAMED.finditer(request)}
        codes = [w for w in words if looks_like_code(w.group().strip(".")) and re.search(r"[A-Za-z]", w.group())]
        if not (_ASKS_FOR_CODE.search(request) or codes) or len(words) > _REQUEST_WORDS or len(systems) > 1:
            return None
        mentions = get_term_index().normalize(request)
        if len(mentions) == 1:
            term = (mentions[0].start, mentions[0].end)
        elif not mentions and len(codes) == 1:  # "What does I63 mean?"
            term = (codes[0].start(), codes[0].end())
        else:
            return None
        outside = [w.group() for w in words if w.end() <= term[0] or w.start() >= term[1]]
        if any(part not in _ASKING_WORDS for word in outside for part in re.split(r"['\-]", word.lower()) if part):
            return None
        named = _SYSTEM_NAMED.search(request)
        return {"query": request[term[0]:term[1]].strip(".")} | _system_of(named.group() if named else None)

    def with_request(self, arguments: dict[str, Any], request: str) -> dict[str, Any]:
        """Sources the request does not name are dropped: every terminology is searched."""
        sources = arguments.get("sources")
        said = re.sub(r"[^a-z0-9]", "", request.casefold())
        if sources and not any(word in said for source in sources for word in _SOURCE_WORDS.get(source, (source,))):
            return {k: v for k, v in arguments.items() if k != "sources"}
        return arguments

    def users_words(self, field: str, request: str) -> str:
        """For the query: the first term the index finds mentioned in the request ("give me the HPO term
        for seizures" -> "seizures"), else a code written in it, else the quoted or handed-over part."""
        if field != "query":
            return super().users_words(field, request)
        mentions = sorted(get_term_index().normalize(request), key=lambda m: m.start)
        if mentions:
            return request[mentions[0].start : mentions[0].end]
        codes = [token for token in re.findall(r"[\w.:]+", request) if looks_like_code(token.strip("."))]
        return codes[0].strip(".") if codes else super().users_words(field, request)

    def execute(self, args: LookupTermArgs) -> TermLookup:
        return lookup_term(args.query, args.k, args.language, args.sources, system=args.system)
