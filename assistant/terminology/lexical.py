"""String-level matching: exact (normalised) look-up and a character n-gram TF-IDF for typos and
word-order changes. Exact codes and abbreviations matter in medicine, so these run beside the
embeddings and are fused with them."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

_NON_WORD = re.compile(r"[^\w]+")
_CODE_LIKE = re.compile(r"^(?:[A-Z]\d\d(?:\.?[0-9A-Z]{1,4})?|HP:\d{7}|\d{6,18})$", re.IGNORECASE)


def normalize_text(text: str) -> str:
    """Case-, accent- and punctuation-insensitive form used for exact matching."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    without_accents = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NON_WORD.sub(" ", without_accents).strip()


def looks_like_code(text: str) -> bool:
    """ICD-10 (``I21``, ``I21.9``), HPO (``HP:0001250``) or SNOMED-like numeric codes."""
    return bool(_CODE_LIKE.match(text.strip()))


def normalize_code(code: str) -> str:
    return code.strip().upper().replace(".", "")


def is_abbreviation(text: str) -> bool:
    """Short all-capital forms (``MI``, ``PE``, ``CT``) that must match case-sensitively in prose."""
    return 1 < len(text) <= 6 and text.isupper() and text.isalnum()


class CharNgramIndex:
    """TF-IDF over character 3-grams within word boundaries; rows are L2-normalised, so a sparse
    product gives cosine similarities. Kept column-major (an inverted index): a query touches only
    the columns of its own few n-grams."""

    def __init__(self, vectorizer: TfidfVectorizer, matrix: sparse.csc_matrix) -> None:
        self.vectorizer = vectorizer
        self.matrix = matrix

    @classmethod
    def build(cls, texts: list[str]) -> CharNgramIndex:
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), preprocessor=normalize_text,
                                     dtype=np.float32, sublinear_tf=True)
        return cls(vectorizer, vectorizer.fit_transform(texts).tocsc())

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row ids and cosine similarities of the `k` best rows (among `allowed` rows if given)."""
        query_vector = self.vectorizer.transform([query])
        scores = np.asarray(self.matrix[:, query_vector.indices] @ query_vector.data).ravel()
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        k = min(k, int(np.count_nonzero(scores)))
        if k == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return top, scores[top]
