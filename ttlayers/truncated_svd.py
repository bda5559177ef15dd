"""One truncation step of TT-SVD and TT rounding: ``matrix (m, n) ~= left (m, r) @ right (r, n)``
with orthonormal columns in ``left`` and ``right = left.T @ matrix``, i.e. the orthogonal
projection of ``matrix`` on its top-``r`` left singular subspace (the best rank-``r``
approximation, Eckart-Young), so ``||matrix - left @ right||_F^2`` is the discarded energy
``sum_{i > r} sigma_i^2``.

Two ways to get the subspace:

* **Gram** (fast, used whenever truncation is requested): the eigendecomposition of the smaller
  Gram matrix ``M M^T`` or ``M^T M`` (``k x k``, ``k = min(m, n)``): one matrix product and one
  symmetric eigensolve instead of a full SVD. Products are in float64; the eigensolve is in the
  input's dtype, except that an error budget too small for its noise (about
  ``k (4 eps + (m + n) eps64) ||M||_F^2`` of eigenvalue-tail error, and at least ``GUARD`` times
  below the budget) moves it to float64, and one too small for that to the SVD. The energy actually
  discarded is checked afterwards, in float64, against the budget; if the check fails, the next
  way is tried.
* **SVD** (``torch.linalg.svd``), used for exact decompositions: its singular values resolve the
  numerical rank (see :func:`zero_level`).
"""

from __future__ import annotations

import torch

GUARD = 100.0  # an error budget must exceed GUARD times the Gram noise level to use the Gram path
EPS64 = torch.finfo(torch.float64).eps


def truncated_split(matrix: torch.Tensor, max_rank: int | None = None,
                    max_sq_err: float | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Split ``matrix`` (m, n) into ``left`` (m, r) with orthonormal columns and ``right`` (r, n).

    * neither bound: exact, ``r`` = numerical rank of ``matrix`` (see :func:`zero_level`);
    * ``max_rank`` only: ``r = min(max_rank, m, n)``, less any direction whose part of ``matrix``
      is numerically zero;
    * ``max_sq_err``: the smallest ``r`` with ``||matrix - left @ right||_F^2 <= max_sq_err``,
      then capped at ``max_rank``.

    Always ``r >= 1``. Returns ``(left, right, discarded)`` where ``discarded`` estimates the
    squared Frobenius error.
    """
    m, n = matrix.shape
    cap = min(m, n) if max_rank is None else min(max_rank, m, n)
    if max_rank is None and max_sq_err is None:
        return _svd_split(matrix, cap, None)
    split = _gram_split(matrix, cap, max_sq_err)
    return split if split is not None else _svd_split(matrix, cap, max_sq_err)


def zero_level(matrix: torch.Tensor, sigma_1) -> float:
    """Singular values up to ``4 (m + n) eps sigma_1`` count as zero: a little above the rounding
    noise of the SVD itself and of the bonds before it (measured up to ``1.7 (m + n) eps sigma_1``
    on exact low-rank float64 tensors)."""
    return 4 * sum(matrix.shape) * torch.finfo(matrix.dtype).eps * float(sigma_1)


def _svd_split(matrix, cap, max_sq_err):
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    energy = s.double() ** 2
    tails = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])  # tails[r]: discarded at rank r
    rank = min(cap, int((s > zero_level(matrix, s[0])).sum()))
    if max_sq_err is not None:
        rank = min(rank, int((tails > max_sq_err).sum()))
    rank = max(rank, 1)
    return u[:, :rank], s[:rank, None] * vh[:rank], float(tails[rank])


def _gram_split(matrix, cap, max_sq_err):
    """The Gram path; ``None`` when it cannot guarantee ``max_sq_err``."""
    m, n = matrix.shape
    k = min(m, n)
    work = matrix.to(torch.float64)
    wide = m <= n
    gram = work @ work.T if wide else work.T @ work
    sq_norm = float(gram.diagonal().sum())
    if max_sq_err is None:
        return _project(matrix, work, wide, gram.to(matrix.dtype), sq_norm, cap, None)
    for eig_dtype in dict.fromkeys([matrix.dtype, torch.float64]):  # the cheaper eigensolve first
        noise = k * sq_norm * (4 * torch.finfo(eig_dtype).eps + (m + n) * EPS64)
        if max_sq_err >= GUARD * noise:
            split = _project(matrix, work, wide, gram.to(eig_dtype), sq_norm, cap, max_sq_err - noise)
            if split[2] <= max_sq_err + (m + n) * EPS64 * sq_norm:  # checked in float64
                return split
    return None


def _project(matrix, work, wide, gram, sq_norm, cap, threshold):
    """Top eigenvectors of ``gram`` -> ``(left, right, discarded)``, products in float64 (``work``).
    The rank is ``cap``, or the smallest whose eigenvalue tail is at most ``threshold``."""
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.double().flip(0).clamp_min(0), evecs.flip(1).double()
    rank = cap
    if threshold is not None:
        tails = sq_norm - torch.cat([evals.new_zeros(1), evals.cumsum(0)])  # tails[r]: discarded at rank r
        rank = min(cap, max(1, int((tails > threshold).sum())))
    basis = evecs[:, :rank]
    if wide:
        left, right = basis, basis.T @ work
        row_norms = right.norm(dim=1)
    else:
        left, triangle = torch.linalg.qr(work @ basis)
        right, row_norms = triangle @ basis.T, triangle.norm(dim=1)
    if threshold is None:
        keep = row_norms > zero_level(matrix, evals[0].sqrt())
        if not bool(keep.all()):
            keep[0] = True  # at least one
            left, right = left[:, keep], right[keep]
    discarded = max(sq_norm - float(right.square().sum()), 0.0)
    return left.to(matrix.dtype), right.to(matrix.dtype), discarded
