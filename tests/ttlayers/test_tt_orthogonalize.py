"""The QR sweep of TT cores: the tensor is unchanged, the swept cores have orthonormal rows, and
with ``redundant_only`` only the redundant bonds are touched, dropping exactly to ``n_k r_k``."""

import pytest
import torch

from ttlayers.tt_orthogonalize import orthogonalize


def full(cores):
    out = cores[0]
    for core in cores[1:]:
        out = torch.tensordot(out, core, dims=1)
    return out.squeeze(0).squeeze(-1)


def random_cores(shape, ranks, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(ranks[k], shape[k], ranks[k + 1], generator=g, dtype=torch.float64) for k in range(len(shape))]


def test_full_sweep_keeps_the_tensor_and_makes_every_later_core_right_orthonormal():
    cores = random_cores((3, 4, 2, 5), (1, 3, 5, 4, 1))
    swept = orthogonalize(cores)
    torch.testing.assert_close(full(swept), full(cores), rtol=1e-12, atol=1e-12)
    for core in swept[1:]:
        r = core.shape[0]
        rows = core.reshape(r, -1)
        torch.testing.assert_close(rows @ rows.T, torch.eye(r, dtype=rows.dtype), rtol=0, atol=1e-12)
    assert [c.shape for c in swept] == [c.shape for c in cores]
    assert all(c is not d for c, d in zip(swept, cores))  # the input list and cores are left alone


def test_redundant_only_trims_the_redundant_bonds_and_leaves_the_others():
    # the last core is 6 x 2 x 1: its bond of 6 can hold at most n r = 2 directions
    cores = random_cores((3, 4, 2), (1, 3, 6, 1))
    swept = orthogonalize(cores, redundant_only=True)
    assert [tuple(c.shape) for c in swept] == [(1, 3, 3), (3, 4, 2), (2, 2, 1)]
    assert swept[0] is cores[0]  # core 1, 3 x 4 x 2 once its right bond is cut, is not redundant
    torch.testing.assert_close(full(swept), full(cores), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("redundant_only", [False, True])
def test_one_core_is_returned_as_is(redundant_only):
    core = torch.randn(1, 5, 1)
    assert orthogonalize([core], redundant_only)[0] is core
