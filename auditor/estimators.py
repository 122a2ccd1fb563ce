"""Pure estimators of the statistics: numbers in, numbers out (checked against hand-computed values in tests).

Kept apart from :mod:`auditor.stats`, which reads the store, as cleanlab keeps its statistics apart from I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; None when n == 0.

    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``p = successes / n``. Unlike the normal
    approximation it stays inside [0, 1] and is sensible for small n and rates near 0 or 1.
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within [0, n], got {successes} of {n}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def horvitz_thompson_total(ys: Iterable[float], pis: Iterable[float]) -> float:
    """Horvitz-Thompson estimate of a population total: ``sum(y_i / pi_i)`` over the sampled items."""
    total = 0.0
    for y, pi in zip(ys, pis, strict=True):
        if not 0 < pi <= 1:
            raise ValueError(f"inclusion probabilities must be in (0, 1], got {pi}")
        total += y / pi
    return total


def hajek_rate(ys: Iterable[float], pis: Iterable[float]) -> float | None:
    """Hajek (ratio) estimate of a population mean: ``sum(y/pi) / sum(1/pi)``; None for an empty sample."""
    num = den = 0.0
    for y, pi in zip(ys, pis, strict=True):
        if not 0 < pi <= 1:
            raise ValueError(f"inclusion probabilities must be in (0, 1], got {pi}")
        num += y / pi
        den += 1 / pi
    return num / den if den else None


def stratified_total(strata: Sequence[tuple[int, int, int]]) -> float:
    """Estimated total of positives over strata ``(N_b, positives_b, n_b)``: ``sum N_b * positives_b / n_b``.

    Strata with n_b == 0 contribute nothing (no information); this equals the Horvitz-Thompson total with
    ``pi = n_b / N_b`` in each stratum.
    """
    return sum(size * pos / n for size, pos, n in strata if n > 0)


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters over the same items: ``(p_o - p_e) / (1 - p_e)``; None when undefined."""
    n = len(pairs)
    if n == 0:
        return None
    cats = sorted({c for pair in pairs for c in pair})
    p_o = sum(a == b for a, b in pairs) / n
    p_e = sum((sum(a == c for a, _ in pairs) / n) * (sum(b == c for _, b in pairs) / n) for c in cats)
    if p_e >= 1:
        return None  # both raters used one single category: agreement is not measurable
    return (p_o - p_e) / (1 - p_e)
