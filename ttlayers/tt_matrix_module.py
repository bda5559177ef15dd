"""TTMatrixModule: the TT-matrix parameters shared by ``TTLinear`` and ``TTEmbedding``.

A (n_rows x n_cols) matrix held as d cores ``cores[k]`` of shape
(r_{k-1}, row_shape[k], col_shape[k], r_k), r_0 = r_d = 1 (tensorly's ``TTMatrix`` layout):

    M[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ... G_d[:, i_d, j_d, :],

padded to ``prod(row_shape) x prod(col_shape)`` when a size factors badly (the padding is
sliced off). This base class owns the cores, the ranks, their initialisation, their
decomposition from a dense matrix and a cache of one tensor derived from them; the layers
differ only in how they use the cores (as ``torch.nn``'s ``_ConvNd`` holds what the
convolutions share). The cores stay the attribute ``cores``, so state-dict keys are
``cores.0``, ``cores.1``, ...
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._tt_layout import capped_ranks, check_features, core_std, cores_key, mode_shapes, tt_size
from ._validation import check_rank
from .tt_contract import tt_matrix_to_dense
from .tt_matrix import tt_matrix_svd


class TTMatrixModule(nn.Module):
    """Base of the layers whose parameter is a TT-matrix (see the module docstring).

    Args:
        n_rows, n_cols: size of the matrix.
        rank: TT rank, one int for every bond or d - 1 ints, each capped at the largest
            rank the shapes can use.
        row_shape, col_shape: factorisations of n_rows and n_cols into d modes; by default
            ``ttlayers.factorize`` with 3 modes (or as many as the given one).
        names: the subclass's names of (n_rows, n_cols, row_shape, col_shape), for errors.

    Attributes:
        cores: ``nn.ParameterList`` of the d cores.
        row_shape, col_shape: the mode sizes (tuples).
    """

    def __init__(self, n_rows: int, n_cols: int, rank: int | Sequence[int], row_shape: Sequence[int] | None,
                 col_shape: Sequence[int] | None, names: tuple[str, str, str, str], device=None, dtype=None) -> None:
        super().__init__()
        self.n_rows = check_features(n_rows, names[0])
        self.n_cols = check_features(n_cols, names[1])
        self.row_shape, self.col_shape = mode_shapes(self.n_rows, self.n_cols, row_shape, col_shape, names[2], names[3])
        ranks = capped_ranks(rank, self.row_shape, self.col_shape)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(ranks[k], m, n, ranks[k + 1], device=device, dtype=dtype))
            for k, (m, n) in enumerate(zip(self.row_shape, self.col_shape))
        )
        self._forget()

    @property
    def ranks(self) -> tuple[int, ...]:
        """TT ranks ``(1, r_1, ..., r_{d-1}, 1)``."""
        return (1, *(c.shape[-1] for c in self.current_cores()))

    def current_cores(self) -> tuple[Tensor, ...]:
        """The cores, in order. Read from the ``ParameterList``'s own dict (iterating the list
        costs about five times as much, which batch-1 calls feel); when any core was replaced,
        moved, cast or modified in place since the last call (``cores_key``), what was kept from
        the old ones is dropped here: the tensor of ``cached`` and, when the ranks changed, the
        plans that subclasses keep in ``_plans`` (for ``_kept_ranks``). While tracing, the list
        itself, and nothing is kept."""
        if torch.compiler.is_compiling():
            return tuple(self.cores)
        holder = self._modules["cores"]
        cores = tuple(holder._parameters.values())
        if len(cores) != len(holder):  # a core held elsewhere (torch.nn.utils.parametrize)
            cores = tuple(holder)
        key = cores_key(cores)
        if key != self._key:
            self._key, self._cache = key, None
            ranks = (1, *(c.shape[-1] for c in cores))
            if ranks != self._kept_ranks:
                self._kept_ranks, self._plans = ranks, {}
        return cores

    def _forget(self) -> None:
        """Drop everything kept from the cores (they were replaced, re-initialised, moved or cast)."""
        self._key: tuple | None = None
        self._cache: Tensor | None = None
        self._kept_ranks: tuple[int, ...] | None = None
        self._plans: dict = {}

    def init_cores(self, variance: float) -> None:
        """Gaussian cores whose full matrix has entries of ``variance``: each entry sums
        ``prod(ranks)`` uncorrelated products of d core entries (``core_std``)."""
        std = core_std(variance, self.ranks)
        for core in self.cores:
            nn.init.normal_(core, 0.0, std)
        self._forget()

    @classmethod
    def decomposed(cls, weight: Tensor, sizes: tuple[int, int], rank: int | Sequence[int] | None,
                   rel_eps: float | None, **kwargs):
        """``cls(*sizes, ...)`` whose cores are the TT-SVD of ``weight`` (``decompose``), on its
        device and in its dtype; ``kwargs`` go to the constructor."""
        out = cls(*sizes, 1, device=weight.device, dtype=weight.dtype, **kwargs)
        out.decompose(weight, rank, rel_eps)
        return out

    def decompose(self, matrix: Tensor, rank: int | Sequence[int] | None, rel_eps: float | None,
                  rank_name: str = "rank") -> None:
        """Replace the cores by the TT-SVD of ``matrix`` (n_rows, n_cols) (``ttlayers.tt_matrix_svd``):
        ranks capped at ``rank`` (called ``rank_name`` in errors), error
        ``||M - M_tt||_F <= rel_eps ||M||_F``; neither gives an exact copy, and a warning says
        when that copy holds more entries than ``matrix``. The new cores keep the layer's dtype,
        device and ``requires_grad`` (``decomposed`` builds the layer in ``matrix``'s)."""
        check_rank(rank, len(self.row_shape) - 1, rank_name)
        matrix = matrix.detach()
        padded = F.pad(matrix, (0, math.prod(self.col_shape) - self.n_cols, 0, math.prod(self.row_shape) - self.n_rows))
        tt = tt_matrix_svd(padded, self.row_shape, self.col_shape, max_rank=rank, rel_eps=rel_eps)
        like = self.cores[0]
        self.cores = nn.ParameterList(nn.Parameter(c.to(like.device, like.dtype).contiguous(), like.requires_grad)
                                      for c in tt.factors)
        self._forget()
        if rank is None and rel_eps is None and self.compression() < 1:
            warnings.warn(f"the exact TT-matrix of this {self.n_rows} x {self.n_cols} matrix holds "
                          f"{1 / self.compression():.2f}x its entries (ranks {self.ranks}); give rank or rel_eps "
                          "to compress it", UserWarning, stacklevel=3)

    def full_matrix(self) -> Tensor:
        """The matrix with its padding, (prod(row_shape), prod(col_shape)), built now from the
        cores, differentiably."""
        return tt_matrix_to_dense(list(self.current_cores()))

    def needs_core_grads(self) -> bool:
        """Whether autograd records gradients of the cores now."""
        return torch.is_grad_enabled() and any(c.requires_grad for c in self.current_cores())

    def cached(self, build: Callable[[], Tensor]) -> Tensor:
        """``build()`` (a tensor computed from the cores), kept until any core is replaced, moved,
        cast or modified in place (``cores_key``), or the module's mode is set (``train``, ``eval``);
        built anew, untracked, after a change. An edit through ``.data`` bypasses the version
        counter that ``cores_key`` reads: set the mode again after one. Not used while tracing
        (``torch.compile``, ``torch.export``), where ``build()`` is returned; one built under
        ``torch.inference_mode`` is built again once outside it (an inference tensor cannot
        enter a graph that autograd records). It is built in the cores' dtype under ``torch.autocast``
        too (autocast casts it where it is used), so that it serves calls outside autocast."""
        if torch.compiler.is_compiling():
            return build()
        self.current_cores()
        return self._kept(build)

    def _kept(self, build: Callable[[], Tensor]) -> Tensor:
        """``cached`` for a caller that has just called ``current_cores``."""
        if self._cache is None or (self._cache.is_inference() and not torch.is_inference_mode_enabled()):
            with torch.no_grad(), torch.autocast(self.cores[0].device.type, enabled=False):
                self._cache = build()
        return self._cache

    def compression(self) -> float:
        """Entries of the dense matrix over entries of the cores."""
        return self.n_rows * self.n_cols / tt_size(self.row_shape, self.col_shape, self.ranks)

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._forget()
        return super()._apply(fn, *args, **kwargs)
