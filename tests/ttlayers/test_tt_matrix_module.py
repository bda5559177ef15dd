"""TTMatrixModule, the TT-matrix parameters under TTLinear and TTEmbedding: core shapes and ranks,
the decomposition of a dense matrix, the cache of a tensor built from the cores, the compression."""

import pytest
import torch

from ttlayers.tt_matrix_module import TTMatrixModule

NAMES = ("n_rows", "n_cols", "row_shape", "col_shape")


def module(n_rows=10, n_cols=12, rank=3, row_shape=(2, 5), col_shape=(3, 4), **kw) -> TTMatrixModule:
    return TTMatrixModule(n_rows, n_cols, rank, row_shape, col_shape, NAMES, **kw)


def test_cores_have_the_tensorly_layout_and_capped_ranks():
    m = module(rank=100, dtype=torch.float64)
    assert [tuple(c.shape) for c in m.cores] == [(1, 2, 3, 6), (6, 5, 4, 1)]  # bond capped at min(2 * 3, 5 * 4)
    assert m.ranks == (1, 6, 1) and list(m.state_dict()) == ["cores.0", "cores.1"]
    assert all(c.dtype == torch.float64 for c in m.cores)
    assert m.compression() == pytest.approx(10 * 12 / (1 * 2 * 3 * 6 + 6 * 5 * 4 * 1))


def test_an_exact_decomposition_reproduces_the_matrix_and_warns_when_it_is_larger():
    weight = torch.randn(10, 12, dtype=torch.float64)
    with pytest.warns(UserWarning, match="the exact TT-matrix of this 10 x 12 matrix holds"):
        m = TTMatrixModule.decomposed(weight, (10, 12), None, None, row_shape=(2, 5), col_shape=(3, 4), names=NAMES)
    torch.testing.assert_close(m.full_matrix(), weight, rtol=1e-12, atol=1e-12)
    assert m.cores[0].dtype == torch.float64


def test_a_padded_matrix_is_decomposed_with_zeros_around_it():
    weight = torch.randn(9, 11, dtype=torch.float64)
    m = TTMatrixModule.decomposed(weight, (9, 11), 30, None, row_shape=(2, 5), col_shape=(3, 4), names=NAMES)
    full = m.full_matrix().detach()
    assert full.shape == (10, 12)
    torch.testing.assert_close(full[:9, :11], weight, rtol=1e-10, atol=1e-10)
    assert float(full[9:].abs().max()) < 1e-10 and float(full[:, 11:].abs().max()) < 1e-10


def test_a_rank_cap_and_rel_eps_are_checked_and_applied():
    weight = torch.randn(10, 12, dtype=torch.float64)
    m = module(dtype=torch.float64)
    m.decompose(weight, 2, None)
    assert m.ranks == (1, 2, 1)
    m.decompose(weight, None, 0.3)
    assert torch.linalg.norm(m.full_matrix() - weight) <= 0.3 * torch.linalg.norm(weight)
    with pytest.raises(ValueError, match="bond must be >= 1"):
        m.decompose(weight, 0, None, rank_name="bond")


def test_the_cache_is_kept_until_a_core_changes_is_replaced_or_cast():
    m = module()
    m.init_cores(1.0)
    calls = []

    def build():
        calls.append(1)
        return m.full_matrix()

    first = m.cached(build)
    assert m.cached(build) is first and len(calls) == 1 and not first.requires_grad
    with torch.no_grad():
        m.cores[0].mul_(2.0)  # in place
    torch.testing.assert_close(m.cached(build), 2 * first)
    m.cores[1] = torch.nn.Parameter(torch.zeros_like(m.cores[1]))  # replaced
    assert float(m.cached(build).abs().max()) == 0
    m.double()  # cast
    assert m.cached(build).dtype == torch.float64 and len(calls) == 4
    m.train()  # a mode switch drops the cache too
    m.cached(build)
    assert len(calls) == 5


def test_bad_arguments_use_the_subclass_names():
    with pytest.raises(ValueError, match="n_cols must be a positive int"):
        module(n_cols=0)
    with pytest.raises(ValueError, match=r"row_shape \(2, 2\) holds 4 entries, fewer than the 10"):
        module(row_shape=(2, 2))
