"""TT-SVD (Oseledets, 2011): a full tensor to a tensorly ``TTTensor`` by sequential truncated SVDs
of its unfoldings, with a rank cap, a relative error bound, or both."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._backend import TTTensor, as_torch, build
from ._precision import from_work, rel_eps_budget, roundoff, to_work
from ._validation import check_finite, check_rank, check_rel_eps
from .truncated_svd import truncated_split
from .tt_orthogonalize import orthogonalize


def tt_svd(tensor, max_rank: int | Sequence[int] | None = None, rel_eps: float | None = None) -> TTTensor:
    """Tensor-Train decomposition of ``tensor`` (shape ``(n_1, ..., n_d)``) into cores of shapes
    ``(r_{k-1}, n_k, r_k)``, ``r_0 = r_d = 1``.

    Parameters
    ----------
    tensor : torch.Tensor (CPU or CUDA) or numpy.ndarray, float32 or float64
    max_rank : int or list of ints, optional
        Cap on the TT ranks: one int for every bond, or ``d - 1`` per-bond ints (or ``d + 1`` with
        the boundary ranks 1, tensorly's convention). Alone, it gives ranks
        ``min(max_rank, unfolding sizes)`` (less numerically zero directions) and the best
        rank-``r_k`` projection at every bond (to round-off).
    rel_eps : float in [0, 1), optional
        Relative error bound: ``||tensor - tt||_F <= rel_eps * ||tensor||_F``, for the cores
        returned (every unfolding discards at most ``rel_eps^2 / (d - 1)`` of the energy, less the
        round-off of storing the cores). With ``max_rank`` too, the cap wins. A ``rel_eps`` below
        the dtype's round-off gives the exact decomposition.
        With neither, the decomposition is exact to round-off (see ``docs/decompositions.md``)
        and each rank is the numerical rank of the corresponding unfolding. Float32 input is
        decomposed in float64 and the cores are returned in float32; any scale (``1e-300 * A``
        as ``A``) gives the same ranks and relative error.

    Returns
    -------
    TTTensor (tensorly's, whose ``to_tensor()`` runs under the backend of its cores) whose cores
    have the input's array type, device and dtype.
    """
    array, backend = as_torch(tensor)
    if array.ndim < 1 or 0 in array.shape:
        raise ValueError(f"tensor must have at least one dimension and no empty one, got shape {tuple(array.shape)}")
    check_finite(array)
    ranks = check_rank(max_rank, array.ndim - 1)
    rel_eps = check_rel_eps(rel_eps)
    with torch.no_grad():
        cores = tt_svd_cores(array, ranks, rel_eps)
    return build(TTTensor, cores, backend)


def tt_svd_cores(array: torch.Tensor, ranks: list[int] | None, rel_eps: float | None) -> list[torch.Tensor]:
    """TT-SVD on a validated torch tensor; ``ranks``: per-bond caps or None. Cores in ``array``'s dtype."""
    work, exponent = to_work(array)
    shape = work.shape
    d = len(shape)
    sq_norm = float(work.square().sum())
    rel_budget = rel_eps_budget(rel_eps, array.dtype, d) * sq_norm
    cores, rank, rest = [], 1, work
    for k in range(d - 1):
        unfolding = rest.reshape(rank * shape[k], -1)
        floor = roundoff(array.dtype, max(unfolding.shape)) ** 2 * sq_norm
        cap = min(unfolding.shape) if ranks is None else ranks[k]
        left, rest, _ = truncated_split(unfolding, cap, max(rel_budget, floor), floor)
        cores.append(left.reshape(rank, shape[k], left.shape[1]))
        rank = left.shape[1]
    cores.append(rest.reshape(rank, shape[-1], 1))
    return from_work(orthogonalize(cores, redundant_only=True), exponent, array.dtype, holder=d - 1)
