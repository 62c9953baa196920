"""String-level matching: exact (normalised) look-up and a character n-gram TF-IDF for typos and
word-order changes. Exact codes and abbreviations matter in medicine, so these run beside the
embeddings and are fused with them."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

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
    product gives cosine similarities. Kept column-major (an inverted index from n-gram to rows).

    A query reads only the posting lists of its own n-grams and sums their weights per row
    (`bincount`): exact cosine scores at a few milliseconds for the full index, where the sparse
    product through scikit-learn's `transform` and a selection over every row took three times that.
    """

    def __init__(self, vectorizer: TfidfVectorizer, matrix: sparse.csc_matrix) -> None:
        self.vectorizer = vectorizer
        self.matrix = matrix
        self._prepare()

    def __getstate__(self) -> dict:
        return {"vectorizer": self.vectorizer, "matrix": self.matrix}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._prepare()

    def _prepare(self) -> None:
        """Derived look-ups, recomputed on load rather than pickled."""
        self._analyze = self.vectorizer.build_analyzer()
        self._vocabulary = self.vectorizer.vocabulary_
        self._idf = self.vectorizer.idf_.astype(np.float32)

    @classmethod
    def build(cls, texts: list[str]) -> CharNgramIndex:
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), preprocessor=normalize_text,
                                     dtype=np.float32, sublinear_tf=True)
        return cls(vectorizer, vectorizer.fit_transform(texts).tocsc())

    def query_weights(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """Columns and L2-normalised weights of the query's known n-grams: what
        ``vectorizer.transform`` computes, without its per-call validation (a few ms)."""
        counts = Counter(gram for gram in self._analyze(query) if gram in self._vocabulary)
        if not counts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        columns = np.fromiter((self._vocabulary[gram] for gram in counts), dtype=np.int64, count=len(counts))
        weights = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))) * self._idf[columns]
        return columns, (weights / np.linalg.norm(weights)).astype(np.float32)

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row ids and cosine similarities of the `k` best rows (among `allowed` rows if given)."""
        rows, scores = self._scores(*self.query_weights(query), allowed)
        top = _top_k(scores, k)
        return rows[top], scores[top]

    def _scores(self, columns: np.ndarray, weights: np.ndarray,
                   allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of every row sharing an n-gram with the query."""
        if not len(columns):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        indptr, indices, data = self.matrix.indptr, self.matrix.indices, self.matrix.data
        spans = [(indptr[c], indptr[c + 1]) for c in columns]
        rows = np.concatenate([indices[start:end] for start, end in spans])
        values = np.concatenate([data[start:end] * w for (start, end), w in zip(spans, weights)])
        dense = np.bincount(rows, values, minlength=self.matrix.shape[0])
        if allowed is not None:
            dense *= allowed
        rows = np.flatnonzero(dense)
        return rows, dense[rows].astype(np.float32)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the `k` largest positive scores, best first."""
    k = min(k, int(np.count_nonzero(scores > 0)))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]
