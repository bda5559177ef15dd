"""Shapes, ranks and init scale of the TT-matrix held by a TT layer, and the checks of layer arguments.

A (rows x cols) matrix is tensorised as ``row_shape x col_shape`` with ``d`` modes each;
when a size factors badly, ``factorize`` returns a slightly larger padded size.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from ._validation import check_rank
from .factorize import factorize

DEFAULT_N_CORES = 3


def check_features(value, name: str) -> int:
    """A positive int feature count (any ``numbers.Integral``, numpy's too, as a Python int)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_float_input(input, dtype, layer: str) -> None:
    """Raise a ``TypeError`` unless ``input`` is a tensor of the layer's floating ``dtype``, or, under
    ``torch.autocast`` for its device, of any floating dtype (autocast casts it, as for ``nn.Linear``)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor input, got {type(input).__name__}")
    if input.dtype != dtype and not (input.is_floating_point() and torch.is_autocast_enabled(input.device.type)):
        raise TypeError(f"{layer} holds {dtype} parameters and expects input of that dtype, got {input.dtype} "
                        f"(convert the input with .to({dtype}), or the layer with .to(dtype))")


def mode_shapes(rows: int, cols: int, row_shape: Sequence[int] | None, col_shape: Sequence[int] | None,
                row_name: str, col_name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(row_shape, col_shape)``: given ones are checked (their product must hold the size; a larger
    product pads), missing ones come from ``factorize`` with as many modes as the other (3 by default)."""
    given = row_shape if row_shape is not None else col_shape
    d = len(given) if given is not None else DEFAULT_N_CORES
    out = []
    for size, shape, name in ((rows, row_shape, row_name), (cols, col_shape, col_name)):
        if shape is None:
            out.append(factorize(size, d))
            continue
        shape = tuple(shape)
        if not shape or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {shape}")
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) < size:
            raise ValueError(f"{name} {shape} holds {math.prod(shape)} entries, fewer than the {size} it must hold")
        out.append(shape)
    if len(out[0]) != len(out[1]):
        raise ValueError(f"{row_name} {out[0]} and {col_name} {out[1]} must have the same number of modes")
    return out[0], out[1]


def capped_ranks(rank, row_shape: Sequence[int], col_shape: Sequence[int]) -> tuple[int, ...]:
    """``(1, r_1, ..., r_{d-1}, 1)`` from an int or per-bond ranks, each capped at the largest useful
    rank ``min(prod of the mode sizes left of the bond, prod right of it)``."""
    d = len(row_shape)
    bonds = check_rank(rank, d - 1, "rank")
    if bonds is None:
        raise ValueError("rank must be an int or a list of ints, got None")
    modes = [m * n for m, n in zip(row_shape, col_shape)]
    caps = [min(math.prod(modes[: k + 1]), math.prod(modes[k + 1:])) for k in range(d - 1)]
    return (1, *(min(r, c) for r, c in zip(bonds, caps)), 1)


def core_std(variance: float, ranks: Sequence[int]) -> float:
    """Std of i.i.d. zero-mean core entries giving the full matrix entries ``variance``.

    An entry of the matrix is a sum of ``prod(ranks)`` uncorrelated products of ``d`` core
    entries, so its variance is ``prod(ranks) * std**(2d)``; solve for ``std``.
    """
    d = len(ranks) - 1
    return (variance / math.prod(ranks)) ** (1.0 / (2 * d))


def tt_size(row_shape: Sequence[int], col_shape: Sequence[int], ranks: Sequence[int]) -> int:
    """Number of entries of the cores."""
    return sum(ranks[k] * row_shape[k] * col_shape[k] * ranks[k + 1] for k in range(len(row_shape)))


def cores_key(cores) -> tuple:
    """Changes whenever any core is replaced, moved, cast or modified in place (storage and
    version counter): the key of caches built from the cores."""
    return tuple((c.data_ptr(), c._version, c.dtype, c.device) for c in cores)
