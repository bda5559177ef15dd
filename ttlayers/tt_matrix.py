"""TT-matrix decomposition: a matrix to a tensorly ``TTMatrix`` through TT-SVD of its tensorisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._backend import TTMatrix, as_torch, build
from ._validation import check_finite, check_rank, check_rel_eps, check_shape
from .tt_svd import tt_svd_cores


def tt_matrix_svd(matrix, row_shape: Sequence[int], col_shape: Sequence[int],
                  max_rank: int | Sequence[int] | None = None, rel_eps: float | None = None) -> TTMatrix:
    """TT-matrix decomposition of ``matrix`` (``prod(row_shape) x prod(col_shape)``) into cores of
    shapes ``(r_{k-1}, row_shape[k], col_shape[k], r_k)``.

    Row index ``i`` is the C-order multi-index ``(i_1, ..., i_d)`` over ``row_shape`` (likewise for
    columns), as in ``TTMatrix.to_matrix()``. The tensor with modes ``row_shape[k] * col_shape[k]``
    is decomposed by :func:`ttlayers.tt_svd`, with the same ``max_rank`` / ``rel_eps`` semantics,
    so ``||matrix - result.to_matrix()||_F <= rel_eps * ||matrix||_F``.

    Parameters
    ----------
    matrix : torch.Tensor or numpy.ndarray of shape ``(prod(row_shape), prod(col_shape))``
    row_shape, col_shape : sequences of ``d`` positive ints (e.g. from :func:`ttlayers.factorize`)
    max_rank, rel_eps : as in :func:`ttlayers.tt_svd`

    Returns
    -------
    TTMatrix (tensorly's, whose ``to_matrix()`` runs under the backend of its cores) whose cores
    have the input's array type, device and dtype.
    """
    array, backend = as_torch(matrix, "matrix")
    if array.ndim != 2:
        raise ValueError(f"matrix must be 2-dimensional, got shape {tuple(array.shape)}")
    row_shape = check_shape(row_shape, array.shape[0], "row_shape", "number of rows")
    col_shape = check_shape(col_shape, array.shape[1], "col_shape", "number of columns")
    if len(row_shape) != len(col_shape):
        raise ValueError(f"row_shape {row_shape} and col_shape {col_shape} must have the same length")
    check_finite(array, "matrix")
    d = len(row_shape)
    ranks = check_rank(max_rank, d - 1)
    rel_eps = check_rel_eps(rel_eps)
    interleave = [axis for k in range(d) for axis in (k, d + k)]
    tensor = array.reshape(*row_shape, *col_shape).permute(*interleave)
    tensor = tensor.reshape([m * n for m, n in zip(row_shape, col_shape)])
    with torch.no_grad():
        cores = tt_svd_cores(tensor, ranks, rel_eps)
    cores = [c.reshape(c.shape[0], m, n, c.shape[-1]) for c, m, n in zip(cores, row_shape, col_shape)]
    return build(TTMatrix, cores, backend)
