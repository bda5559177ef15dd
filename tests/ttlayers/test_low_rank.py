import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ttlayers import LowRankLinear

SETTINGS = settings(max_examples=30, deadline=None)


@SETTINGS
@given(n_in=st.integers(1, 20), n_out=st.integers(1, 20), data=st.data(), bias=st.booleans(),
       lead=st.lists(st.integers(0, 3), max_size=2), seed=st.integers(0, 999))
def test_forward_and_gradients_match_dense_reconstruction(n_in, n_out, data, bias, lead, seed):
    torch.manual_seed(seed)
    layer = LowRankLinear(n_in, n_out, data.draw(st.integers(1, min(n_in, n_out))), bias=bias, dtype=torch.float64)
    x = torch.randn(*lead, n_in, dtype=torch.float64, requires_grad=True)
    y, y_ref = layer(x), F.linear(x, layer.dense_weight(), layer.bias)
    torch.testing.assert_close(y, y_ref)
    params = [x, layer.u, layer.v] + ([layer.bias] if bias else [])
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(y_ref, params, g)):
        torch.testing.assert_close(a, b)


@SETTINGS
@given(n_in=st.integers(1, 25), n_out=st.integers(1, 25), data=st.data(), seed=st.integers(0, 999))
def test_error_is_the_norm_of_the_discarded_singular_values(n_in, n_out, data, seed):
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, n_out).double()
    rank = data.draw(st.integers(1, min(n_in, n_out)))
    layer = LowRankLinear.from_linear(linear, rank)
    s = torch.linalg.svdvals(linear.weight.detach())
    error = torch.linalg.norm(layer.dense_weight() - linear.weight)
    torch.testing.assert_close(error, s[rank:].norm(), atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(layer.bias, linear.bias)


def test_full_rank_is_exact():
    linear = nn.Linear(7, 5).double()
    layer = LowRankLinear.from_linear(linear, 5)
    x = torch.randn(3, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), linear(x))


@pytest.mark.parametrize("rank", [2, 8, 32])
def test_init_variance_matches_nn_linear(rank):
    torch.manual_seed(rank)
    layer = LowRankLinear(512, 1024, rank)
    ratio = layer.dense_weight().var().item() * 3 * 512  # nn.Linear: 1 / (3 in_features)
    assert 0.5 < ratio < 2.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_state_dict(dtype):
    layer = LowRankLinear(10, 6, 3, dtype=dtype)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    copy = LowRankLinear(10, 6, 3, dtype=dtype)
    copy.load_state_dict(torch.load(buffer))
    x = torch.randn(2, 10, dtype=dtype)
    assert copy(x).dtype == dtype
    torch.testing.assert_close(copy(x), layer(x))
    assert "rank=3" in repr(layer) and "compression=" in repr(layer)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(10, 6, 0)
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(10, 6, 7)
    with pytest.raises(ValueError, match="in_features"):
        LowRankLinear(0, 6, 1)
    with pytest.raises(ValueError, match="expects input"):
        LowRankLinear(10, 6, 2)(torch.randn(4, 9))
    with pytest.raises(TypeError, match="LowRankLinear holds torch.float32 parameters"):
        LowRankLinear(10, 6, 2)(torch.randn(4, 10, dtype=torch.float64))


def test_numpy_integers_are_sizes_and_ranks_like_python_ones():
    import numpy as np

    layer = LowRankLinear(np.int64(16), np.int64(8), np.int32(2))
    assert (layer.in_features, layer.out_features, layer.rank) == (16, 8, 2) and type(layer.rank) is int
