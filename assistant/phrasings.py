"""Classifiers over ways of asking, in any language: is this a decision request, does it ask for something no field holds?

Features: character 2-5-grams (any language, typos, "yes/no") and word 1-2-grams, logistic regression. Trained at
first use in seconds on a bank's development half and cached under the bank's digest, so that the benchmark's test
figures describe the very model the agent uses.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Sequence
from importlib import resources
from typing import TypeVar

from pydantic import BaseModel

from assistant.config import get_settings
from assistant.grounding import without_quoted


Example = TypeVar("Example", bound=BaseModel)


def read_bank(name: str, kind: type[Example]) -> tuple[Example, ...]:
    """A bank of phrasings shipped with the prompts (`prompts/agent/<name>`), one JSON object per line."""
    text = resources.files("prompts").joinpath(f"agent/{name}").read_text(encoding="utf-8")
    return tuple(kind.model_validate(json.loads(line)) for line in text.splitlines() if line.strip())


class PhraseClassifier:
    def __init__(self, texts: Sequence[str], labels: Sequence[bool], C: float = 4.0):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline

        features = FeatureUnion([
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=True)),
            ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
        ])
        self.pipeline = make_pipeline(features, LogisticRegression(C=C, max_iter=2000, class_weight="balanced"))
        self.pipeline.fit(list(texts), list(labels))

    def probability(self, request: str) -> float:
        return float(self.pipeline.predict_proba([without_quoted(request)])[0][1])


def cached_classifier(kind: str, texts: Sequence[str], labels: Sequence[bool]) -> PhraseClassifier:
    """A classifier trained on these texts, read back from the user's cache when the same bank trained it before."""
    digest = hashlib.sha256(json.dumps([list(texts), list(labels)], ensure_ascii=False).encode()).hexdigest()[:16]
    cached = get_settings().cache_dir / "agent" / f"{kind}-{digest}.pkl"
    try:  # our own file in the user's cache, written below
        return pickle.loads(cached.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError):
        pass
    classifier = PhraseClassifier(texts, labels)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(pickle.dumps(classifier))
    return classifier
