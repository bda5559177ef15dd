"""tt_matrix_svd: round trip, core shapes, the bound, parity with tensorly, bad shapes."""

import math

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import tensor_train_matrix
from tensorly.tt_matrix import TTMatrix

from ttlayers import factorize, tt_matrix_svd

SETTINGS = settings(max_examples=30, deadline=None)
seeds = st.integers(0, 2 ** 31 - 1)


@st.composite
def matrix_shapes(draw):
    d = draw(st.integers(1, 4))
    rows = draw(st.lists(st.integers(1, 4), min_size=d, max_size=d))
    cols = draw(st.lists(st.integers(1, 4), min_size=d, max_size=d))
    return tuple(rows), tuple(cols)


def random_matrix(row_shape, col_shape, seed, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((math.prod(row_shape), math.prod(col_shape)))).to(dtype)


def to_matrix(ttm):
    with tl.backend_context("pytorch" if torch.is_tensor(ttm.factors[0]) else "numpy"):
        return torch.as_tensor(ttm.to_matrix())


@SETTINGS
@given(matrix_shapes(), seeds, st.sampled_from([torch.float64, torch.float32]))
def test_round_trip(shapes, seed, dtype):
    row_shape, col_shape = shapes
    matrix = random_matrix(row_shape, col_shape, seed, dtype)
    ttm = tt_matrix_svd(matrix, row_shape, col_shape)
    assert isinstance(ttm, TTMatrix)
    assert [c.shape[1:3] for c in ttm.factors] == list(zip(row_shape, col_shape))
    assert all(c.dtype == dtype for c in ttm.factors)
    torch.testing.assert_close(to_matrix(ttm), matrix, rtol=0, atol=1e-11 if dtype == torch.float64 else 1e-5)


@SETTINGS
@given(matrix_shapes(), seeds, st.floats(0.01, 0.9))
def test_rel_eps_bound(shapes, seed, rel_eps):
    matrix = random_matrix(*shapes, seed)
    ttm = tt_matrix_svd(matrix, *shapes, rel_eps=rel_eps)
    assert torch.linalg.norm(to_matrix(ttm) - matrix) <= rel_eps * torch.linalg.norm(matrix) * (1 + 1e-9)


@SETTINGS
@given(matrix_shapes().filter(lambda s: len(s[0]) > 1), seeds, st.integers(1, 6))
def test_cap_no_worse_than_tensorly(shapes, seed, cap):
    row_shape, col_shape = shapes
    matrix = random_matrix(row_shape, col_shape, seed)
    ttm = tt_matrix_svd(matrix, row_shape, col_shape, max_rank=cap)
    with tl.backend_context("pytorch"):
        reference = tensor_train_matrix(matrix.reshape(*row_shape, *col_shape), rank=cap)
        reference_matrix = reference.to_matrix()
    assert ttm.rank == reference.rank
    assert all(r <= cap for r in ttm.rank)
    err, ref_err = (float(torch.linalg.norm(m - matrix)) for m in (to_matrix(ttm), reference_matrix))
    assert err <= ref_err * (1 + 1e-7) + 1e-12


def test_with_factorize_and_numpy():
    rows, cols = factorize(1000, 3), factorize(60, 3)
    matrix = np.random.default_rng(0).standard_normal((1000, 60)).astype(np.float32)
    ttm = tt_matrix_svd(matrix, rows, cols, max_rank=8)
    assert all(isinstance(c, np.ndarray) and c.dtype == np.float32 for c in ttm.factors)
    assert max(ttm.rank) <= 8 and ttm.shape == rows + cols


@pytest.mark.parametrize("matrix, rows, cols, kwargs, message", [
    (torch.ones(12, 20), (3, 5), (4, 5), {}, "row_shape .* product 15, but the number of rows is 12"),
    (torch.ones(12, 20), (3, 4), (4, 4), {}, "col_shape .* product 16, but the number of columns is 20"),
    (torch.ones(12, 20), (3, 4), (20,), {}, "same length"),
    (torch.ones(12, 20), (3, 0, 4), (20, 1, 1), {}, "positive ints"),
    (torch.ones(2, 3, 4), (2,), (3,), {}, "2-dimensional"),
    (torch.full((4, 4), float("nan")), (2, 2), (2, 2), {}, "non-finite"),
    (torch.ones(4, 4), (2, 2), (2, 2), {"max_rank": 0}, ">= 1"),
    (torch.ones(4, 4), (2, 2), (2, 2), {"rel_eps": -0.5}, r"\[0, 1\)"),
])
def test_bad_input(matrix, rows, cols, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tt_matrix_svd(matrix, rows, cols, **kwargs)
