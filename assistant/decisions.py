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

THRESHOLD = 0.5  # probability of "decision" above which the turn is treated as one; recall matters more than precision


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


@cache
def decision_classifier() -> DecisionClassifier:
    """Trained on the development split only, so that the benchmark's test figures describe this very model."""
    examples = [e for e in decision_bank() if e.split == "dev"]
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


def asks_for_a_decision(request: str) -> bool:
    """A request for a diagnosis or a treatment decision, which the answer must leave to the treating clinician."""
    return decision_classifier().probability(request) >= THRESHOLD
