"""TT rounding (Oseledets, 2011, Algorithm 2): recompress a ``TTTensor`` or ``TTMatrix`` to lower
ranks without forming the full tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensorly import tt_matrix, tt_tensor

from ._backend import TTMatrix, TTTensor, as_torch, build
from ._precision import core_exponent, from_work, rel_eps_budget, roundoff, times_power_of_two
from ._validation import check_finite, check_rank, check_rel_eps
from .truncated_svd import truncated_split
from .tt_orthogonalize import orthogonalize


def tt_round(tt: tt_tensor.TTTensor | tt_matrix.TTMatrix, max_rank: int | Sequence[int] | None = None,
             rel_eps: float | None = None) -> TTTensor | TTMatrix:
    """Recompress ``tt``: right-to-left QR orthogonalisation, then left-to-right truncated SVDs of
    the bond matrices, which are then the unfoldings' own singular values.

    Same truncation semantics as :func:`ttlayers.tt_svd`, relative to the input: ``rel_eps`` gives
    ``||tt - result||_F <= rel_eps * ||tt||_F``, ``max_rank`` caps every bond (the cap wins), and
    neither drops only numerically zero directions. Ranks never increase; rounding twice with
    ``max_rank`` (or neither) gives the same ranks and tensor as rounding once. Cores of a
    ``TTMatrix`` (``(r, m_k, n_k, r')``) are rounded as ``(r, m_k * n_k, r')`` cores. Computed in
    float64 with every core scaled by a power of two, so a TT whose full tensor would overflow
    (or underflow) its dtype is rounded as well as any other.

    Returns the same kind (``TTTensor`` or ``TTMatrix``), cores with the input cores' array type,
    device and dtype.
    """
    if not isinstance(tt, (tt_tensor.TTTensor, tt_matrix.TTMatrix)):
        raise ValueError(f"tt must be a tensorly TTTensor or TTMatrix, got {type(tt).__name__}")
    cores, backends = zip(*(as_torch(core, f"core {k}") for k, core in enumerate(tt.factors)))
    if len(set(backends)) > 1 or len({(c.dtype, c.device) for c in cores}) > 1:
        raise ValueError("the cores of tt must all be torch tensors or all numpy arrays, of one dtype and device")
    for k, core in enumerate(cores):
        check_finite(core, f"core {k}")
    ranks = check_rank(max_rank, len(cores) - 1)
    rel_eps = check_rel_eps(rel_eps)
    with torch.no_grad():
        flat = round_cores([c.reshape(c.shape[0], -1, c.shape[-1]) for c in cores], ranks, rel_eps)
    matrix = isinstance(tt, tt_matrix.TTMatrix)
    if matrix:
        flat = [f.reshape(f.shape[0], *c.shape[1:3], f.shape[-1]) for f, c in zip(flat, cores)]
    return build(TTMatrix if matrix else TTTensor, flat, backends[0])


def round_cores(cores: list[torch.Tensor], ranks: list[int] | None, rel_eps: float | None) -> list[torch.Tensor]:
    """Round 3-way cores ``(r_{k-1}, n_k, r_k)``; ``ranks``: per-bond caps or None. Cores in the input dtype."""
    dtype, d = cores[0].dtype, len(cores)
    exponents = [core_exponent(c) for c in cores]
    work = orthogonalize([times_power_of_two(c.to(torch.float64), -e) for c, e in zip(cores, exponents)])
    sq_norm = float(work[0].square().sum())  # the other cores are orthonormal
    rel_budget = rel_eps_budget(rel_eps, dtype, d) * sq_norm
    for k in range(d - 1):  # left-to-right truncation
        r, n, _ = work[k].shape
        unfolding = work[k].reshape(r * n, -1)
        floor = roundoff(dtype, max(unfolding.shape)) ** 2 * sq_norm
        cap = min(unfolding.shape) if ranks is None else ranks[k]
        left, right, _ = truncated_split(unfolding, cap, max(rel_budget, floor), floor)
        work[k] = left.reshape(r, n, -1)
        work[k + 1] = torch.tensordot(right, work[k + 1], dims=1)
    return from_work(orthogonalize(work, redundant_only=True), sum(exponents), dtype, holder=d - 1)
