"""Shared input checks. Each raises ``ValueError`` with a message that says what is wrong."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def check_finite(array, name: str = "tensor") -> None:
    """Raise if a torch tensor or numpy array holds NaN or infinite values."""
    finite = torch.isfinite(array).all() if torch.is_tensor(array) else np.isfinite(np.asarray(array)).all()
    if not bool(finite):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")


def check_rel_eps(rel_eps: float | None) -> float | None:
    """``None`` or a float in ``[0, 1)``: ``rel_eps >= 1`` would allow the zero tensor as the
    answer, which is never what is meant, so it is refused."""
    if rel_eps is None:
        return None
    if isinstance(rel_eps, bool) or not isinstance(rel_eps, (int, float, np.integer, np.floating)):
        raise ValueError(f"rel_eps must be a number in [0, 1), got {rel_eps!r}")
    rel_eps = float(rel_eps)
    if not 0 <= rel_eps < 1:  # also NaN
        raise ValueError(f"rel_eps must be a number in [0, 1) (the allowed error relative to the norm; "
                         f">= 1 would allow the zero tensor), got {rel_eps}")
    return rel_eps


def check_rank(rank: int | Sequence[int] | None, n_bonds: int, name: str = "max_rank") -> list[int] | None:
    """Per-bond ranks ``[r_1, ..., r_{n_bonds}]`` from an int, a list of ``n_bonds`` ints, or a
    list of ``n_bonds + 2`` ints with boundary ranks 1 (tensorly's convention); ``None`` stays ``None``."""
    if rank is None:
        return None
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        ranks = [int(rank)] * n_bonds
    elif isinstance(rank, Sequence) and all(isinstance(r, (int, np.integer)) and not isinstance(r, bool) for r in rank):
        ranks = [int(r) for r in rank]
        if len(ranks) == n_bonds + 2:
            if ranks[0] != 1 or ranks[-1] != 1:
                raise ValueError(f"{name} with boundary ranks must start and end with 1, got {list(rank)}")
            ranks = ranks[1:-1]
        if len(ranks) != n_bonds:
            raise ValueError(f"{name} must be an int or a list of {n_bonds} ints (or {n_bonds + 2} with "
                             f"boundary 1s), got a list of {len(ranks)}")
    else:
        raise ValueError(f"{name} must be an int or a list of ints, got {rank!r}")
    if any(r < 1 for r in ranks):
        raise ValueError(f"{name} must be >= 1, got {list(rank) if not isinstance(rank, (int, np.integer)) else rank}")
    return ranks


def check_shape(shape: Sequence[int], size: int, name: str = "shape", what: str = "dimension") -> tuple[int, ...]:
    """Positive integer factors whose product is ``size``."""
    shape = tuple(shape)
    if not shape or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {shape}")
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) != size:
        raise ValueError(f"{name} {shape} has product {math.prod(shape)}, but the {what} is {size}")
    return shape
