import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lm.compression.lowbit import (decode_rows, dequantize_rows, encode_rows, fake_quantize, pack_codes, packed_bytes,
                                   quantize_rows, row_ranges, unpack_codes)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 8), count=st.integers(0, 61), seed=st.integers(0, 100))
def test_pack_unpack_roundtrip(bits, count, seed):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_bytes(count, bits) == -(-count * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, count), codes)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("count", [1, 7, 13, 333])
def test_pack_unpack_low_bits_on_odd_lengths(bits, count):
    codes = (torch.arange(count) * 7 % 2**bits).to(torch.uint8).reshape(-1, 1)  # every level, any shape
    packed = pack_codes(codes, bits)
    assert packed.numel() == (count * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, count), codes.reshape(-1))


def test_pack_refuses_bad_input():
    with pytest.raises(ValueError, match="codes must lie in"):
        pack_codes(torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match="bits must be"):
        pack_codes(torch.tensor([0]), 9)
    with pytest.raises(ValueError, match="hold at most"):
        unpack_codes(torch.zeros(1, dtype=torch.uint8), 3, 3)
    with pytest.raises(ValueError, match="1-D uint8"):
        unpack_codes(torch.zeros(2), 2, 1)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 4), shape=st.lists(st.integers(1, 7), min_size=1, max_size=4), data=st.data(),
       seed=st.integers(0, 100))
def test_quantize_rows_levels_and_idempotence(bits, shape, data, seed):
    axis = data.draw(st.integers(0, len(shape) - 1))
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3 + 1
    codes, lo, hi = quantize_rows(t, bits, axis)
    assert codes.shape == t.shape and codes.dtype == torch.uint8 and int(codes.max()) < 2**bits
    assert lo.shape == hi.shape == (shape[axis],) and (lo <= hi).all()
    values = dequantize_rows(codes, lo, hi, bits, axis)
    for row in values.movedim(axis, 0):
        assert row.unique().numel() <= 2**bits
    # the quantized values are their own quantization, bit for bit (what the artifact relies on)
    again = quantize_rows(values, bits, axis)
    assert all(torch.equal(a, b) for a, b in zip(again, (codes, lo, hi)))
    assert torch.equal(dequantize_rows(*again, bits, axis), values)


SCALES = (1.0, 1e-2, 1e-5, 1e-7, 3e-8, 1e-30)  # ordinary, float16 subnormals (below 6.1e-5), below its least (6e-8)


def mixed_rows(shape: list[int], axis: int, scale: float, steps: int, seed: int) -> torch.Tensor:
    """A float32 tensor whose rows along ``axis`` are, in turn, spread, within ``steps`` float16 steps of a
    constant, constant and zero, at ``scale``."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(shape, generator=g).movedim(axis, 0).clone()
    for i, row in enumerate(rows):
        kind = (i + seed) % 4
        if kind == 1:
            row.uniform_(1.0, 1.0 + steps * 2.0**-10, generator=g)  # float16's step at 1 is 2**-10
        elif kind == 2:
            row.fill_(row.reshape(-1)[0].item())
        elif kind == 3:
            row.zero_()
    return (rows * scale).movedim(0, axis)


@settings(max_examples=100, deadline=None)
@example(shape=[1, 3, 1], axis=0, scale=1e-5, steps=13, bits=4, seed=33)  # each failed before
@example(shape=[2, 1, 2], axis=0, scale=3e-8, steps=15, bits=2, seed=48)
@example(shape=[3, 1, 3], axis=0, scale=1e-7, steps=16, bits=3, seed=30)
@example(shape=[2, 2, 1], axis=2, scale=1.0, steps=8, bits=3, seed=25)
@example(shape=[1], axis=0, scale=3e-8, steps=1, bits=1, seed=10)  # a range of -0, whose value is 0
@given(shape=st.lists(st.sampled_from([1, 1, 2, 3, 16]), min_size=1, max_size=4), axis=st.integers(0, 3),
       scale=st.sampled_from(SCALES), steps=st.integers(1, 16), bits=st.integers(1, 8), seed=st.integers(0, 1000))
def test_quantized_tiny_and_near_constant_rows_quantize_to_themselves(shape, axis, scale, steps, bits, seed):
    # a row whose levels were less than a float16 step apart could leave an end level unused: its quantized
    # values had a narrower range, which rounded to another grid, and requantized to other codes and values
    axis %= len(shape)
    t = mixed_rows(shape, axis, scale, steps, seed)
    assert t.dtype == torch.float32
    codes, lo, hi = quantize_rows(t, bits, axis)
    values = dequantize_rows(codes, lo, hi, bits, axis)
    again = quantize_rows(values, bits, axis)
    for a, b, what in zip(again, (codes, lo, hi), ("codes", "lo", "hi")):
        assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), what  # bit for bit
    assert torch.equal(dequantize_rows(*again, bits, axis), values)
    # the artifact's encoding is the same: its decoded values encode to the same bytes
    packed, scale16 = encode_rows(t, bits, axis)
    assert torch.equal(packed, pack_codes(codes, bits)) and torch.equal(scale16, torch.stack([lo, hi]).half())
    decoded = decode_rows(packed, scale16, bits, tuple(t.shape), axis)
    assert torch.equal(decoded, values)
    packed2, scale2 = encode_rows(decoded, bits, axis)
    assert torch.equal(packed2, packed) and torch.equal(scale2.view(torch.int16), scale16.view(torch.int16))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_a_row_within_one_float16_number_quantizes_to_codes_0(bits):
    # its range rounded to lo == hi, but its codes still spread (by its values' distance from lo): its values,
    # all lo, requantized to codes 0
    t = torch.tensor([[1000.1, 1000.2, 1000.15, 1000.24], [-3.0, 1.0, 0.5, 2.0]])
    codes, lo, hi = quantize_rows(t, bits)
    assert lo[0] == hi[0] == 1000 and not codes[0].any()
    values = dequantize_rows(codes, lo, hi, bits)
    assert (values[0] == 1000).all()
    assert all(torch.equal(a, b) for a, b in zip(quantize_rows(values, bits), (codes, lo, hi)))


def test_clipped_range_beats_the_extremes_on_outliers():
    t = torch.cat([torch.randn(1, 500, generator=torch.Generator().manual_seed(0)), torch.tensor([[40.0]])], 1)
    codes, lo, hi = quantize_rows(t, 2)
    err = (dequantize_rows(codes, lo, hi, 2) - t).square().sum()
    full = torch.lerp(t.min(), t.max(), torch.round((t - t.min()) / (t.max() - t.min()) * 3) / 3)
    assert hi < t.max() and err < (full - t).square().sum()


def test_constant_rows_and_bad_input():
    t = torch.full((2, 3), 0.25)
    assert torch.equal(dequantize_rows(*quantize_rows(t, 2), 2), t)
    with pytest.raises(ValueError, match="floating-point"):
        quantize_rows(torch.ones(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="axis"):
        quantize_rows(torch.ones(3, 2), 2, axis=2)
    with pytest.raises(ValueError, match="bits"):
        quantize_rows(torch.ones(3, 2), 0)
    with pytest.raises(ValueError, match="float16"):
        quantize_rows(torch.tensor([[0.0, 1e6]]), 2)
    with pytest.raises(ValueError, match="lo and hi"):
        dequantize_rows(torch.zeros(3, 2, dtype=torch.uint8), torch.zeros(2), torch.zeros(2), 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("clip", [None, torch.zeros(2, dtype=torch.int64)])
def test_non_finite_values_are_named_as_such(bad, clip):
    # NaN and inf were reported as values beyond float16's range
    t = torch.tensor([[0.5, 1.0, 2.0], [0.0, bad, 1.0]])
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\)") as err:
        row_ranges(t, 2, clip=clip)
    assert "float16" not in str(err.value)
    with pytest.raises(ValueError, match="non-finite values"):
        quantize_rows(t.t(), 3, axis=1)
    ranges = (torch.zeros(2), torch.ones(2))  # given, as QAT gives them: NaN and -inf were coded 0, inf the last level
    for quantize in (quantize_rows, fake_quantize):
        with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\)"):
            quantize(t, 2, ranges=ranges)
    with pytest.raises(ValueError, match="beyond float16's range"):  # a finite value too large is still that
        row_ranges(torch.tensor([[0.0, 1e6]]), 2, clip=clip if clip is None else clip[:1])


def test_fake_quantize_gradient_is_straight_through_inside_the_range():
    t = torch.cat([torch.randn(3, 200, generator=torch.Generator().manual_seed(1)), torch.full((3, 1), 8.0)], 1)
    t.requires_grad_(True)
    upstream = torch.randn(t.shape)
    out = fake_quantize(t, 2)
    (out * upstream).sum().backward()
    codes, lo, hi = quantize_rows(t, 2)
    assert torch.equal(out.detach(), dequantize_rows(codes, lo, hi, 2))
    inside = (t.detach() >= lo[:, None]) & (t.detach() <= hi[:, None])
    assert not inside[:, -1].any() and inside.float().mean() > 0.5  # the outliers (and the tails) were clipped
    assert torch.equal(t.grad, upstream * inside)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_encode_decode_rows_stores_the_quantized_values_exactly(bits):
    t = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(4))
    packed, scale = encode_rows(t, bits, axis=1)
    assert packed.numel() == packed_bytes(t.numel(), bits) and scale.shape == (2, 5) and scale.dtype == torch.float16
    values = decode_rows(packed, scale, bits, tuple(t.shape), axis=1)
    assert torch.equal(values, dequantize_rows(*quantize_rows(t, bits, 1), bits, 1))
    again = encode_rows(values, bits, axis=1)
    assert torch.equal(again[0], packed) and torch.equal(again[1], scale)
