"""factorize: balanced factors, exact products, and the padding rule of docs/decompositions.md."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttlayers import factorize

SETTINGS = settings(max_examples=40, deadline=None)


def all_factorizations(n, d, low=1):
    """Every non-decreasing tuple of d ints >= low with product n (brute force, small n)."""
    if d == 1:
        return [(n,)] if n >= low else []
    return [(a, *rest) for a in range(low, n + 1) if n % a == 0 for rest in all_factorizations(n // a, d - 1, a)]


def best_sum(n, d):
    return min(sum(f) for f in all_factorizations(n, d))


def well_factorable(m, d):
    return best_sum(m, d) <= 1.1 * d * m ** (1 / d)


@pytest.mark.parametrize("n, d, expected", [
    (10000, 4, (10, 10, 10, 10)),
    (10000, 2, (100, 100)),
    (1500, 3, (15, 10, 10)),
    (1500, 4, (10, 6, 5, 5)),
    (2600, 4, (13, 8, 5, 5)),
    (650, 3, (13, 10, 5)),
    (650, 4, (7, 6, 4, 4)),  # 650 = 2 * 5^2 * 13 factors badly into 4: padded to 672
    (10007, 4, (13, 11, 10, 7)),  # prime: padded to 10010
    (1, 3, (1, 1, 1)),
    (7, 1, (7,)),
])
def test_examples(n, d, expected):
    assert factorize(n, d) == expected


def test_no_padding_keeps_n():
    assert factorize(10007, 4, allow_padding=False) == (10007, 1, 1, 1)
    assert factorize(650, 4, allow_padding=False) == (13, 5, 5, 2)


@SETTINGS
@given(st.integers(1, 3000), st.integers(1, 4))
def test_exact_factorization_is_the_smallest_sum(n, d):
    factors = factorize(n, d, allow_padding=False)
    assert len(factors) == d and math.prod(factors) == n
    assert list(factors) == sorted(factors, reverse=True) and min(factors) >= 1
    assert sum(factors) == best_sum(n, d)


@SETTINGS
@given(st.integers(1, 3000), st.integers(1, 4))
def test_padding_rule(n, d):
    factors = factorize(n, d)
    m = math.prod(factors)
    n_max = max(n + 1, math.floor(1.05 * n))
    assert len(factors) == d and list(factors) == sorted(factors, reverse=True)
    assert sum(factors) == best_sum(m, d)
    if well_factorable(n, d):
        assert m == n
        return
    assert n <= m <= n_max
    candidates = [c for c in range(n + 1, n_max + 1) if well_factorable(c, d)]
    if candidates:
        assert m == candidates[0]  # the smallest well-factorable size above n
    else:
        ratio = [best_sum(c, d) / (d * c ** (1 / d)) for c in range(n, n_max + 1)]
        assert best_sum(m, d) / (d * m ** (1 / d)) == min(ratio)


@SETTINGS
@given(st.integers(2, 10 ** 6), st.integers(2, 6))
def test_padding_is_small_and_balanced_for_large_n(n, d):
    factors = factorize(n, d)
    assert n <= math.prod(factors) <= max(n + 1, 1.05 * n)
    # large sizes always find a well-factorable neighbour within 5%
    assert sum(factors) <= 1.1 * d * math.prod(factors) ** (1 / d) or n < 10 ** 4


@pytest.mark.parametrize("n, d", [(0, 2), (-3, 2), (10, 0), (2.5, 2), (10, 1.0), (True, 2)])
def test_bad_input(n, d):
    with pytest.raises(ValueError, match="positive int"):
        factorize(n, d)
