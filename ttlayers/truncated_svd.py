"""One truncation step of TT-SVD and TT rounding: ``matrix (m, n) ~= left (m, r) @ right (r, n)``
with orthonormal columns in ``left``: the orthogonal projection of ``matrix`` on its top-``r``
singular subspace (the best rank-``r`` approximation, Eckart-Young), so the squared error is the
discarded energy ``D(r) = sum_{i > r} sigma_i^2``.

The matrix is float64 and scaled to entries below 1 (see :mod:`ttlayers._precision`). The rank is
``min(cap, smallest r with D(r) <= budget)``. Two ways to get the subspace:

* **Gram** (fast): the eigendecomposition of the smaller Gram matrix ``G = M M^T`` or ``M^T M``
  (``k x k``, ``k = min(m, n)``): one product and one symmetric eigensolve. It resolves only
  squared singular values: the computed eigenvectors are exact for ``G + F`` with
  ``||F||_2 <= nu = 2 (m + n) eps64 ||M||_F^2`` (rounding of the product, about ``n eps ||M||_F^2``
  at worst, and the eigensolver's backward error, ``k eps ||G||_2``). By Ky Fan's inequality the
  tail computed from the eigenvalues is then within ``r nu`` of ``D(r)``, and the subspace it
  gives discards at most ``D(r) + 2 r nu``. The Gram path is taken only when these bounds
  *certify* the result: the rank is the one the budget and cap call for (no smaller rank would
  do), and the error is within ``sqrt(floor)`` of the best rank-``r`` error (within budget).
* **SVD** otherwise: a QR of the matrix (long side down to ``k``) then the SVD of the ``k x k``
  triangle, or the SVD of the matrix when it is nearly square. Backward stable: the singular
  values are accurate to about ``sqrt(max(m, n)) eps64 ||M||_F`` (not its square root), so any
  budget down to round-off is met.
"""

from __future__ import annotations

import math

import torch

from ._precision import EPS64

GRAM_NOISE = 2.0  # nu = GRAM_NOISE (m + n) eps64 ||M||_F^2 bounds the Gram path's ||F||_2
QR_FIRST = 2  # the SVD path reduces the long side by QR first when it is QR_FIRST times the short one


def truncated_split(matrix: torch.Tensor, cap: int, budget: float,
                    floor: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Split ``matrix`` (m, n, float64) into ``left`` (m, r) with orthonormal columns and
    ``right = left^T matrix`` (r, n).

    ``r = min(cap, m, n, smallest r >= 1 with D(r) <= budget)``; ``floor <= budget`` is the
    energy that counts as round-off (when the cap binds, the result discards at most
    ``(sqrt(D(cap)) + sqrt(floor))^2``). Returns ``(left, right, discarded)``, ``discarded``
    the squared Frobenius error.
    """
    m, n = matrix.shape
    cap = min(cap, m, n)
    split = _gram_split(matrix, cap, budget, floor)
    return split if split is not None else _svd_split(matrix, cap, budget)


def _rank(tails: torch.Tensor, cap: int, budget: float) -> int:
    """``min(cap, smallest r >= 1 with tails[r] <= budget)``; ``tails[k] = 0`` always fits."""
    fits = (tails[1:] <= budget).nonzero()
    return min(cap, int(fits[0]) + 1 if len(fits) else len(tails) - 1)


def _project(matrix, basis, wide):
    """``(left, right)`` from orthonormal ``basis`` columns: left singular vectors (``wide``), or
    right ones, then ``matrix @ basis = left @ triangle`` (QR) and ``right = triangle @ basis^T``."""
    if wide:
        return basis, basis.T @ matrix
    left, triangle = torch.linalg.qr(matrix @ basis)
    return left, triangle @ basis.T


def _gram_split(matrix, cap, budget, floor):
    """The Gram path, or None when its bounds cannot certify the result."""
    m, n = matrix.shape
    wide = m <= n
    gram = matrix @ matrix.T if wide else matrix.T @ matrix
    sq_norm = float(gram.diagonal().sum())
    if sq_norm == 0.0:
        return None
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0), evecs.flip(1)
    nu = GRAM_NOISE * (m + n) * EPS64 * sq_norm
    tails = (sq_norm - torch.cat([evals.new_zeros(1), evals.cumsum(0)])).cpu()  # D(r) to within r nu
    ranks = torch.arange(len(tails), dtype=torch.float64)
    sure = (tails + 3 * ranks * nu <= budget)[1:].nonzero()  # D(r) + 2 r nu <= budget for sure
    rank = int(sure[0]) + 1 if len(sure) else cap + 1
    if rank <= cap:  # the budget sets the rank: unless rank - 1 might do too
        if rank > 1 and float(tails[rank - 1]) - (rank - 1) * nu <= budget:
            return None
    elif float(tails[cap]) - cap * nu <= budget:  # the cap binds, unless a smaller rank might do
        return None
    rank = min(rank, cap)
    low = max(float(tails[rank]) - rank * nu, 0.0)  # D(rank) >= low
    if 2 * rank * nu > floor + 2 * math.sqrt(floor * low):
        return None  # not certified within round-off of the best rank-r error
    left, right = _project(matrix, evecs[:, :rank], wide)
    return left, right, max(sq_norm - float(right.square().sum()), 0.0)


def _svd_split(matrix, cap, budget):
    m, n = matrix.shape
    wide = m <= n
    qr_first = max(m, n) >= QR_FIRST * min(m, n)
    if qr_first:  # the k x k triangle has the Gram of the short side: Gram = vh^T diag(s^2) vh
        triangle = torch.linalg.qr(matrix.T if wide else matrix, mode="r")[1]
        _, s, vh = torch.linalg.svd(triangle)
    else:
        u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
    energy = s.square().cpu()
    tails = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])  # tails[r] = D(r)
    rank = _rank(tails, cap, budget)
    if qr_first:
        left, right = _project(matrix, vh[:rank].T, wide)
    else:  # right = left^T matrix, not s vh: the projection reconstructs to a few eps, s vh to ~50
        left = u[:, :rank]
        right = left.T @ matrix
    return left, right, float(tails[rank])
