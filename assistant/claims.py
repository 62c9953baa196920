"""Answers bound to fields: which claims answer a question, the answer rendered from them, and the claim check.

Every number, code, side and verdict a clinician reads comes from one named field of one typed tool result
(`ToolResult.claims`), rendered by code. A 0.5B model chose the wrong one too often (the in-plane spacing for
"spacing between slices", "not abnormal" over a score far above its threshold), so choosing is deterministic:
the question is matched against each field's declared meaning and the ways clinicians ask for it (MiniLM
embeddings plus phrase hits). `check_claims` then reads any text about to be shipped (a model's wording in a
turn without tools, or the rendered answer itself) and lists what contradicts the fields; a failed check means
the answer is rebuilt from the fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache

import numpy as np

from assistant.findings import Claim
from assistant.grounding import check_grounding, numbers_in

# Always said with a result of these tools: the verdict with its score and threshold, a code with its label,
# a distance, a volume. A screening answer without its verdict is how "not abnormal" got written over a positive.
BUNDLED = {"detect_anomalies", "lookup_term", "normalize_terms", "translate_text", "measure_distance", "segment"}
MATCH_FLOOR = 0.45  # below this cosine (MiniLM), the question names no field of the result
SECOND_CLAIM_MARGIN = 0.03  # a second field is added when it matches nearly as well ("thickness and field of view")
MAX_CLAIMS = 3


@cache
def _embedder():
    from assistant.terminology.embeddings import get_embedder

    return get_embedder("minilm-onnx")


_VECTORS: dict[str, np.ndarray] = {}


def _vectors(texts: Sequence[str]) -> np.ndarray:
    """Embeddings of field texts, computed once per text (the same few hundred recur every turn)."""
    missing = [t for t in dict.fromkeys(texts) if t not in _VECTORS]
    if missing:
        _VECTORS.update(zip(missing, _embedder().encode(missing)))
    return np.stack([_VECTORS[t] for t in texts])


def _fold(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.casefold())).strip()


def _ways(claim: Claim) -> list[str]:
    return [claim.meaning.split(" (")[0], *claim.asked_as]


def match_scores(question: str, claims: Sequence[Claim]) -> list[tuple[float, int]]:
    """How well each claim answers the question: (best cosine over its meaning and ways of asking, words of the
    longest way of asking written out in the question, 0 when none is)."""
    if not claims:
        return []
    texts = [way for claim in claims for way in _ways(claim)]
    similarity = _vectors(texts) @ _embedder().encode([question], query=True)[0]
    folded = f" {_fold(question)} "
    scores, at = [], 0
    for claim in claims:
        ways = _ways(claim)
        hits = [len(_fold(w).split()) for w in ways if f" {_fold(w)} " in folded]
        scores.append((float(similarity[at : at + len(ways)].max()), max(hits, default=0)))
        at += len(ways)
    return scores


def _related(a: str, b: str) -> bool:
    """One path contains the other (`spacing_mm` and `spacing_mm.2` say the same thing twice)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def pick_claims(question: str, claims: Sequence[Claim]) -> tuple[list[Claim], bool]:
    """The claims that answer `question`, and whether any field matched it (False: only headline claims given).

    Fields whose way of asking is written out in the question come first ("field of view and thickness" names two),
    longer phrases first ("spacing between slices" over "spacing"); otherwise the nearest meaning above MATCH_FLOOR
    and any within SECOND_CLAIM_MARGIN of it."""
    scores = match_scores(question, claims)
    named = sorted((i for i, (_, words) in enumerate(scores) if words), key=lambda i: (-scores[i][1], -scores[i][0]))
    if named:
        candidates = named
    else:
        ranked = sorted(range(len(claims)), key=lambda i: -scores[i][0])
        top = scores[ranked[0]][0] if ranked else 0.0
        candidates = [i for i in ranked if scores[i][0] >= max(MATCH_FLOOR, top - SECOND_CLAIM_MARGIN)]
    chosen: list[Claim] = []
    for index in candidates:
        claim = claims[index]
        if len(chosen) < MAX_CLAIMS and not any(_related(claim.path, c.path) and claim.tool == c.tool for c in chosen):
            chosen.append(claim)
    chosen += [c for c in claims if any(_siblings(c, k) for k in chosen) and c not in chosen]
    matched = bool(chosen)
    for tool in {c.tool for c in claims}:  # a bundle's headline always comes along; a tool nothing matched gives its headline
        if tool in BUNDLED or not any(c.tool == tool for c in chosen):
            chosen += [c for c in claims if c.tool == tool and c.headline
                       and not any(_related(c.path, k.path) and k.tool == c.tool for k in chosen)]
    order = {id(c): i for i, c in enumerate(claims)}
    return sorted(chosen, key=lambda c: order[id(c)]), matched


def _siblings(a: Claim, b: Claim) -> bool:
    """Two axes of one in-plane quantity ("in-plane pixel spacing along x" and "... along y"): said together."""
    head = a.meaning.split(" along ")[0]
    return (a is not b and a.tool == b.tool and " along " in a.meaning and head.startswith("in-plane")
            and b.meaning.split(" along ")[0] == head)


def contradictions(claims: Sequence[Claim]) -> list[str]:
    """Results that contradict themselves, said plainly instead of smoothed over: a verdict flag against its own score
    and threshold, one field given two different values by two calls."""
    problems = []
    by_path = {(c.tool, c.path, c.earlier): c for c in claims}  # a result quoted from earlier is checked like a new one
    for claim in claims:
        score = by_path.get((claim.tool, "image_score", claim.earlier))
        threshold = by_path.get((claim.tool, "threshold", claim.earlier))
        if claim.kind == "verdict" and score and threshold and (score.value > threshold.value) != claim.value:
            problems.append(f"The {claim.tool} result contradicts itself: score {score.text} against threshold "
                            f"{threshold.text}, yet flagged {claim.text.split(':')[0]}. Treat this screening as unreliable.")
        old = next((c for c in claims if c.earlier and c.tool == claim.tool and c.path == claim.path), None)
        if not claim.earlier and claim.kind in ("quantity", "count", "verdict") and old and old.text != claim.text:
            problems.append(f"{claim.meaning[:1].upper() + claim.meaning[1:]} was {old.text} earlier in this conversation "
                            f"and is {claim.text} now: the results disagree.")
    return list(dict.fromkeys(problems))


def render(claims: Iterable[Claim]) -> str:
    return "\n".join(claim.sentence() for claim in claims)


# --- the claim check ---------------------------------------------------------------------------

_NEGATIVE_VERDICT = re.compile(
    r"\b(not|no|nothing|isn't|is not|without)\b[^.\n]{0,30}\b(abnormal\w*|anomal\w*|deviat\w*|unusual|wrong|lesions?)\b"
    r"|\b(normal|unremarkable) (brain|scan|study|mri|mr|ct|appearance|findings?)\b|\bunremarkable\b"
    r"|\b(looks|appears|is|seems) (entirely |completely )?normal\b|\bbelow the (calibrated )?threshold\b",
    re.IGNORECASE,
)
_POSITIVE_VERDICT = re.compile(
    r"(?<!not )\babove the (calibrated )?threshold\b|\b(is|looks|appears|seems) abnormal\b|\bexceeds? the (calibrated )?threshold\b",
    re.IGNORECASE,
)
_CODE = re.compile(r"\b(?:[A-Z]\d{2}(?:\.\d{1,4})?[A-Z]?|HP:\d{7}|RID\d+|\d{4,}-\d)\b")
_SIDED = re.compile(r"\b(left|right)\s+([a-z]{4,})", re.IGNORECASE)


def _field_phrase(claim: Claim) -> str:
    return _fold(claim.meaning.split(" (")[0].split(",")[0])


def check_claims(text: str, claims: Sequence[Claim], conversation: Sequence[str] = ()) -> list[str]:
    """What in `text` contradicts the fields (`claims` of this turn's and earlier results) or was made up: a number
    nothing stated or under another field's name, a verdict against the flag, a side against the result, a code no
    confident look-up gave. Empty when the text can be shipped."""
    problems = []
    sources = [c.text for c in claims] + list(conversation)
    problems += [f"the number {n} comes from no field or message" for n in check_grounding(text, sources).ungrounded]
    problems += _wrong_fields(text, claims)
    for claim in claims:
        if claim.kind != "verdict" or not isinstance(claim.value, bool):
            continue
        pattern = _NEGATIVE_VERDICT if claim.value else _POSITIVE_VERDICT
        if (hit := pattern.search(text)) and hit.group(0).casefold() not in claim.text.casefold():
            problems.append(f"'{hit.group(0)}' contradicts {claim.tool}.{claim.path} ({claim.text.split(':')[0]})")
    problems += _wrong_sides(text, claims)
    stated = " ".join(sources)
    problems += [f"the code {code} comes from no confident look-up" for code in _CODE.findall(text) if code not in stated]
    return problems


def _wrong_fields(text: str, claims: Sequence[Claim]) -> list[str]:
    """A sentence naming one field ("slice thickness") with a number that is not that field's value."""
    problems = []
    quantities = [c for c in claims if c.kind in ("quantity", "count")]
    for sentence in re.split(r"(?<=[.;\n])\s+", text):
        folded = _fold(sentence)
        named = [c for c in quantities if _field_phrase(c) and _field_phrase(c) in folded]
        if not named:
            continue
        longest = max(len(_field_phrase(c)) for c in named)
        named = [c for c in named if len(_field_phrase(c)) == longest]  # "spacing between slices" over "spacing"
        allowed = {n for c in named for n in numbers_in(c.text)}
        for number in numbers_in(sentence):
            if number not in allowed and not check_grounding(number, [c.text for c in named]).ok:
                problems.append(f"{number} is stated as {_field_phrase(named[0])}, which is {named[0].text}")
    return problems


def _wrong_sides(text: str, claims: Sequence[Claim]) -> list[str]:
    """'right hippocampus' where the results only have a left one (a segmentation target, an atlas label's side)."""
    sided: dict[str, set[str]] = {}
    for claim in claims:
        if claim.kind in ("label", "side") and isinstance(claim.value, str):
            for side, word in _SIDED.findall(claim.value):
                sided.setdefault(word.casefold()[:5], set()).add(side.casefold())
    problems = []
    for side, word in _SIDED.findall(text):
        sides = sided.get(word.casefold()[:5])
        if sides and side.casefold() not in sides:
            problems.append(f"'{side} {word}' but the results are about the {'/'.join(sorted(sides))} one")
    return problems

