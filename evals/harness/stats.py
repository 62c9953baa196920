"""Uncertainty for pass rates and run comparisons: Wilson intervals, McNemar and Fisher tests.

43/55 and 48/55 look different, but their 95% intervals (66-87% and 76-94%) overlap; reports
print the interval next to every rate so that nobody reads a conclusion into noise. Two runs of
the same scenarios are paired (same scenario, same repeat), so their difference is tested with
McNemar's test on the discordant pairs, which is far more sensitive than comparing two
intervals. The tests come from scipy (a core dependency), not hand-written distributions.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel
from scipy import stats

CONFIDENCE = 0.95
# Below this many discordant pairs the chi-square approximation is poor; use the exact binomial test.
EXACT_BELOW = 25


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion: sensible at 0/n and n/n, unlike the normal one."""
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be between 0 and trials ({successes}/{trials})")
    interval = stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


class McNemar(BaseModel):
    """Paired outcomes of two runs; `regressed` = passed before and failed now."""

    both_passed: int = 0
    regressed: int = 0
    fixed: int = 0
    both_failed: int = 0
    p_value: float = 1.0
    method: str = "exact binomial"

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - CONFIDENCE

    def __str__(self) -> str:
        pairs = self.both_passed + self.regressed + self.fixed + self.both_failed
        return f"{self.regressed} regressed, {self.fixed} fixed of {pairs} pairs, McNemar p={self.p_value:.3g} ({self.method})"


def mcnemar(pairs: Iterable[tuple[bool, bool]]) -> McNemar:
    """McNemar's test on (passed before, passed now) pairs.

    Exact (two-sided binomial on the discordant pairs) when they are few, else the chi-square
    statistic with continuity correction, as statsmodels' `mcnemar` does by default.
    """
    counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for before, after in pairs:
        counts[(bool(before), bool(after))] += 1
    regressed, fixed = counts[(True, False)], counts[(False, True)]
    discordant = regressed + fixed
    if discordant == 0:
        p_value, method = 1.0, "no discordant pairs"
    elif discordant < EXACT_BELOW:
        p_value, method = float(stats.binomtest(regressed, discordant, 0.5).pvalue), "exact binomial"
    else:
        statistic = (abs(regressed - fixed) - 1) ** 2 / discordant
        p_value, method = float(stats.chi2.sf(statistic, df=1)), "chi-square, continuity-corrected"
    return McNemar(
        both_passed=counts[(True, True)],
        regressed=regressed,
        fixed=fixed,
        both_failed=counts[(False, False)],
        p_value=min(p_value, 1.0),
        method=method,
    )


def fisher_p_value(passed_before: int, runs_before: int, passed_now: int, runs_now: int) -> float:
    """Two-sided Fisher exact test of one scenario's pass counts over repeats in two runs.

    Repeats of one scenario are independent samples, not pairs, so a per-scenario change is a
    2x2 contingency test; with one run each it can never be significant (p = 1), which is honest.
    """
    table = [[passed_before, runs_before - passed_before], [passed_now, runs_now - passed_now]]
    return float(stats.fisher_exact(table).pvalue)


def flakiness(outcomes: list[bool]) -> float:
    """Share of repeats that disagree with the scenario's majority outcome: 0 = stable, 0.5 = coin flip."""
    if not outcomes:
        return 0.0
    passed = sum(outcomes)
    return min(passed, len(outcomes) - passed) / len(outcomes)
