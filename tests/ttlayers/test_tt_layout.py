"""The TT-matrix layout of a layer: mode shapes, capped ranks, the init scale, sizes, cache keys,
and the checks of layer arguments."""

import math

import pytest
import torch

from ttlayers._tt_layout import (capped_ranks, check_features, check_float_input, core_std, cores_key, mode_shapes,
                                 tt_size)
from ttlayers.factorize import factorize


def test_mode_shapes_factorize_the_missing_ones_with_as_many_modes_as_the_given():
    assert mode_shapes(64, 27, None, None, "rows", "cols") == (factorize(64, 3), factorize(27, 3))
    assert mode_shapes(64, 27, (8, 8), None, "rows", "cols") == ((8, 8), factorize(27, 2))
    assert mode_shapes(10, 6, None, (2, 4), "rows", "cols") == (factorize(10, 2), (2, 4))  # 8 >= 6: padded


@pytest.mark.parametrize("row_shape, col_shape, message", [
    ((2, 3), None, r"row_shape \(2, 3\) holds 6 entries, fewer than the 10 it must hold"),
    ((), None, "row_shape must be a non-empty sequence of positive ints"),
    ((5, 0, 2), None, "row_shape must be a non-empty sequence of positive ints"),
    ((5, 2), (2, 2, 2), r"row_shape \(5, 2\) and col_shape \(2, 2, 2\) must have the same number of modes"),
])
def test_mode_shapes_refuse_bad_shapes(row_shape, col_shape, message):
    with pytest.raises(ValueError, match=message):
        mode_shapes(10, 8, row_shape, col_shape, "row_shape", "col_shape")


def test_capped_ranks_cap_each_bond_at_the_smaller_side():
    # modes m_k n_k = 4, 6, 10: bond 1 caps at min(4, 60), bond 2 at min(24, 10)
    assert capped_ranks(100, (2, 2, 2), (2, 3, 5)) == (1, 4, 10, 1)
    assert capped_ranks([3, 7], (2, 2, 2), (2, 3, 5)) == (1, 3, 7, 1)
    with pytest.raises(ValueError, match="rank must be an int or a list of ints, got None"):
        capped_ranks(None, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        capped_ranks(0, (2, 2), (2, 2))


def test_core_std_gives_the_matrix_entries_the_variance_asked_for():
    ranks, row_shape, col_shape = (1, 3, 4, 1), (2, 2, 2), (3, 2, 2)
    std = core_std(0.01, ranks)
    torch.manual_seed(0)
    entries = []
    for _ in range(400):
        cores = [torch.randn(ranks[k], row_shape[k] * col_shape[k], ranks[k + 1], dtype=torch.float64) * std
                 for k in range(3)]
        full = cores[0]
        for core in cores[1:]:
            full = torch.tensordot(full, core, dims=1)
        entries.append(full.reshape(-1))
    assert float(torch.cat(entries).var()) == pytest.approx(0.01, rel=0.1)


def test_tt_size_counts_the_core_entries():
    assert tt_size((2, 3), (4, 5), (1, 6, 1)) == 1 * 2 * 4 * 6 + 6 * 3 * 5 * 1


def test_cores_key_changes_on_in_place_edits_replacement_and_casts():
    cores = [torch.randn(1, 4, 2), torch.randn(2, 4, 1)]
    key = cores_key(cores)
    assert cores_key(cores) == key
    cores[1].add_(1.0)
    assert cores_key(cores) != key
    key = cores_key(cores)
    assert cores_key([cores[0], cores[1].clone()]) != key
    assert cores_key([cores[0], cores[1].double()]) != key


def test_layer_argument_checks():
    assert check_features(3, "in_features") == 3
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match="in_features must be a positive int"):
            check_features(bad, "in_features")
    check_float_input(torch.ones(2), torch.float32, "TTLinear")
    with pytest.raises(TypeError, match="TTLinear expects a torch.Tensor input, got list"):
        check_float_input([1.0], torch.float32, "TTLinear")
    with pytest.raises(TypeError, match=r"TTLinear holds torch.float32 parameters .* got torch.float64"):
        check_float_input(torch.ones(2, dtype=torch.float64), torch.float32, "TTLinear")
    assert math.isfinite(core_std(1.0, (1, 2, 1)))
