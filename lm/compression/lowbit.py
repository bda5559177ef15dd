"""Weights below 8 bits: ``2**bits`` equal levels per row, and their packed codes.

A tensor is quantized row by row along one ``axis`` (the row axis of its parameter
kind, see ``lm.compression.qat``): row ``i`` is ``t.movedim(axis, 0)[i]``, flattened.
Each row gets its own range ``[lo, hi]`` and the levels

    v_k = lerp(lo, hi, k / (2**bits - 1)),   k = 0 .. 2**bits - 1,

so a row costs ``bits`` bits per number plus two float16 (``lo``, ``hi``: float32 would be a
fifth of a 2-bit row of 128 numbers). ``lo`` and ``hi`` are rounded to float16 before the
codes are chosen, so the grid is the one stored. ``torch.lerp`` returns ``lo`` at k = 0 and
``hi`` at the last code exactly, so a row that uses both end levels (or a constant row) has
its range as its quantized values' extremes, and they requantize to the same codes, ``lo``
and ``hi``. A row whose levels are less than a float16 step apart (a row of ~1e-7, among
float16's subnormals, or a constant plus a few of its float16 steps) can have a rounded end
level more than half a level beyond its values, unused: its quantized values have a narrower
range, which rounds to other float16 numbers, another grid. ``quantize_rows`` settles such
rows: it requantizes their values until they stop changing (each change narrows the range,
whose ends are float16 numbers, so it ends; a row that uses both end levels needs no pass,
so the rows of an ordinary weight cost nothing more). So the scheme is
idempotent: the quantized values requantize to the same codes, ``lo`` and ``hi``, bit for
bit, an artifact (``encode_rows``) of its decoded values is the same bytes, and an artifact
of a model trained with ``fake_quantize`` (baked, ``lm.compression.qat.bake``) stores
exactly its weights.

At 2 to 4 bits the range of the extremes wastes levels on a few outliers: each row's
range is ``[lo0 + (1 - c) (mean - lo0), hi0 - (1 - c) (hi0 - mean)]`` (its extremes
``lo0``, ``hi0`` pulled towards its mean) for the ``c`` of ``CLIP`` with the least squared
error in that row (the extremes, c = 1, on ties). Values outside are clipped to the end
levels.

``pack_codes`` / ``unpack_codes`` store codes of ``bits`` bits densely, least
significant bit first, in a uint8 tensor of ``ceil(n * bits / 8)`` bytes.
"""

from __future__ import annotations

import torch
from torch import Tensor

BITS = (1, 2, 3, 4, 5, 6, 7, 8)
CLIP = (1.0, 0.85, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
_NON_FINITE = "t has non-finite values (NaN or inf), which no row range holds"


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"bits must be an int in 1..8, got {bits!r}")
    return bits


def _rows(t: Tensor, axis: int) -> Tensor:
    if not t.is_floating_point():
        raise ValueError(f"can only quantize floating-point tensors, got {t.dtype}")
    if t.dim() == 0 or t.numel() == 0:
        raise ValueError(f"cannot quantize a tensor of shape {tuple(t.shape)} by rows")
    if not -t.dim() <= axis < t.dim():
        raise ValueError(f"axis must index a dimension of a {t.dim()}-D tensor, got {axis}")
    return t.detach().float().movedim(axis, 0).reshape(t.shape[axis], -1)


def _grid(x: Tensor, lo: Tensor, hi: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """Codes (rows, n) of ``x`` on the per-row grids [lo, hi] and their values; codes 0 in a row
    whose ``lo == hi`` (all its levels are ``lo``, which is what its values quantize to again)."""
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    codes = torch.round((x - lo[:, None]) / safe[:, None] * (levels - 1)).clamp_(0, levels - 1)
    codes.masked_fill_((span == 0)[:, None], 0)
    return codes, torch.lerp(lo[:, None], hi[:, None], codes / (levels - 1))


def _extremes(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's min, max, and mean (clamped into [min, max] despite rounding) of rows (rows, n)."""
    lo0, hi0 = x.min(dim=1).values, x.max(dim=1).values
    return lo0, hi0, torch.minimum(torch.maximum(x.mean(dim=1), lo0), hi0)


def _clipped(lo0: Tensor, hi0: Tensor, mean: Tensor, shrink: Tensor | float) -> tuple[Tensor, Tensor]:
    """The range pulled ``shrink = 1 - c`` of the way from the extremes towards the mean, rounded to
    float16 (the stored scales: the grid is the one decoded); exactly the extremes at c = 1. An end
    at -0 (a tiny negative number rounded) is 0, the value ``torch.lerp`` gives it back as."""
    lo, hi = lo0 + shrink * (mean - lo0), hi0 - shrink * (hi0 - mean)
    return lo.half().float() + 0.0, hi.half().float() + 0.0


def _clip_ratios(x: Tensor, levels: int) -> Tensor:
    """``clip_ratios`` of rows (rows, n) at ``levels`` levels."""
    lo0, hi0, mean = _extremes(x)
    best, errors = None, None
    for i, clip in enumerate(CLIP):  # each range scored on the affine grid lo + k step, a few passes over x
        lo, hi = _clipped(lo0, hi0, mean, 1 - clip)
        step = (hi - lo) / (levels - 1)
        inv = torch.where(step > 0, 1 / step, torch.zeros_like(step))[:, None]
        k = torch.addcmul(-lo[:, None] * inv, x, inv).round_().clamp_(0, levels - 1)
        err = torch.linalg.vector_norm(torch.addcmul(lo[:, None], k, step[:, None]).sub_(x), dim=1)
        if best is None:
            best, errors = torch.zeros_like(err, dtype=torch.int64), err
        else:
            better = err < errors
            best, errors = torch.where(better, i, best), torch.where(better, err, errors)
    return best


def clip_ratios(t: Tensor, bits: int, axis: int = 0) -> Tensor:
    """Each row's ``c`` of ``CLIP`` with the least squared error at ``2**bits`` levels (the first on
    ties, the extremes): the search of the module docstring, as indices into ``CLIP``, int64 (rows,)."""
    return _clip_ratios(_rows(t, axis), 2 ** _check_bits(bits))


def _ranges(x: Tensor, levels: int, clip: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``row_ranges`` of rows (rows, n) at ``levels`` levels."""
    if clip is None:
        clip = _clip_ratios(x, levels)
    shrink = torch.tensor([1 - c for c in CLIP], dtype=torch.float32, device=x.device)[clip]
    lo, hi = _clipped(*_extremes(x), shrink)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        if not torch.isfinite(x).all():
            raise ValueError(_NON_FINITE)
        raise ValueError(f"t has values beyond float16's range ({torch.finfo(torch.float16).max}), "
                         "in which the row ranges are stored")
    return lo, hi


def row_ranges(t: Tensor, bits: int, axis: int = 0, clip: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each row's range ``[lo, hi]`` for ``2**bits`` levels, at its clipping ratio (``clip``: indices
    into ``CLIP``, (rows,); default: searched by ``clip_ratios``) from the row's current extremes and mean.

    Parameters
    ----------
    t : floating-point tensor, at least 1-D
    bits : 1..8
    axis : the dimension whose indices are the rows
    clip : int64 (rows,), each row's index into ``CLIP``; None searches them

    Returns
    -------
    lo, hi : float32 (rows,), ``rows = t.shape[axis]``, each a float16 number
    """
    levels = 2 ** _check_bits(bits)
    x = _rows(t, axis)
    if clip is not None and clip.shape != (x.shape[0],):
        raise ValueError(f"clip must have shape ({x.shape[0]},) (rows along axis {axis}), got {tuple(clip.shape)}")
    return _ranges(x, levels, clip)


def _settled(x: Tensor, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Codes (rows, n), ``lo`` and ``hi`` (rows,) of rows ``x`` on their searched grids, settled (the
    module docstring): each row's values quantize to themselves."""
    lo, hi = _ranges(x, levels)
    codes, values = _grid(x, lo, hi, levels)
    # a row that uses both end levels, or a constant one, has its range as its values' extremes, which
    # the search gives back (c = 1, the values on its grid); the others are requantized until they stay
    todo = torch.nonzero((lo < hi) & ((codes.amin(dim=1) > 0) | (codes.amax(dim=1) < levels - 1))).flatten()
    while todo.numel():
        before = values[todo]
        lo[todo], hi[todo] = _ranges(before, levels)
        codes[todo], values[todo] = _grid(before, lo[todo], hi[todo], levels)
        todo = todo[(values[todo] != before).any(dim=1)]
    return codes, lo, hi


def quantize_rows(t: Tensor, bits: int, axis: int = 0,
                  ranges: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Codes, ``lo`` and ``hi`` of ``t`` with ``2**bits`` levels per row along ``axis``.

    With the ranges searched (``ranges=None``), the rows are settled (the module docstring):
    ``quantize_rows(dequantize_rows(codes, lo, hi, bits, axis), bits, axis)`` gives back the same
    codes, ``lo`` and ``hi``, bit for bit.

    Parameters
    ----------
    t : floating-point tensor, at least 1-D
    bits : 1..8
    axis : the dimension whose indices are the rows
    ranges : ``(lo, hi)``, each (rows,), to use instead of searching them (``row_ranges``)

    Returns
    -------
    codes : uint8 tensor of ``t``'s shape, each in ``[0, 2**bits)`` (0 in a row whose ``lo == hi``)
    lo, hi : float32 (rows,), ``rows = t.shape[axis]``: each row's first and last level, each
        a float16 number (when searched)
    """
    levels = 2 ** _check_bits(bits)
    x = _rows(t, axis)
    if ranges is None:
        codes, lo, hi = _settled(x, levels)
    else:
        lo, hi = ranges
        if lo.shape != (x.shape[0],) or hi.shape != lo.shape:
            raise ValueError(f"ranges must be two tensors of shape ({x.shape[0]},) (rows along axis {axis}), "
                             f"got {tuple(lo.shape)} and {tuple(hi.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(_NON_FINITE)
        codes, _ = _grid(x, lo.float(), hi.float(), levels)
    shape = (t.shape[axis],) + tuple(s for d, s in enumerate(t.shape) if d != axis % t.dim())
    return codes.to(torch.uint8).reshape(shape).movedim(0, axis), lo, hi


def dequantize_rows(codes: Tensor, lo: Tensor, hi: Tensor, bits: int, axis: int = 0) -> Tensor:
    """float32 values ``lerp(lo, hi, codes / (2**bits - 1))``, ``lo`` and ``hi`` per row along ``axis``."""
    levels = 2 ** _check_bits(bits)
    if lo.shape != (codes.shape[axis],) or hi.shape != lo.shape:
        raise ValueError(f"lo and hi must have shape ({codes.shape[axis]},) (rows along axis {axis}), "
                         f"got {tuple(lo.shape)} and {tuple(hi.shape)}")
    shape = [1] * codes.dim()
    shape[axis] = -1
    return torch.lerp(lo.float().view(shape), hi.float().view(shape), codes.float() / (levels - 1))


def fake_quantize(t: Tensor, bits: int, axis: int = 0, ranges: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``t`` on its per-row ``bits``-bit grid, with a straight-through gradient.

    Forward: ``dequantize_rows(*quantize_rows(t, bits, axis, ranges))`` (cast to ``t``'s dtype):
    on the rows' searched ranges, or on ``ranges`` = ``(lo, hi)`` (rows,) when given.
    Backward: the incoming gradient where ``t`` lies in its row's range ``[lo, hi]``,
    zero where it was clipped (the clipped straight-through estimator); the range
    itself is treated as a constant.
    """
    codes, lo, hi = quantize_rows(t, bits, axis, ranges)
    values = dequantize_rows(codes, lo, hi, bits, axis).to(t.dtype)
    shape = [1] * t.dim()
    shape[axis] = -1
    inside = (t.detach() >= lo.view(shape).to(t.dtype)) & (t.detach() <= hi.view(shape).to(t.dtype))
    return values + (t - t.detach()) * inside


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Codes (any shape, integers in ``[0, 2**bits)``) packed in C order into uint8 (ceil(n * bits / 8),)."""
    _check_bits(bits)
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2 ** bits}) for bits={bits}, "
                         f"got values in [{int(flat.min())}, {int(flat.max())}]")
    stream = ((flat[:, None] >> torch.arange(bits)) & 1).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, -stream.numel() % 8))
    return (stream.view(-1, 8) << torch.arange(8)).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: Tensor, bits: int, count: int) -> Tensor:
    """The first ``count`` codes held by ``pack_codes``' output: uint8 (count,)."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed must be a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if not 0 <= count * bits <= 8 * packed.numel():
        raise ValueError(f"{packed.numel()} bytes hold at most {8 * packed.numel() // bits} codes of {bits} bits, "
                         f"asked for {count}")
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(8)) & 1).reshape(-1)[: count * bits]
    return (stream.view(count, bits) << torch.arange(bits)).sum(dim=1).to(torch.uint8)


def encode_rows(t: Tensor, bits: int, axis: int = 0) -> tuple[Tensor, Tensor]:
    """What an artifact stores of ``t`` at ``bits`` bits per row along ``axis``: its settled codes and
    ranges (``quantize_rows``), so the values ``decode_rows`` gives back encode to the same tensors.

    Returns the packed codes, uint8 (``packed_bytes(t.numel(), bits)``,) in the C order of
    ``t``, and the scales, float16 (2, rows): each row's ``lo`` and ``hi``.
    """
    codes, lo, hi = quantize_rows(t, bits, axis)
    return pack_codes(codes, bits), torch.stack([lo, hi]).half()


def decode_rows(packed: Tensor, scale: Tensor, bits: int, shape: tuple[int, ...], axis: int = 0) -> Tensor:
    """float32 tensor of ``shape`` from ``encode_rows``' packed codes and (2, rows) float16 scales."""
    count = 1
    for n in shape:
        count *= n
    codes = unpack_codes(packed, bits, count).view(shape)
    return dequantize_rows(codes, scale[0], scale[1], bits, axis)


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` packed codes of ``bits`` bits."""
    return -(-count * _check_bits(bits) // 8)


__all__ = ["clip_ratios", "row_ranges", "quantize_rows", "dequantize_rows", "fake_quantize", "pack_codes", "unpack_codes", "packed_bytes",
           "encode_rows", "decode_rows"]
