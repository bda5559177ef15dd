"""The QR orthogonalisation sweep of TT cores, right to left, written once: TT rounding runs it
in full, TT-SVD and rounding run it on redundant bonds only to trim their ranks."""

from __future__ import annotations

import torch


def orthogonalize(cores: list[torch.Tensor], redundant_only: bool = False) -> list[torch.Tensor]:
    """Right-to-left sweep over 3-way cores ``(r_{k-1}, n_k, r_k)``: for ``k = d-1, ..., 1``, the QR
    ``core_k^T = Q T`` (``core_k`` unfolded to ``r_{k-1} x n_k r_k``) makes core ``k`` ``Q^T``, with
    orthonormal rows, and moves ``T^T`` into core ``k - 1``. The tensor is unchanged (to rounding).

    With ``redundant_only``, only the cores with ``r_{k-1} > n_k r_k`` are swept (a left-to-right
    truncation can leave them after cutting a later bond): their rank drops exactly to
    ``n_k r_k`` and every other core stays as it was.
    """
    cores = list(cores)
    for k in range(len(cores) - 1, 0, -1):
        r, n, r_next = cores[k].shape
        if redundant_only and r <= n * r_next:
            continue
        q, triangle = torch.linalg.qr(cores[k].reshape(r, n * r_next).T)
        cores[k] = q.T.reshape(-1, n, r_next)
        cores[k - 1] = torch.tensordot(cores[k - 1], triangle.T, dims=1)
    return cores
