"""The layers under ``torch.autocast`` (CPU, bfloat16) behave as ``nn.Linear`` does there: any
floating input is accepted and cast, the output is in autocast's dtype, the parameters and their
gradients stay in float32, and nothing kept under autocast (the TT weight caches) leaks into later
calls outside it. TTEmbedding, as ``nn.Embedding``, looks its rows up in float32 there."""

import copy

import pytest
import torch
from torch import nn

from ttlayers import LSTM, LowRankLinear, TTEmbedding, TTLinear
from ttlayers.lstm_compression import tt_lstm

BF16 = 2.0 ** -8  # bfloat16's unit roundoff


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def linear_layers(seed: int = 0) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    dense = nn.Linear(64, 48)
    return {"Linear": dense, "TTLinear": TTLinear.from_linear(dense, rank=8),
            "LowRankLinear": LowRankLinear.from_linear(dense, 8)}


def assert_close_in_bf16(out: torch.Tensor, ref: torch.Tensor, products: int) -> None:
    """``out`` within bfloat16's rounding of ``ref`` for sums of ``products`` terms, relative to
    ``ref``'s scale (casting input and weights costs about 2 roundoffs per product)."""
    err = (out.double() - ref.double()).abs().max().item()
    assert err <= 4 * BF16 * products ** 0.5 * ref.abs().max().item(), err


@pytest.mark.parametrize("name", ["Linear", "TTLinear", "LowRankLinear"])
@pytest.mark.parametrize("batch", [3, 4096])  # TTLinear contracts the cores at 3 rows and builds W at 4096
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("training", [True, False])
def test_linear_layers_under_autocast_match_float32(name, batch, input_dtype, training):
    layer = linear_layers()[name].train(training)
    x = torch.randn(batch, 64)
    ref = layer(x)
    with autocast():
        out = layer(x.to(input_dtype))
    assert out.dtype == torch.bfloat16  # as nn.Linear's
    assert_close_in_bf16(out, ref, 64)
    # gradients reach the float32 parameters, close to float32's
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, list(layer.parameters()), g)
    with autocast():
        out = layer(x)
    grads = torch.autograd.grad(out, list(layer.parameters()), g.bfloat16())
    for p, a, b in zip(layer.parameters(), grads, ref_grads):
        assert p.dtype == a.dtype == torch.float32
        assert_close_in_bf16(a, b, 4 * batch)


@pytest.mark.parametrize("grad", [True, False])
def test_ttlinear_weight_kept_under_autocast_serves_later_float32_calls(grad):
    layer = linear_layers()["TTLinear"].eval()
    untouched = copy.deepcopy(layer)
    x = torch.randn(4096, 64)
    with torch.set_grad_enabled(grad):
        with autocast():
            layer(x)  # in eval without gradients, W is built and kept
        out, ref = layer(x), untouched(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_ttembedding_under_autocast_then_outside():
    torch.manual_seed(0)
    layer = TTEmbedding(1000, 30, 4).eval()
    untouched = copy.deepcopy(layer)
    idx = torch.randint(0, 1000, (7, 5))
    with torch.no_grad():
        with autocast():
            inside = layer(idx)
        out, ref = layer(idx), untouched(idx)
    # a lookup, as nn.Embedding's: in the table's dtype under autocast, without bfloat16 rounding
    assert inside.dtype == out.dtype == torch.float32
    torch.testing.assert_close(inside, ref, rtol=0, atol=0)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("n", [6, 400])  # rows by gathered slices, and from all tails at once
def test_ttembedding_under_autocast_trains_in_float32(n):
    torch.manual_seed(0)
    layer = TTEmbedding(1000, 30, 4)
    idx = torch.randint(0, 1000, (n,))
    g = torch.randn(n, 30)
    ref = torch.autograd.grad(layer(idx), list(layer.parameters()), g)
    with autocast():
        out = layer(idx)
    assert out.dtype == torch.float32
    for a, b in zip(torch.autograd.grad(out, list(layer.parameters()), g), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dtype_mismatch_outside_autocast_still_refused():
    for name, layer in linear_layers().items():
        if name == "Linear":
            continue
        with pytest.raises(TypeError, match="dtype"):
            layer(torch.randn(3, 64, dtype=torch.bfloat16))


LSTMS = {"tt": lambda: tt_lstm(nn.LSTM(32, 24, 2), rank=6),
         # torch 2.13's nn.LSTM fails here on CPU (oneDNN gets a float32 input and bfloat16 weights)
         "dense": lambda: LSTM(32, 24, 2)}


@pytest.mark.parametrize("kind", list(LSTMS))
@pytest.mark.parametrize("seq_len", [1, 6])
def test_lstm_under_autocast_matches_float32(kind, seq_len):
    torch.manual_seed(0)
    lstm = LSTMS[kind]()
    x = torch.randn(seq_len, 3, 32)
    ref, (h_ref, c_ref) = lstm(x)
    with autocast():
        out, (h, c) = lstm(x)
    for a, b in ((out, ref), (h, h_ref), (c, c_ref)):
        assert_close_in_bf16(a, b, 4 * 32)


def test_dense_lstm_takes_bfloat16_input_under_autocast_like_torch():
    torch.manual_seed(0)
    torch_lstm = nn.LSTM(32, 24, 2)
    ours = LSTM.from_torch(torch_lstm)
    x = torch.randn(6, 3, 32, dtype=torch.bfloat16)
    with autocast():
        out, (h, c) = ours(x)
        ref, (h_ref, c_ref) = torch_lstm(x)
    for a, b in ((out, ref), (h, h_ref), (c, c_ref)):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)
