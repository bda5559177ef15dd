"""The shared input checks: what each accepts, what it returns, and the error it raises otherwise."""

import numpy as np
import pytest
import torch

from ttlayers._validation import check_finite, check_rank, check_rel_eps, check_shape


@pytest.mark.parametrize("bad", [torch.tensor([1.0, float("nan")]), np.array([[0.0, np.inf]]), [1.0, -np.inf]])
def test_check_finite_refuses_nan_and_inf_in_any_array_type(bad):
    with pytest.raises(ValueError, match="weights contains non-finite values"):
        check_finite(bad, "weights")


def test_check_finite_accepts_finite_arrays():
    check_finite(torch.ones(3))
    check_finite(np.zeros((2, 2)))


@pytest.mark.parametrize("value, expected", [(None, None), (0, 0.0), (0.25, 0.25), (np.float32(0.5), 0.5)])
def test_check_rel_eps_returns_a_float(value, expected):
    got = check_rel_eps(value)
    assert got == expected and (got is None or type(got) is float)


@pytest.mark.parametrize("value, message", [(1.0, "zero tensor"), (-0.1, r"got -0.1"), (float("nan"), "got nan"),
                                            (True, "got True"), ("0.1", "got '0.1'")])
def test_check_rel_eps_refuses(value, message):
    with pytest.raises(ValueError, match=f"rel_eps must be a number.*{message}"):
        check_rel_eps(value)


@pytest.mark.parametrize("rank, expected", [(None, None), (3, [3, 3]), ([2, 5], [2, 5]), ([1, 2, 5, 1], [2, 5]),
                                            (np.int64(4), [4, 4])])
def test_check_rank_gives_one_rank_per_bond(rank, expected):
    assert check_rank(rank, 2) == expected


@pytest.mark.parametrize("rank, message", [
    ([2, 2, 2], "must be an int or a list of 2 ints .or 4 with boundary 1s., got a list of 3"),
    ([2, 2, 5, 1], "with boundary ranks must start and end with 1"),
    ([0, 2], "must be >= 1"),
    (0, "must be >= 1, got 0"),
    (2.0, "must be an int or a list of ints, got 2.0"),
    (True, "must be an int or a list of ints"),
])
def test_check_rank_refuses_and_names_the_argument(rank, message):
    with pytest.raises(ValueError, match=f"bonds {message}"):
        check_rank(rank, 2, "bonds")


def test_check_shape():
    assert check_shape([2, np.int64(3)], 6) == (2, 3)
    with pytest.raises(ValueError, match=r"row_shape \(2, 4\) has product 8, but the rows is 6"):
        check_shape((2, 4), 6, "row_shape", "rows")
    for bad in ([], [2, 0], [2, 1.5], [True, 6]):
        with pytest.raises(ValueError, match="shape must be a non-empty sequence of positive ints"):
            check_shape(bad, 6)
