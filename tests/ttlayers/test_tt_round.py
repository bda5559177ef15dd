"""tt_round: the bound relative to the input, non-increasing ranks, idempotence, exact compression."""

import math

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.tt_matrix import TTMatrix
from tensorly.tt_tensor import TTTensor

from ttlayers import tt_round, tt_svd

SETTINGS = settings(max_examples=30, deadline=None)
shapes = st.lists(st.integers(1, 5), min_size=2, max_size=5).filter(lambda s: math.prod(s) <= 800)
core_ranks = st.lists(st.integers(1, 6), min_size=4, max_size=4)
seeds = st.integers(0, 2 ** 31 - 1)


def random_tt(shape, ranks, seed, dtype=torch.float64):
    ranks = [1, *ranks[:len(shape) - 1], 1]
    rng = np.random.default_rng(seed)
    return TTTensor([torch.from_numpy(rng.standard_normal((ranks[k], n, ranks[k + 1]))).to(dtype)
                     for k, n in enumerate(shape)])


def full(tt):
    with tl.backend_context("pytorch" if torch.is_tensor(tt.factors[0]) else "numpy"):
        return torch.as_tensor(tt.to_tensor())


def distance(a, b):
    return float(torch.linalg.norm(full(a) - full(b)))


def assert_no_redundant_rank(tt):
    """r_k <= r_{k-1} n_k and r_k <= n_{k+1} r_{k+1}."""
    ranks, shape = tt.rank, tt.shape
    for k in range(1, len(ranks) - 1):
        assert ranks[k] <= min(ranks[k - 1] * shape[k - 1], shape[k] * ranks[k + 1]), (ranks, shape)


def add(a, b):
    """a + b in TT format (block-diagonal cores): ranks add up."""
    cores, d = [], len(a.factors)
    for k, (p, q) in enumerate(zip(a.factors, b.factors)):
        if d == 1:
            cores.append(p + q)
        elif k == 0:
            cores.append(torch.cat([p, q], dim=2))
        elif k == d - 1:
            cores.append(torch.cat([p, q], dim=0))
        else:
            core = p.new_zeros(p.shape[0] + q.shape[0], p.shape[1], p.shape[2] + q.shape[2])
            core[:p.shape[0], :, :p.shape[2]], core[p.shape[0]:, :, p.shape[2]:] = p, q
            cores.append(core)
    return TTTensor(cores)


@SETTINGS
@given(shapes, core_ranks, seeds, st.floats(0.01, 0.9), st.sampled_from([torch.float64, torch.float32]))
def test_rel_eps_bound_and_ranks_never_increase(shape, ranks, seed, rel_eps, dtype):
    tt = random_tt(shape, ranks, seed, dtype)
    rounded = tt_round(tt, rel_eps=rel_eps)
    norm = float(torch.linalg.norm(full(tt)))
    assert distance(rounded, tt) <= rel_eps * norm * (1 + 1e-9) + (1e-5 if dtype == torch.float32 else 1e-12) * norm
    assert all(r <= s for r, s in zip(rounded.rank, tt.rank))


@SETTINGS
@given(shapes, core_ranks, seeds, st.integers(1, 5))
def test_cap_equals_tt_svd_of_the_full_tensor(shape, ranks, seed, cap):
    """Rounding an exact TT and TT-SVD of its full tensor truncate the same singular values."""
    tt = random_tt(shape, ranks, seed)
    rounded = tt_round(tt, max_rank=cap)
    direct = tt_svd(full(tt), max_rank=cap)
    norm = float(torch.linalg.norm(full(tt)))
    assert all(r <= min(cap, s) for r, s in zip(rounded.rank[1:-1], tt.rank[1:-1]))
    assert distance(rounded, tt) <= distance(direct, tt) * (1 + 1e-6) + 1e-9 * norm


@SETTINGS
@given(shapes, core_ranks, seeds)
def test_exact_rounding_finds_minimal_ranks(shape, ranks, seed):
    tt = tt_round(random_tt(shape, ranks, seed))  # minimal ranks
    doubled = add(tt, tt)
    assert all(r == 2 * s for r, s in zip(doubled.rank[1:-1], tt.rank[1:-1]))
    rounded = tt_round(doubled)
    assert rounded.rank == tt.rank
    assert distance(rounded, doubled) <= 1e-10 * float(torch.linalg.norm(full(doubled)))


@SETTINGS
@given(shapes, core_ranks, seeds, st.sampled_from([{}, {"max_rank": 1}, {"max_rank": 3}, {"max_rank": [2, 3, 1, 4]}]))
def test_idempotent(shape, ranks, seed, kwargs):
    if isinstance(kwargs.get("max_rank"), list):
        kwargs = {"max_rank": kwargs["max_rank"][:len(shape) - 1]}
    once = tt_round(random_tt(shape, ranks, seed), **kwargs)
    twice = tt_round(once, **kwargs)
    assert twice.rank == once.rank
    assert_no_redundant_rank(once)
    assert distance(twice, once) <= 1e-10 * float(torch.linalg.norm(full(once)))


@SETTINGS
@given(shapes, core_ranks, seeds, st.floats(0.05, 0.5))
def test_rel_eps_twice_stays_within_bound(shape, ranks, seed, rel_eps):
    once = tt_round(random_tt(shape, ranks, seed), rel_eps=rel_eps)
    twice = tt_round(once, rel_eps=rel_eps)
    assert all(r <= s for r, s in zip(twice.rank, once.rank))
    assert distance(twice, once) <= rel_eps * float(torch.linalg.norm(full(once))) * (1 + 1e-9)


def test_tt_matrix_and_numpy():
    rng = np.random.default_rng(0)
    cores = [rng.standard_normal(s) for s in [(1, 2, 3, 4), (4, 3, 2, 5), (5, 2, 2, 1)]]
    with tl.backend_context("numpy"):  # import ttlayers selected the pytorch backend
        tt = TTMatrix(cores)
    rounded = tt_round(tt, rel_eps=0.3)
    assert isinstance(rounded, TTMatrix) and rounded.shape == tt.shape
    assert all(isinstance(c, np.ndarray) and c.dtype == np.float64 for c in rounded.factors)
    with tl.backend_context("numpy"):
        a, b = tt.to_matrix(), rounded.to_matrix()
    assert np.linalg.norm(a - b) <= 0.3 * np.linalg.norm(a) * (1 + 1e-9)
    assert all(r <= s for r, s in zip(rounded.rank, tt.rank))
    exact = tt_round(tt)
    with tl.backend_context("numpy"):
        np.testing.assert_allclose(exact.to_matrix(), a, atol=1e-10 * np.linalg.norm(a))


@pytest.mark.parametrize("tt, kwargs, message", [
    ([torch.ones(1, 2, 1)], {}, "TTTensor or TTMatrix"),
    (TTTensor([torch.ones(1, 2, 2), torch.full((2, 2, 1), float("nan"))]), {}, "non-finite"),
    (TTTensor([torch.ones(1, 2, 2), torch.ones(2, 2, 1)]), {"max_rank": 0}, ">= 1"),
    (TTTensor([torch.ones(1, 2, 2), torch.ones(2, 2, 1)]), {"rel_eps": -1.0}, r"\[0, 1\)"),
])
def test_bad_input(tt, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tt_round(tt, **kwargs)


def test_a_tt_beyond_the_dtype_range_is_rounded():
    """float32 cores of size 1e30 each: the full tensor (1e90) is beyond float32, the TT is not."""
    rng = np.random.default_rng(0)
    cores = [rng.standard_normal(s) for s in [(1, 4, 3), (3, 5, 3), (3, 6, 1)]]
    small = tt_round(TTTensor([torch.from_numpy(c) for c in cores]), max_rank=2)
    big = tt_round(TTTensor([torch.from_numpy(c * 1e30).float() for c in cores]), max_rank=2)
    assert big.rank == small.rank and all(torch.isfinite(c).all() for c in big.factors)
    scaled = [c.double() / 1e30 for c in big.factors]
    with tl.backend_context("pytorch"):
        np.testing.assert_allclose(TTTensor(scaled).to_tensor(), full(small), rtol=0,
                                   atol=1e-5 * float(torch.linalg.norm(full(small))))


def test_mixed_cores_are_refused():
    with pytest.raises(ValueError, match="all be torch tensors or all numpy arrays"):
        tt_round(TTTensor([torch.ones(1, 2, 2), torch.ones(2, 2, 1, dtype=torch.float64)]))
