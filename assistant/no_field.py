"""Does the question ask for something no tool result field holds? Then the answer says so, without guessing or tools.

No tool here measures a patient's blood pressure or knows the scanner's price, yet the field matcher gave "what is the
weight of the person in this scan?" the field of view (its nearest meaning) and "patient's blood pressure?" ran tools
and got only the decision notice. A classifier (`assistant.phrasings`) trained on the development half of a bank of
such questions and of questions a field does answer, in en/es/fr/de/pt (`prompts/agent/no_field_questions.jsonl`,
written by `evals/make_no_field_bank.py`), plus the tool-calling bank's tool requests, recognises them before any
tool is chosen; `python -m evals.bench_fields` measures it on ways of asking it never saw.
"""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel

from assistant.decisions import tool_requests
from assistant.phrasings import PhraseClassifier, cached_classifier, read_bank

THRESHOLD = 0.4  # template-grouped CV on the development split (`bench_fields --cv`): recall 0.887, 0/168 false alarms


class NoFieldExample(BaseModel):
    text: str
    no_field: bool
    lang: str
    template: str
    thing: str
    split: str


@cache
def no_field_bank() -> tuple[NoFieldExample, ...]:
    return read_bank("no_field_questions.jsonl", NoFieldExample)


def training_set(examples: list[NoFieldExample]) -> tuple[list[str], list[bool]]:
    """The bank's examples plus the tool-calling bank's requests for a tool (a thousand ways of asking for something
    a field does hold)."""
    requests = [e.text for e in tool_requests()]
    return [e.text for e in examples] + requests, [e.no_field for e in examples] + [False] * len(requests)


@cache
def no_field_classifier() -> PhraseClassifier:
    """Trained on the development split only, so that the benchmark's test figures describe this very model."""
    return cached_classifier("no-field-classifier", *training_set([e for e in no_field_bank() if e.split == "dev"]))


def asks_for_no_field(request: str, bound: float = THRESHOLD) -> bool:
    """A question about something no tool result holds (vital signs, labs, history, the scanner, the paperwork)."""
    return no_field_classifier().probability(request) >= bound
