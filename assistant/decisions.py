"""Is this a request for a diagnosis, a treatment or a go/no-go decision? A classifier, not a keyword list.

A keyword pattern let "Is it safe to start heparin? yes or no" through, and the 0.5B model then said "No, it is not
safe". The classifier is trained on the development half of a bank of phrasings in en/es/fr/de/pt
(`prompts/agent/decision_requests.jsonl`, written by `evals/make_decision_bank.py`); the held-out half, whole ways of
asking it never saw, measures it (`python -m evals.bench_decisions`). The classifier is `assistant.phrasings.PhraseClassifier`.
"""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel

from assistant.phrasings import PhraseClassifier, cached_classifier, read_bank

# Chosen by template-grouped cross-validation on the development split (`bench_decisions --cv`): at 0.2 a missed
# decision request is rare (recall 0.90) and a false alarm costs one extra sentence (the clinician notice).
THRESHOLD = 0.2
CONFIDENT = 0.8  # above this the turn is surely a decision request: the word tools (look-up, translation) are not run


class DecisionExample(BaseModel):
    text: str
    decision: bool
    lang: str
    template: str
    split: str


@cache
def decision_bank() -> tuple[DecisionExample, ...]:
    return read_bank("decision_requests.jsonl", DecisionExample)


def tool_requests() -> list[DecisionExample]:
    """The tool-calling bank's requests for a tool (prompts/agent/tool_examples.jsonl): a thousand ways of asking for a
    measurement, a code or a translation, none of them a decision; without them the classifier flagged
    "How many axial slices does this T1 have?"."""
    from assistant.choosers import example_bank

    return [DecisionExample(text=e.text, decision=False, lang="en", template=f"tool:{e.tool}", split="dev")
            for e in example_bank() if e.tool != "none"]


@cache
def decision_classifier() -> PhraseClassifier:
    """Trained on the development split only, so that the benchmark's test figures describe this very model."""
    examples = [e for e in decision_bank() if e.split == "dev"] + tool_requests()
    return cached_classifier("decision-classifier", [e.text for e in examples], [e.decision for e in examples])


def asks_for_a_decision(request: str, bound: float = THRESHOLD) -> bool:
    """A request for a diagnosis or a treatment decision, which the answer must leave to the treating clinician."""
    return decision_classifier().probability(request) >= bound
