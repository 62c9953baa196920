"""Code requests answered by concept: "the ICD-10 code for heart attack".

The concept is found first, in whichever source names it best (HPO layperson synonyms, ICD-10-CM
inclusion terms, labels in other languages), and its code in the asked system is read from the
concept graph; only when the graph has none is the system's own terminology searched with the
concept's name. Each candidate code gets a match confidence from a logistic model fitted on a
development set of lay names (`evals/terms/bench_laynames.py --fit`, saved in
`code_calibration.json`); a code is stated only when its confidence reaches the bound chosen there,
otherwise the answer is "no confident match" with the closest candidates.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from assistant.terminology.models import TermHit

CALIBRATION_FILE = Path(__file__).with_name("code_calibration.json")
# How users and tools name a code system -> the system name the concepts use.
CODE_SYSTEMS: dict[str, str] = {
    "icd10": "ICD-10", "icd-10": "ICD-10", "icd": "ICD-10", "who icd-10": "ICD-10",
    "icd10cm": "ICD-10-CM", "icd-10-cm": "ICD-10-CM",
    "hpo": "HPO", "snomed": "SNOMED", "snomed ct": "SNOMED", "snomedct": "SNOMED", "sct": "SNOMED",
    "radlex": "RadLex", "loinc": "LOINC", "umls": "UMLS",
}
# The sources whose own concepts carry a system's codes (searched when the concept has no code there).
SYSTEM_SOURCES: dict[str, list[str]] = {"ICD-10": ["icd10"], "ICD-10-CM": ["icd10cm"], "HPO": ["hpo"],
                                        "SNOMED": ["dicom", "hpo"], "RadLex": ["dicom"], "LOINC": ["dicom"],
                                        "UMLS": ["hpo"]}
CONCEPT_HITS = 20
SYSTEM_HITS = 10
Via = Literal["concept", "parent", "system-search"]
FEATURES = ("bias", "match_score", "link_confidence", "inverse_rank", "via_concept", "via_parent", "exact",
            "margin")


def check_system(name: str) -> str:
    """The canonical system name ('ICD-10', 'SNOMED', ...) or a ValueError listing the choices."""
    system = CODE_SYSTEMS.get(" ".join(str(name or "").replace("_", " ").split()).casefold())
    if system is None:
        choices = ", ".join(sorted({"icd10", "icd10cm", "hpo", "snomed", "radlex", "loinc", "umls"}))
        raise ValueError(f"Unknown code system {name!r}; choose one of {choices}.")
    return system


class CodeCandidate(BaseModel):
    """One code the query may mean, with how it was reached and how sure the match is."""

    system: str
    code: str
    title: str = Field(description="The English name of the concept holding the code.")
    concept_id: str = Field(description="The linked concept's id (its most authoritative member).")
    matched: str = Field(description="The name of the concept that matched the query.")
    via: Via = Field(description="concept: the matched concept's own code; parent: the nearest broader code of "
                                 "that system; system-search: the system searched with the concept's name.")
    link_method: str | None = Field(None, description="How the matched concept is linked to the code's holder.")
    match_score: float = Field(description="0-1 retrieval score of the matched name.")
    link_confidence: float = Field(description="0-1 confidence of the link between the matched concept and the code.")
    rank: int = Field(description="Rank (1 = best) of the retrieval hit that led to this code.")
    confidence: float = Field(description="Calibrated probability that this is the right code for the query.")


class CodeAnswer(BaseModel):
    """The code of a query's concept in one system, or the reason none is stated."""

    system: str
    code: str | None = Field(description="Stated only when `confidence` >= `confidence_bound`.")
    title: str | None = None
    confidence: float = Field(description="Calibrated confidence of the best candidate (0 without candidates).")
    confidence_bound: float = Field(description="Smallest confidence at which a code is stated (chosen on the "
                                                "development set for the precision in `calibration`).")
    calibration: str = Field(description="Where the confidence model and bound come from.")
    candidates: list[CodeCandidate] = Field(default_factory=list, description="Best first.")

    @property
    def confident(self) -> bool:
        return self.code is not None


class Calibration(BaseModel):
    weights: list[float]
    bound: float
    note: str


@cache
def calibration() -> Calibration:
    return Calibration.model_validate_json(CALIBRATION_FILE.read_text(encoding="utf-8"))


def features(candidate: CodeCandidate, margin: float) -> list[float]:
    return [1.0, candidate.match_score, candidate.link_confidence, 1.0 / candidate.rank,
            float(candidate.via == "concept"), float(candidate.via == "parent"), float(candidate.match_score >= 1.0),
            margin]


def _probability(values: list[float], weights: list[float]) -> float:
    z = sum(v * w for v, w in zip(values, weights, strict=True))
    return 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))


# Everyday words that classifications spell otherwise ("breast cancer" is "malignant neoplasm of
# breast", "broken hip" a "fracture of hip"); the query is also searched in the classification's words.
_CLINICAL_FORMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(?:cancer of (?:the )?(.+)|(.+?) cancer)$", re.IGNORECASE), "malignant neoplasm of {}"),
    (re.compile(r"^(?:broken|fractured) (.+)$", re.IGNORECASE), "fracture of {}"),
)


def clinical_forms(query: str) -> list[str]:
    """The query in a classification's wording, where an everyday pattern applies."""
    forms = []
    for pattern, template in _CLINICAL_FORMS:
        if match := pattern.match(query.strip()):
            forms.append(template.format(next(group for group in match.groups() if group)))
    return forms


def code_candidates(index, query: str, system: str, k: int = 10) -> list[CodeCandidate]:
    """Candidate codes in `system` for `query`, best first, uncalibrated confidence 0."""
    found: dict[str, CodeCandidate] = {}

    def add(hit: TermHit, rank: int, via: Via, code: str, link_confidence: float, link_method: str | None,
            score: float) -> None:
        if code in found:
            return
        linked = hit.linked or index.linked(hit.concept)
        found[code] = CodeCandidate(system=system, code=code, title=linked.preferred, concept_id=linked.id,
                                    matched=hit.matched, via=via, link_method=link_method, match_score=round(score, 4),
                                    link_confidence=round(link_confidence, 4), rank=rank, confidence=0.0)

    hits = index.search(query, k=CONCEPT_HITS)
    ranked_hits = list(enumerate(hits, start=1))
    for form in clinical_forms(query):  # interleaved by rank with the query's own hits
        ranked_hits += list(enumerate(index.search(form, k=CONCEPT_HITS), start=1))
    ranked_hits.sort(key=lambda item: (item[0], -item[1].score))
    unresolved: list[tuple[int, TermHit]] = []
    for rank, hit in ranked_hits:
        linked = hit.linked or index.linked(hit.concept)
        if code := linked.code(system):
            holder = next((m for m in linked.members if (c := index.concept(m)) and c.codes.get(system) == code),
                          linked.id)
            confidence = min(linked.link_confidence(hit.concept.id), linked.link_confidence(holder))
            method = None if holder == hit.concept.id else _method(linked, hit.concept.id, holder)
            add(hit, rank, "concept", code, confidence, method, hit.score)
        elif parent := linked.broader.get(system):
            add(hit, rank, "parent", parent, 0.8 * linked.link_confidence(hit.concept.id), "code-parent", hit.score)
        else:
            unresolved.append((rank, hit))
    sources = [s for s in SYSTEM_SOURCES.get(system, []) if s in {info.name for info in index.metadata.sources}]
    if sources:
        # the concept's own name searched in the system's terminology: a link made at query time
        for rank, hit in unresolved[:3]:
            for sub in index.search(hit.concept.preferred, k=3, sources=sources):
                linked = sub.linked or index.linked(sub.concept)
                if code := linked.code(system) or linked.broader.get(system):
                    add(hit, rank, "system-search", code, sub.score, "name-search", hit.score * sub.score)
        for rank, hit in enumerate(index.search(query, k=SYSTEM_HITS, sources=sources), start=1):
            linked = hit.linked or index.linked(hit.concept)
            if code := linked.code(system) or linked.broader.get(system):
                add(hit, len(hits) + rank, "system-search", code, 1.0, None, hit.score)
    ranked = sorted(found.values(), key=lambda c: c.rank)
    return ranked[: max(k, 1) * 3]


def _method(linked, member: str, holder: str) -> str | None:
    for link in linked.links:
        if {link.source, link.target} & {member, holder} and link.method != "code-parent":
            return link.method
    return None


def rank_candidates(candidates: list[CodeCandidate], weights: list[float], k: int) -> list[CodeCandidate]:
    """Candidates with their calibrated confidence, most confident first (ties: retrieval order)."""
    scored = []
    for position, candidate in enumerate(candidates):
        competitors = [c.match_score * c.link_confidence for c in candidates if c is not candidate]
        margin = candidate.match_score * candidate.link_confidence - max(competitors, default=0.0)
        confidence = round(_probability(features(candidate, margin), weights), 4)
        scored.append((confidence, -position, candidate.model_copy(update={"confidence": confidence})))
    return [c for _, _, c in sorted(scored, key=lambda item: (item[0], item[1]), reverse=True)][:k]


def answer_code(index, query: str, system: str, k: int = 10) -> CodeAnswer:
    """The code of `query`'s concept in `system` when the calibrated confidence allows stating it."""
    system = check_system(system) if system not in SYSTEM_SOURCES else system
    model = calibration()
    ranked = rank_candidates(code_candidates(index, query, system, k), model.weights, k)
    best = ranked[0] if ranked else None
    stated = best is not None and best.confidence >= model.bound
    return CodeAnswer(system=system, code=best.code if stated else None, title=best.title if stated else None,
                      confidence=best.confidence if best else 0.0, confidence_bound=model.bound,
                      calibration=model.note, candidates=ranked)


def write_calibration(weights: list[float], bound: float, note: str) -> None:
    CALIBRATION_FILE.write_text(json.dumps({"weights": [round(w, 5) for w in weights], "bound": round(bound, 4),
                                            "note": note}, indent=2) + "\n", encoding="utf-8")
