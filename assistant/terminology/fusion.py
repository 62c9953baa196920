"""Reciprocal rank fusion (Cormack et al., SIGIR 2009): merges rankings whose scores are not
comparable (cosine of embeddings, TF-IDF cosine, exact matches) using ranks only."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

RRF_K = 60


def reciprocal_rank_fusion(rankings: Iterable[list[Hashable]], k: int = RRF_K,
                           weights: Iterable[float] | None = None) -> dict[Hashable, float]:
    """Item -> sum over rankings of weight / (k + rank), rank starting at 1."""
    rankings = list(rankings)
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    fused: dict[Hashable, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    return fused
