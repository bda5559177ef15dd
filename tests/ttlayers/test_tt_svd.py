"""tt_svd: exactness, the rel_eps bound, rank caps and limits, minimal ranks, parity with tensorly."""

import math

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import tensor_train
from tensorly.tt_tensor import TTTensor

from ttlayers import tt_svd

SETTINGS = settings(max_examples=30, deadline=None)
shapes = st.lists(st.integers(1, 5), min_size=2, max_size=5).filter(lambda s: math.prod(s) <= 800)
seeds = st.integers(0, 2 ** 31 - 1)


def random_tensor(shape, seed, dtype=torch.float64):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape)).to(dtype)


def full(tt):
    with tl.backend_context("pytorch" if torch.is_tensor(tt.factors[0]) else "numpy"):
        return tt.to_tensor()


def rel_error(tt, tensor):
    return float(torch.linalg.norm(torch.as_tensor(full(tt)) - tensor) / torch.linalg.norm(tensor))


def unfolding_sizes(shape):
    return [min(math.prod(shape[:k + 1]), math.prod(shape[k + 1:])) for k in range(len(shape) - 1)]


def assert_no_redundant_rank(tt):
    """r_k <= r_{k-1} n_k and r_k <= n_{k+1} r_{k+1}: no bond is larger than its neighbours allow."""
    ranks, shape = tt.rank, tt.shape
    for k in range(1, len(ranks) - 1):
        assert ranks[k] <= min(ranks[k - 1] * shape[k - 1], shape[k] * ranks[k + 1]), (ranks, shape)


def feasible_ranks(shape, ranks):
    """Clamp TT ranks so that random cores with them have exactly these unfolding ranks."""
    ranks = [1, *ranks, 1]
    for k in range(1, len(shape)):
        ranks[k] = min(ranks[k], ranks[k - 1] * shape[k - 1])
    for k in range(len(shape) - 1, 0, -1):
        ranks[k] = min(ranks[k], ranks[k + 1] * shape[k])
    return ranks


def random_tt(shape, ranks, seed):
    rng = np.random.default_rng(seed)
    return TTTensor([torch.from_numpy(rng.standard_normal((ranks[k], n, ranks[k + 1]))) for k, n in enumerate(shape)])


@SETTINGS
@given(shapes, seeds, st.sampled_from([torch.float64, torch.float32]))
def test_exact_at_full_rank(shape, seed, dtype):
    tensor = random_tensor(shape, seed, dtype)
    tt = tt_svd(tensor)
    assert rel_error(tt, tensor) < (1e-12 if dtype == torch.float64 else 1e-4)
    assert all(r <= limit for r, limit in zip(tt.rank[1:-1], unfolding_sizes(shape)))


@SETTINGS
@given(shapes, st.lists(st.integers(1, 4), min_size=4, max_size=4), seeds)
def test_exact_recovery_with_minimal_ranks(shape, ranks, seed):
    ranks = feasible_ranks(shape, ranks[:len(shape) - 1])
    tensor = full(random_tt(shape, ranks, seed))
    for kwargs in ({}, {"rel_eps": 1e-8}):
        tt = tt_svd(tensor, **kwargs)
        assert list(tt.rank) == ranks
        assert rel_error(tt, tensor) < 1e-10
    # and the ranks are those of the unfoldings
    assert ranks[1:-1] == [np.linalg.matrix_rank(tensor.reshape(math.prod(shape[:k + 1]), -1).numpy())
                           for k in range(len(shape) - 1)]


@SETTINGS
@given(shapes, seeds, st.floats(0.01, 0.9), st.sampled_from([torch.float64, torch.float32]))
def test_rel_eps_bound_and_first_rank_is_oseledets(shape, seed, rel_eps, dtype):
    tensor = random_tensor(shape, seed, dtype)
    tt = tt_svd(tensor, rel_eps=rel_eps)
    assert rel_error(tt, tensor) <= rel_eps * (1 + 1e-9) + (1e-5 if dtype == torch.float32 else 1e-12)
    # bond 1 truncates the first unfolding of the tensor itself: the rank is the smallest whose
    # discarded energy is at most delta^2 = rel_eps^2 / (d - 1) * ||A||^2, unless a later cut
    # left it redundant (r_1 > n_2 r_2), which trim_ranks removes exactly
    s = np.linalg.svd(tensor.double().reshape(shape[0], -1).numpy(), compute_uv=False)
    delta_sq = rel_eps ** 2 / (len(shape) - 1) * np.sum(s ** 2)
    tails = [np.sum(s[r:] ** 2) for r in range(len(s) + 1)]
    oseledets = max(1, min(r for r in range(len(s) + 1) if tails[r] <= delta_sq))
    assert tt.rank[1] == min(oseledets, shape[1] * tt.rank[2])


@SETTINGS
@given(shapes, seeds, st.integers(1, 6), st.sampled_from([torch.float64, torch.float32]))
def test_rank_cap_matches_tensorly_and_is_no_worse(shape, seed, cap, dtype):
    tensor = random_tensor(shape, seed, dtype)
    tt = tt_svd(tensor, max_rank=cap)
    with tl.backend_context("pytorch"):
        reference = tensor_train(tensor, rank=cap)
    assert tt.rank == reference.rank  # min(cap, unfolding sizes) on a generic tensor
    assert all(r <= min(cap, limit) for r, limit in zip(tt.rank[1:-1], unfolding_sizes(shape)))
    tol = 1e-7 if dtype == torch.float64 else 1e-4
    assert rel_error(tt, tensor) <= rel_error(reference, tensor) * (1 + tol) + (1e-12 if dtype == torch.float64 else 1e-5)


@SETTINGS
@given(shapes, seeds, st.lists(st.integers(1, 6), min_size=4, max_size=4), st.floats(0.05, 0.5))
def test_per_bond_cap_wins_over_rel_eps(shape, seed, caps, rel_eps):
    tensor = random_tensor(shape, seed)
    caps = caps[:len(shape) - 1]
    capped = tt_svd(tensor, max_rank=caps, rel_eps=rel_eps)
    bounded = tt_svd(tensor, rel_eps=rel_eps)
    assert all(r <= c for r, c in zip(capped.rank[1:-1], caps))
    assert_no_redundant_rank(capped)
    if all(r <= c for r, c in zip(bounded.rank[1:-1], caps)):  # the cap never binds
        assert capped.rank == bounded.rank
    # boundary-ranks form is accepted
    assert tt_svd(tensor, max_rank=[1, *caps, 1]).rank == tt_svd(tensor, max_rank=caps).rank


@pytest.mark.parametrize("kwargs", [{}, {"max_rank": 2}, {"rel_eps": 0.1}])
def test_edge_cases(kwargs):
    vector = torch.randn(5, dtype=torch.float64)
    tt = tt_svd(vector, **kwargs)
    assert tt.rank == (1, 1) and rel_error(tt, vector) < 1e-15
    zero = tt_svd(torch.zeros(3, 4, 5), **kwargs)
    assert zero.rank == (1, 1, 1, 1) and float(torch.as_tensor(full(zero)).abs().max()) == 0


def test_input_kinds_are_preserved():
    backend = tl.get_backend()
    array = np.random.default_rng(0).standard_normal((3, 4, 5))
    for tensor in (array, array.astype(np.float32), torch.from_numpy(array), torch.from_numpy(array).float()):
        tt = tt_svd(tensor, max_rank=2)
        for core in tt.factors:
            assert type(core) is type(tensor) and core.dtype == tensor.dtype
    assert tl.get_backend() == backend


@pytest.mark.parametrize("tensor, kwargs, message", [
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), {}, "non-finite"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), {}, "non-finite"),
    (torch.ones(2, 3, 4), {"max_rank": 0}, ">= 1"),
    (torch.ones(2, 3, 4), {"max_rank": [2, -1]}, ">= 1"),
    (torch.ones(2, 3, 4), {"max_rank": [2, 2, 2]}, "list of 2"),
    (torch.ones(2, 3, 4), {"max_rank": 2.5}, "int"),
    (torch.ones(2, 3, 4), {"rel_eps": -0.1}, r"\[0, 1\)"),
    (torch.ones(2, 3, 4), {"rel_eps": float("nan")}, r"\[0, 1\)"),
    (torch.ones(2, 3, 4), {"rel_eps": 1.0}, "zero tensor"),
    (torch.ones(2, 3, 4), {"rel_eps": "0.1"}, "number"),
    (torch.ones(2, 3, dtype=torch.int64), {}, "float32 or float64"),
    ([[1.0, 2.0]], {}, "torch.Tensor or a numpy.ndarray"),
    (torch.ones(2, 0, 3), {}, "empty"),
])
def test_bad_input(tensor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tt_svd(tensor, **kwargs)
