"""truncated_split: the best approximation of a matrix under a rank cap and an energy budget."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ttlayers._precision import roundoff
from ttlayers.truncated_svd import truncated_split

SETTINGS = settings(max_examples=30, deadline=None)
seeds = st.integers(0, 2 ** 31 - 1)


@SETTINGS
@given(st.integers(2, 60), st.integers(2, 60), st.integers(1, 70), seeds,
       st.sampled_from([None, 1e-3, 0.1, 0.5, 1e-12]))
def test_truncated_split_is_the_best_approximation(m, n, cap, seed, rel):
    """Eckart-Young: the discarded energy is the tail of the singular values, by either path."""
    rng = np.random.default_rng(seed)
    matrix = torch.from_numpy(rng.standard_normal((m, n)) * rng.uniform(0.01, 1, n) ** 3)
    s = np.linalg.svd(matrix.numpy(), compute_uv=False)
    floor = (roundoff(torch.float64, max(m, n)) ** 2) * np.sum(s ** 2)
    budget = floor if rel is None else max(rel ** 2 * np.sum(s ** 2), floor)
    left, right, discarded = truncated_split(matrix, cap, budget, floor)
    r = left.shape[1]
    assert r <= min(cap, m, n)
    torch.testing.assert_close(left.T @ left, torch.eye(r, dtype=left.dtype), atol=1e-10, rtol=0)
    error_sq = float(torch.linalg.norm(matrix - left @ right) ** 2)
    assert error_sq == pytest.approx(np.sum(s[r:] ** 2), rel=1e-6, abs=1e-10 * np.sum(s ** 2))
    assert discarded == pytest.approx(error_sq, rel=1e-6, abs=1e-10 * np.sum(s ** 2))
    assert error_sq <= budget * (1 + 1e-9) + 1e-12 or r == min(cap, m, n)
