"""TT-SVD (Oseledets, 2011): a full tensor to a tensorly ``TTTensor`` by sequential truncated SVDs
of its unfoldings, with a rank cap, a relative error bound, or both."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorly as tl
import torch
from tensorly.tt_tensor import TTTensor

from ._validation import check_finite, check_rank, check_rel_eps
from .truncated_svd import truncated_split


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
        rank-``r_k`` projection at every bond.
    rel_eps : float, optional
        Relative error bound: every unfolding is truncated at
        ``delta = rel_eps / sqrt(d - 1) * ||tensor||_F`` so that
        ``||tensor - tt||_F <= rel_eps * ||tensor||_F``. With ``max_rank`` too, the cap wins.
        With neither, the decomposition is exact (up to rounding) and each rank is the numerical
        rank of the corresponding unfolding.

    Returns
    -------
    tensorly.tt_tensor.TTTensor whose cores have the input's array type, device and dtype.
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
    """TT-SVD on a validated torch tensor; ``ranks``: per-bond caps or None."""
    shape = array.shape
    n_bonds = len(shape) - 1
    max_sq_err = None
    if rel_eps is not None and n_bonds:
        max_sq_err = rel_eps ** 2 / n_bonds * float(torch.linalg.vector_norm(array, dtype=torch.float64)) ** 2
    cores, rank, rest = [], 1, array
    for k in range(n_bonds):
        left, rest, _ = truncated_split(rest.reshape(rank * shape[k], -1), None if ranks is None else ranks[k], max_sq_err)
        cores.append(left.reshape(rank, shape[k], left.shape[1]))
        rank = left.shape[1]
    cores.append(rest.reshape(rank, shape[-1], 1))
    return trim_ranks(cores)


def trim_ranks(cores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Exactly remove the redundancy a left-to-right truncation can leave: where a later bond
    was cut, ``r_{k-1} > n_k r_k`` can hold, and a QR of core ``k`` (from the right) brings
    ``r_{k-1}`` down to ``n_k r_k``."""
    cores = list(cores)
    for k in range(len(cores) - 1, 0, -1):
        r, n, r_next = cores[k].shape
        if r > n * r_next:
            q, triangle = torch.linalg.qr(cores[k].reshape(r, n * r_next).T)
            cores[k] = q.T.reshape(-1, n, r_next)
            cores[k - 1] = torch.tensordot(cores[k - 1], triangle.T, dims=1)
    return cores


def as_torch(array) -> tuple[torch.Tensor, str]:
    """``array`` (torch tensor or numpy array, float32/float64) as a detached torch tensor (numpy
    memory is shared), and the name of the matching tensorly backend."""
    if torch.is_tensor(array):
        backend, out = "pytorch", array.detach()
    elif isinstance(array, np.ndarray):
        backend = "numpy"
        out = torch.from_numpy(np.ascontiguousarray(array)) if array.dtype in (np.float32, np.float64) else None
    else:
        raise ValueError(f"expected a torch.Tensor or a numpy.ndarray, got {type(array).__name__}")
    if out is None or out.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"expected a float32 or float64 array, got dtype {array.dtype}")
    return out, backend


def from_torch(tensor: torch.Tensor, backend: str):
    """Back to the array type of ``backend``."""
    return tensor.cpu().numpy() if backend == "numpy" else tensor


def build(cls, factors: list[torch.Tensor], backend: str):
    """``cls(factors)`` (a tensorly factorized tensor) under ``backend``, with factors converted
    to its array type; the global tensorly backend is left as it was."""
    factors = [from_torch(f, backend) for f in factors]
    if tl.get_backend() == backend:
        return cls(factors)
    with tl.backend_context(backend, local_threadsafe=True):
        return cls(factors)
