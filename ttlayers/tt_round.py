"""TT rounding (Oseledets, 2011, Algorithm 2): recompress a ``TTTensor`` or ``TTMatrix`` to lower
ranks without forming the full tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensorly.tt_matrix import TTMatrix
from tensorly.tt_tensor import TTTensor

from ._validation import check_finite, check_rank, check_rel_eps
from .truncated_svd import truncated_split
from .tt_svd import as_torch, build, trim_ranks


def tt_round(tt: TTTensor | TTMatrix, max_rank: int | Sequence[int] | None = None,
             rel_eps: float | None = None) -> TTTensor | TTMatrix:
    """Recompress ``tt``: right-to-left QR orthogonalisation, then left-to-right truncated SVDs of
    the bond matrices, which are then the unfoldings' own singular values.

    Same truncation semantics as :func:`ttlayers.tt_svd`, relative to the input: ``rel_eps`` gives
    ``||tt - result||_F <= rel_eps * ||tt||_F``, ``max_rank`` caps every bond (the cap wins), and
    neither drops only numerically zero singular values. Ranks never increase; rounding twice with
    ``max_rank`` (or neither) gives the same ranks and tensor as rounding once. Cores of a
    ``TTMatrix`` (``(r, m_k, n_k, r')``) are rounded as ``(r, m_k * n_k, r')`` cores.

    Returns the same class as ``tt``, cores with the input cores' array type, device and dtype.
    """
    if not isinstance(tt, (TTTensor, TTMatrix)):
        raise ValueError(f"tt must be a tensorly TTTensor or TTMatrix, got {type(tt).__name__}")
    cores, backend = zip(*(as_torch(core) for core in tt.factors))
    for k, core in enumerate(cores):
        check_finite(core, f"core {k}")
    ranks = check_rank(max_rank, len(cores) - 1)
    rel_eps = check_rel_eps(rel_eps)
    with torch.no_grad():
        flat = round_cores([c.reshape(c.shape[0], -1, c.shape[-1]) for c in cores], ranks, rel_eps)
    if isinstance(tt, TTMatrix):
        flat = [f.reshape(f.shape[0], *c.shape[1:3], f.shape[-1]) for f, c in zip(flat, cores)]
    return build(type(tt), flat, backend[0])


def round_cores(cores: list[torch.Tensor], ranks: list[int] | None, rel_eps: float | None) -> list[torch.Tensor]:
    """Round 3-way cores ``(r_{k-1}, n_k, r_k)``; ``ranks``: per-bond caps or None."""
    cores = list(cores)
    d = len(cores)
    for k in range(d - 1, 0, -1):  # right-to-left: cores 1..d-1 get orthonormal rows
        r, n, r_next = cores[k].shape
        q, triangle = torch.linalg.qr(cores[k].reshape(r, n * r_next).T)
        cores[k] = q.T.reshape(-1, n, r_next)
        cores[k - 1] = torch.tensordot(cores[k - 1], triangle.T, dims=1)
    max_sq_err = None
    if rel_eps is not None and d > 1:
        max_sq_err = rel_eps ** 2 / (d - 1) * float(torch.linalg.vector_norm(cores[0], dtype=torch.float64)) ** 2
    for k in range(d - 1):  # left-to-right truncation
        r, n, _ = cores[k].shape
        left, right, _ = truncated_split(cores[k].reshape(r * n, -1), None if ranks is None else ranks[k], max_sq_err)
        cores[k] = left.reshape(r, n, -1)
        cores[k + 1] = torch.tensordot(right, cores[k + 1], dims=1)
    return trim_ranks(cores)
