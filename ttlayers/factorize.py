"""Balanced factorisation of a dimension into ``d`` integer factors, for tensorising the rows or
columns of a matrix (a TT-matrix with mode sizes ``m_1 ... m_d`` stores about
``r^2 * sum_k m_k n_k`` numbers, so balanced, small factors are what we want).

Rule (see docs/decompositions.md):

* ``best(m)``: of all ways to write ``m`` as a product of ``d`` integers >= 1, the one with the
  smallest sum (ties: the smallest largest factor), in descending order.
* ``m`` is *well-factorable* when ``sum(best(m)) <= 1.1 * d * m**(1/d)`` (at most 10% above the
  sum of ``d`` equal real factors, the ideal).
* ``factorize(n, d)`` returns ``best(n)`` when ``n`` is well-factorable or padding is not allowed.
  Otherwise it pads: the smallest well-factorable ``m`` in ``(n, n_max]`` with
  ``n_max = max(n + 1, floor(1.05 * n))``; if there is none, the ``m`` in ``[n, n_max]`` whose
  factor sum is closest to its ideal (ties: the smallest ``m``).
"""

from __future__ import annotations

import math
from functools import lru_cache

WELL_FACTORABLE = 1.1  # largest allowed ratio of the factor sum to the ideal d * m**(1/d)
MAX_PADDING = 0.05  # padding goes up to floor((1 + MAX_PADDING) * n) (at least n + 1)


def factorize(n: int, n_factors: int, allow_padding: bool = True) -> tuple[int, ...]:
    """``n_factors`` balanced integer factors, in descending order, of ``n`` or, when ``n`` factors
    badly and ``allow_padding``, of a slightly larger size ``m >= n`` (then ``prod(result) == m``;
    the caller pads ``n`` up to ``m``). Examples: ``factorize(10000, 4) == (10, 10, 10, 10)``,
    ``factorize(10007, 4) == (13, 11, 10, 7)`` (10010), ``factorize(10007, 4, False) == (10007, 1, 1, 1)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(n_factors, bool) or not isinstance(n_factors, int) or n_factors < 1:
        raise ValueError(f"n_factors must be a positive int, got {n_factors!r}")
    if not allow_padding or _excess(n, n_factors) <= WELL_FACTORABLE:
        return _best(n, n_factors)
    n_max = max(n + 1, math.floor((1 + MAX_PADDING) * n))
    for m in range(n + 1, n_max + 1):
        if _excess(m, n_factors) <= WELL_FACTORABLE:
            return _best(m, n_factors)
    return _best(min(range(n, n_max + 1), key=lambda m: (_excess(m, n_factors), m)), n_factors)


def _excess(m: int, d: int) -> float:
    """Sum of the best factors of ``m`` over the ideal ``d * m**(1/d)``."""
    return sum(_best(m, d)) / (d * m ** (1.0 / d))


@lru_cache(maxsize=4096)
def _best(m: int, d: int) -> tuple[int, ...]:
    """The ``d`` factors of ``m`` with the smallest (sum, max), in descending order."""
    best = _ascending(m, d, 1, tuple(sorted(_divisors(m))))
    return tuple(reversed(best))


def _ascending(m: int, d: int, low: int, divisors: tuple[int, ...]) -> tuple[int, ...] | None:
    """Best non-decreasing factors ``>= low`` of ``m`` (``divisors``: the sorted divisors of the
    original number, a superset of those of ``m``), or None if there are none."""
    if d == 1:
        return (m,) if m >= low else None
    best = None
    for a in divisors:
        if a < low or m % a:
            continue
        if a ** d > m:
            break
        rest = _ascending(m // a, d - 1, a, divisors)
        if rest is not None:
            cand = (a, *rest)
            if best is None or (sum(cand), cand[-1]) < (sum(best), best[-1]):
                best = cand
    return best


def _divisors(m: int) -> list[int]:
    small = [a for a in range(1, math.isqrt(m) + 1) if m % a == 0]
    return small + [m // a for a in reversed(small) if a * a != m]
