"""Uniform 8-bit quantization (the artifact's q8/q8c codes) and torch's dynamic int8 execution."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.compression.quantize import dequantize, int8_dynamic, quantize_uniform
from ttlayers.lstm import LSTM


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 7), per_channel=st.booleans(), seed=st.integers(0, 100))
def test_quantize_uniform_error_is_half_a_step(rows, cols, per_channel, seed):
    t = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    codes, lo, step = quantize_uniform(t, per_channel)
    assert codes.dtype == torch.uint8 and codes.shape == t.shape
    err = (dequantize(codes, lo, step) - t).abs()
    bound = (step[:, None] if per_channel else step) / 2 + 1e-6
    assert (err <= bound).all()
    # 256 equal intervals between the extremes: both ends are hit exactly
    assert codes.min() == 0 and (codes.max() == 255 or t.max() == t.min() or (per_channel and cols == 1))


def test_quantize_constant_and_bad_input():
    codes, lo, step = quantize_uniform(torch.full((3, 2), 0.5))
    assert torch.equal(dequantize(codes, lo, step), torch.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="floating-point"):
        quantize_uniform(torch.ones(3, dtype=torch.long))


def test_int8_dynamic_runs_and_is_close(tiny_lm):
    m = tiny_lm(hidden=16)
    q = int8_dynamic(m)
    tokens = torch.randint(0, 60, (5, 2))
    assert (q(tokens)[0] - m(tokens)[0]).abs().max() < 0.05
    assert not any(isinstance(x, torch.nn.Linear) and type(x) is torch.nn.Linear for x in q.modules())


def test_int8_dynamic_keeps_a_projected_lstm_fused(tiny_lm):
    m = tiny_lm(hidden=16)
    m.lstm = LSTM(16, 16, 2, proj_size=4)
    m.decoder = torch.nn.Linear(4, 60)
    q = int8_dynamic(m)
    assert all(layer.is_dense for layer in q.lstm.layers)  # the fused torch.lstm call still applies
    assert type(q.decoder) is torch.ao.nn.quantized.dynamic.Linear
    tokens = torch.randint(0, 60, (5, 2))
    assert (q(tokens)[0] - m(tokens)[0]).abs().max() < 0.05
