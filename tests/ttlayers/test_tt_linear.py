import io
import warnings
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ttlayers import TTLinear, factorize
from ttlayers.tt_contract import linear_plan

SETTINGS = settings(max_examples=30, deadline=None)


def grads(layer: TTLinear, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    params = [x, *layer.cores] + ([layer.bias] if layer.bias is not None else [])
    return torch.autograd.grad(y, params, g)


def check_matches_dense(layer: TTLinear, x: torch.Tensor, atol: float = 1e-10) -> None:
    """Forward and all gradients equal those of F.linear with the dense reconstruction."""
    x = x.clone().requires_grad_()
    y = layer(x)
    y_ref = F.linear(x, layer.dense_weight(), layer.bias)
    assert y.shape == (*x.shape[:-1], layer.out_features)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=1e-6)
    g = torch.randn_like(y)
    for a, b in zip(grads(layer, x, y, g), grads(layer, x, y_ref, g)):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-6)


@st.composite
def layers(draw):
    d = draw(st.integers(1, 3))
    in_features, out_features = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return TTLinear(in_features, out_features, draw(st.integers(1, 5)), in_shape=factorize(in_features, d),
                    bias=draw(st.booleans()), dtype=torch.float64)


@SETTINGS
@given(layer=layers(), lead=st.lists(st.integers(0, 4), min_size=0, max_size=2))
def test_forward_and_gradients_match_dense_reconstruction(layer, lead):
    check_matches_dense(layer, torch.randn(*lead, layer.in_features, dtype=torch.float64))


def test_routes():
    """Single rows take the TT route; with the weight already built (eval cache), big batches take the matmul."""
    layer = TTLinear(60, 80, 3, in_shape=(3, 4, 5), out_shape=(4, 4, 5), dtype=torch.float64)
    assert not linear_plan(1, layer.out_shape, layer.in_shape, layer.ranks, False).dense
    assert linear_plan(2000, layer.out_shape, layer.in_shape, layer.ranks, True).dense
    check_matches_dense(layer, torch.randn(1, 60, dtype=torch.float64))


MEDIUM_LSTM_MAP = ((20, 13, 10), (13, 10, 5), (1, 64, 50, 1))  # tt_paper_ft
SMALL_LSTM_MAP = ((10, 10, 8), (8, 5, 5), (1, 16, 16, 1))  # tt_lstm_scratch_lr025
SMALL_SOFTMAX = ((25, 20, 20), (8, 5, 5), (1, 16, 16, 1))  # tt_embdec_ft: 10000 x 200, rank 16


def test_a_built_weight_is_read_at_batch_1_where_that_measured_faster():
    """Eval at batch 1 (W cached): the routes measured faster for the study's TT models and at
    the points of benchmarks/bench_layers.py (docs/layers.md), counting the fixed cost of every
    operation a route launches (tt_contract.STEP_COST) and W's read from cache or memory."""
    plan = linear_plan(1, *MEDIUM_LSTM_MAP, True)
    assert plan.dense and plan.tt_flops > 25 * plan.dense_flops  # cached W, though its cores count 25x the FLOPs
    assert linear_plan(1, *SMALL_LSTM_MAP, True).dense and not linear_plan(1, *SMALL_SOFTMAX, True).dense
    assert not linear_plan(1, *MEDIUM_LSTM_MAP, False).dense  # building W and writing its gradient: cores
    # 1024->1024 at TT rank 16: three contraction steps of 5M FLOPs lose to reading a 4 MiB W
    assert linear_plan(1, (16, 8, 8), (16, 8, 8), (1, 16, 16, 1), True).dense
    assert not linear_plan(1, (16, 8, 8), (16, 8, 8), (1, 4, 4, 1), True).dense  # rank 4: the cores still win
    assert not linear_plan(1, (25, 20, 20), (26, 5, 5), (1, 32, 32, 1), True).dense  # a 26 MiB W: read from memory


def test_repeated_calls_share_one_built_weight_when_cheaper():
    """An LSTM's recurrent map at batch 20: one call contracts with the cores, 35 calls build W once;
    both routes give the layer's output and the same core gradients."""
    torch.manual_seed(4)
    layer = TTLinear(200, 800, 16, dtype=torch.float64)
    assert not linear_plan(20, layer.out_shape, layer.in_shape, layer.ranks, False, 1).dense
    assert linear_plan(20, layer.out_shape, layer.in_shape, layer.ranks, False, 35).dense
    # the medium model's 650->2600 map too (there the routes time alike: bench_layers --recurrence)
    assert not linear_plan(20, (20, 13, 10), (13, 10, 5), (1, 16, 16, 1), False, 1).dense
    assert linear_plan(20, (20, 13, 10), (13, 10, 5), (1, 16, 16, 1), False, 35).dense
    xs = torch.randn(3, 20, 200, dtype=torch.float64)
    grads = []
    for calls in (1, 35):
        layer.zero_grad()
        step = layer.repeated(20, calls)
        ys = [step(x) for x in xs]
        for x, y in zip(xs, ys):
            torch.testing.assert_close(y, F.linear(x, layer.dense_weight(), layer.bias))
        sum(y.square().sum() for y in ys).backward()
        grads.append([c.grad.clone() for c in layer.cores])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="calls"):
        layer.repeated(20, 0)


def test_padding_is_invisible():
    torch.manual_seed(1)
    layer = TTLinear(7, 11, 2, in_shape=(2, 2, 2), out_shape=(3, 2, 2), dtype=torch.float64)
    assert layer.dense_weight().shape == (11, 7)
    check_matches_dense(layer, torch.randn(5, 7, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(dtype):
    torch.manual_seed(2)
    layer = TTLinear(24, 36, 4, dtype=dtype)
    x = torch.randn(2, 5, 24, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, F.linear(x, layer.dense_weight(), layer.bias))


def test_unbatched_input():
    layer = TTLinear(12, 6, 2)
    assert layer(torch.randn(12)).shape == (6,)


@pytest.mark.filterwarnings("ignore:the exact TT-matrix")  # exact copies are the point here
@SETTINGS
@given(rows=st.integers(1, 30), cols=st.integers(1, 30), d=st.integers(1, 3), bias=st.booleans(), seed=st.integers(0, 999))
def test_from_linear_full_rank_is_exact(rows, cols, d, bias, seed):
    torch.manual_seed(seed)
    linear = nn.Linear(cols, rows, bias=bias).double()
    layer = TTLinear.from_linear(linear, in_shape=factorize(cols, d), out_shape=factorize(rows, d))
    torch.testing.assert_close(layer.dense_weight(), linear.weight, atol=1e-10, rtol=0)
    x = torch.randn(3, cols, dtype=torch.float64)
    torch.testing.assert_close(layer(x), linear(x), atol=1e-10, rtol=0)


@SETTINGS
@given(rows=st.integers(4, 40), cols=st.integers(4, 40), eps=st.floats(0.01, 0.9), seed=st.integers(0, 999))
def test_from_linear_rel_eps_bound(rows, cols, eps, seed):
    torch.manual_seed(seed)
    linear = nn.Linear(cols, rows).double()
    layer = TTLinear.from_linear(linear, rel_eps=eps)
    error = torch.linalg.norm(layer.dense_weight() - linear.weight)
    assert error <= eps * torch.linalg.norm(linear.weight) * (1 + 1e-9)


def test_from_linear_rank_caps_ranks():
    linear = nn.Linear(64, 64)
    layer = TTLinear.from_linear(linear, rank=3)
    assert max(layer.ranks) <= 3 and layer.ranks[0] == layer.ranks[-1] == 1


@pytest.mark.parametrize("rank", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("shapes", [((16, 16), (16, 32)), ((8, 4, 8), (8, 8, 8)), ((4, 4, 4, 4), (4, 4, 4, 8))])
def test_init_variance_matches_nn_linear(rank, shapes):
    torch.manual_seed(rank)
    in_shape, out_shape = shapes
    layer = TTLinear(math.prod(in_shape), math.prod(out_shape), rank, in_shape=in_shape, out_shape=out_shape)
    target = nn.Linear(layer.in_features, layer.out_features).weight.var().item()  # 1 / (3 in_features)
    ratio = layer.dense_weight().var().item() / target
    assert 0.5 < ratio < 2.0, ratio


def test_eval_cache_follows_parameter_changes():
    torch.manual_seed(3)
    layer = TTLinear(60, 80, 3, in_shape=(3, 4, 5), out_shape=(4, 4, 5), dtype=torch.float64).eval()
    x = torch.randn(4000, 60, dtype=torch.float64)  # big batch: the dense route with the cached weight
    with torch.no_grad():
        assert linear_plan(4000, layer.out_shape, layer.in_shape, layer.ranks, True).dense
        y0 = layer(x)
        assert layer._cache is not None
        layer.cores[1].mul_(2.0)
        torch.testing.assert_close(layer(x), 2 * (y0 - layer.bias) + layer.bias)
        other = TTLinear(60, 80, 3, in_shape=(3, 4, 5), out_shape=(4, 4, 5), dtype=torch.float64)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), F.linear(x, other.dense_weight(), other.bias))
    y = layer(x)  # grad enabled: no cache, differentiable
    assert y.requires_grad


def test_kept_weight_and_plans_follow_optimizer_steps_new_cores_and_casts():
    """What eval keeps from the cores (W, the ranks, the plans) is dropped after an optimizer
    step (here in eval mode, as in fine-tuning without dropout), when a core is replaced by one
    of another rank, and when the layer is cast."""
    torch.manual_seed(5)
    layer = TTLinear(60, 80, 3, in_shape=(3, 4, 5), out_shape=(4, 4, 5), dtype=torch.float64).eval()
    x = torch.randn(4000, 60, dtype=torch.float64)  # the dense route with the kept W

    def check(layer):
        with torch.no_grad():
            assert layer.uses_dense_weight(4000)
            y = layer(x.to(layer.bias.dtype))
        assert layer.plan(4000).contraction.shapes[2] == (layer.ranks[1], 4, 4, layer.ranks[2])  # (x, cores)
        cores = [c.detach() for c in layer.cores]
        full = torch.einsum("aijb,bklc,cmnd->ikmjln", *cores).reshape(80, 60)
        torch.testing.assert_close(y, F.linear(x.to(y.dtype), full, layer.bias.detach()))

    check(layer)
    layer(x).square().mean().backward()
    torch.optim.SGD(layer.parameters(), lr=0.5).step()
    check(layer)
    with torch.no_grad():
        layer.cores[1] = nn.Parameter(torch.randn(3, 4, 4, 2, dtype=torch.float64))
        layer.cores[2] = nn.Parameter(torch.randn(2, 5, 5, 1, dtype=torch.float64))
    assert layer.ranks == (1, 3, 2, 1)
    check(layer)
    check(layer.float())


def test_state_dict_round_trip():
    torch.manual_seed(4)
    layer = TTLinear(30, 20, [3, 2])
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    copy = TTLinear(30, 20, [3, 2])
    copy.load_state_dict(torch.load(buffer))
    x = torch.randn(5, 30)
    torch.testing.assert_close(copy(x), layer(x))
    assert set(layer.state_dict()) == {"cores.0", "cores.1", "cores.2", "bias"}


def test_extra_repr_shows_shapes_ranks_and_compression():
    text = repr(TTLinear(650, 2600, 16))
    assert "in_shape=(13, 10, 5)" in text and "out_shape=(20, 13, 10)" in text
    assert "ranks=(1, 16, 16, 1)" in text and "compression=" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"in_features": 10, "out_features": 10, "rank": 0}, "rank"),
        ({"in_features": 0, "out_features": 10, "rank": 2}, "in_features"),
        ({"in_features": 10, "out_features": 10, "rank": 2, "in_shape": (2, 3)}, "in_shape"),
        ({"in_features": 10, "out_features": 10, "rank": 2, "in_shape": (2, 5), "out_shape": (2, 5, 1)}, "same number of modes"),
        ({"in_features": 10, "out_features": 10, "rank": [2, 2, 2]}, "rank"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TTLinear(**kwargs)


def test_wrong_feature_size_names_the_problem():
    with pytest.raises(ValueError, match="expects input"):
        TTLinear(10, 4, 2)(torch.randn(3, 11))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.float16])
def test_an_input_of_another_dtype_is_refused_at_the_entry(dtype):
    layer = TTLinear(12, 6, 2)  # float32
    with pytest.raises(TypeError, match=r"TTLinear holds torch.float32 parameters .* got " + str(dtype)):
        layer(torch.ones(3, 12, dtype=dtype))


def test_from_linear_names_the_arguments_it_was_given():
    with pytest.raises(ValueError, match=r"^rank must be >= 1"):
        TTLinear.from_linear(nn.Linear(8, 8), rank=0)
    with pytest.raises(TypeError, match="linear must be a torch.nn.Linear, got Conv1d"):
        TTLinear.from_linear(nn.Conv1d(8, 8, 1), rank=2)


def test_from_linear_warns_when_the_exact_copy_is_larger_than_the_dense_layer():
    with pytest.warns(UserWarning, match="give rank or rel_eps"):
        TTLinear.from_linear(nn.Linear(64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TTLinear.from_linear(nn.Linear(64, 64), rank=2)  # smaller: no warning


def test_the_old_weight_accessors_warn_and_agree_with_dense_weight():
    layer = TTLinear(7, 11, 2, in_shape=(2, 2, 2), out_shape=(3, 2, 2), dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match="dense_weight"):
        torch.testing.assert_close(layer.current_weight(), layer.dense_weight())
    with pytest.warns(DeprecationWarning, match="dense_weight"):
        torch.testing.assert_close(layer.full_weight()[:11, :7], layer.dense_weight())
    with pytest.warns(DeprecationWarning, match="uses_dense_weight"):
        built = layer.built_weight(1000, 1)
    assert (built is None) != layer.uses_dense_weight(1000, 1)


def test_numpy_integers_are_sizes_like_python_ones():
    import numpy as np

    layer = TTLinear(np.int64(16), np.int32(12), np.int64(2), in_shape=np.array([4, 4]))
    assert (layer.in_features, layer.out_features, layer.in_shape) == (16, 12, (4, 4))
    assert all(type(n) is int for n in (layer.in_features, layer.out_features, *layer.in_shape))


def test_a_weight_kept_under_inference_mode_does_not_break_later_gradients():
    layer = TTLinear(64, 64, 2).eval().requires_grad_(False)
    with torch.inference_mode():
        kept = layer(torch.randn(300, 64))  # large batch: the built W route, kept
    x = torch.randn(300, 64, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.dense_weight().sum(0).expand(300, 64))
    assert kept.is_inference()


def test_decompose_keeps_the_layers_dtype_device_and_freezing():
    layer = TTLinear(16, 16, 2, dtype=torch.float64).requires_grad_(False)
    matrix = torch.randn(16, 16)  # float32
    layer.decompose(matrix, None, None)  # exact
    assert all(c.dtype == torch.float64 and not c.requires_grad for c in layer.cores)
    torch.testing.assert_close(layer.dense_weight(), matrix.double(), atol=1e-5, rtol=1e-5)
    assert TTLinear.from_linear(nn.Linear(16, 16, dtype=torch.float64), rank=2).cores[0].dtype == torch.float64
