"""Is this a request for a diagnosis, a treatment or a go/no-go decision? A classifier, not a keyword list.

A keyword pattern let "Is it safe to start heparin? yes or no" through, and the 0.5B model then said "No, it is not
safe". The classifier is trained on the development half of a bank of phrasings in en/es/fr/de/pt
(`prompts/agent/decision_requests.jsonl`, written by `evals/make_decision_bank.py`); the held-out half, whole ways of
asking it never saw, measures it (`python -m evals.bench_decisions`). Features: character 2-5-grams (any language,
typos, "yes/no") and word 1-2-grams, logistic regression; trained at first use in milliseconds, cached.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Sequence
from functools import cache
from importlib import resources

from pydantic import BaseModel

from assistant.config import get_settings
from assistant.grounding import without_quoted

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
    text = resources.files("prompts").joinpath("agent/decision_requests.jsonl").read_text(encoding="utf-8")
    return tuple(DecisionExample.model_validate(json.loads(line)) for line in text.splitlines() if line.strip())


class DecisionClassifier:
    def __init__(self, examples: Sequence[DecisionExample], C: float = 4.0):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline

        features = FeatureUnion([
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=True)),
            ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
        ])
        self.pipeline = make_pipeline(features, LogisticRegression(C=C, max_iter=2000, class_weight="balanced"))
        self.pipeline.fit([e.text for e in examples], [e.decision for e in examples])

    def probability(self, request: str) -> float:
        return float(self.pipeline.predict_proba([without_quoted(request)])[0][1])


def tool_requests() -> list[DecisionExample]:
    """The tool-calling bank's requests for a tool (prompts/agent/tool_examples.jsonl): a thousand ways of asking for a
    measurement, a code or a translation, none of them a decision; without them the classifier flagged
    "How many axial slices does this T1 have?"."""
    from assistant.choosers import example_bank

    return [DecisionExample(text=e.text, decision=False, lang="en", template=f"tool:{e.tool}", split="dev")
            for e in example_bank() if e.tool != "none"]


@cache
def decision_classifier() -> DecisionClassifier:
    """Trained on the development split only, so that the benchmark's test figures describe this very model."""
    examples = [e for e in decision_bank() if e.split == "dev"] + tool_requests()
    digest = hashlib.sha256("".join(e.model_dump_json() for e in examples).encode()).hexdigest()[:16]
    cached = get_settings().cache_dir / "agent" / f"decision-classifier-{digest}.pkl"
    try:  # our own file in the user's cache, written below
        return pickle.loads(cached.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError):
        pass
    classifier = DecisionClassifier(examples)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(pickle.dumps(classifier))
    return classifier


def asks_for_a_decision(request: str, bound: float = THRESHOLD) -> bool:
    """A request for a diagnosis or a treatment decision, which the answer must leave to the treating clinician."""
    return decision_classifier().probability(request) >= bound
