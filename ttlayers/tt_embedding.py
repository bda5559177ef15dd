"""TTEmbedding: an embedding table held as a TT-matrix, looked up row by row without building it
(Khrulkov et al. 2019, "Tensorized Embedding Layers")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .tt_matrix_module import TTMatrixModule


class TTEmbedding(TTMatrixModule):
    """A (num_embeddings, embedding_dim) lookup table E held as a TT-matrix of d cores.

    ``cores[k]`` has shape (r_{k-1}, num_shape[k], dim_shape[k], r_k), r_0 = r_d = 1, and
    row i of E, with i the C-order multi-index (i_1..i_d) over ``num_shape``, is
    ``G_1[:, i_1] ... G_d[:, i_d]`` (a (dim_shape[0], ..., dim_shape[-1]) tensor, flattened).

    Args:
        num_embeddings, embedding_dim: size of the table.
        rank: TT rank, one int or d - 1 ints, each capped at the largest useful rank.
        num_shape, dim_shape: factorisations of num_embeddings and embedding_dim into d
            modes; by default ``ttlayers.factorize`` with 3 modes. Sizes that factor badly
            are padded (extra rows never looked up, extra columns sliced off).
        padding_idx: as in ``nn.Embedding``: lookups of this index give zeros and send no
            gradient to the cores (negative values count from the end).

    Input: integer indices of any shape (*) -> output (*, embedding_dim). A lookup never
    builds the table: the distinct indices of the batch (every index, when fewer than half
    repeat) are split into digits, the matching core slices gathered, and the slices
    contracted by batched matmuls. Without gradients to the cores (eval, ``no_grad``) the
    product of the trailing cores is cached until a core changes.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int | Sequence[int], *,
                 num_shape: Sequence[int] | None = None, dim_shape: Sequence[int] | None = None,
                 padding_idx: int | None = None, device=None, dtype=None) -> None:
        super().__init__(num_embeddings, embedding_dim, rank, num_shape, dim_shape,
                         ("num_embeddings", "embedding_dim", "num_shape", "dim_shape"), device=device, dtype=dtype)
        self.num_embeddings, self.embedding_dim = self.n_rows, self.n_cols
        self.num_shape, self.dim_shape = self.row_shape, self.col_shape
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be in [-{num_embeddings}, {num_embeddings}), got {padding_idx}")
            padding_idx %= num_embeddings
        self.padding_idx = padding_idx
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian cores whose table has unit variance, as ``nn.Embedding``'s N(0, 1) init."""
        self.init_cores(1.0)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, rank: int | Sequence[int] | None = None, rel_eps: float | None = None,
                       num_shape: Sequence[int] | None = None, dim_shape: Sequence[int] | None = None) -> "TTEmbedding":
        """The table of ``embedding`` by TT-SVD, with its ``padding_idx`` (``decompose``: ranks
        capped at ``rank``, ``||E - E_tt||_F <= rel_eps ||E||_F``, neither: exact)."""
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"embedding must be a torch.nn.Embedding, got {type(embedding).__name__}")
        unsupported = [f"{name}={getattr(embedding, name)!r}" for name, off in
                       (("max_norm", None), ("scale_grad_by_freq", False), ("sparse", False))
                       if getattr(embedding, name) != off]
        if unsupported:
            raise ValueError(f"TTEmbedding has no {', '.join(unsupported)} (the embedding's lookups would change)")
        return cls.decomposed(embedding.weight, (embedding.num_embeddings, embedding.embedding_dim), rank, rel_eps,
                              num_shape=num_shape, dim_shape=dim_shape, padding_idx=embedding.padding_idx)

    def dense_weight(self) -> Tensor:
        """The table E: (num_embeddings, embedding_dim), differentiable in the cores; the
        ``padding_idx`` row is zero, as every lookup of it."""
        table = self.full_matrix()[: self.num_embeddings, : self.embedding_dim]
        return table if self.padding_idx is None else table.index_fill(0, torch.tensor([self.padding_idx], device=table.device), 0.0)

    def rows(self, indices: Tensor) -> Tensor:
        """Rows of E for 1-D in-range ``indices`` (n,): (n, embedding_dim), built from core slices.

        Row i is ``G_1[:, i_1] @ T[i_2..i_d]`` with T the product of the other cores' slices
        (r_1, dim_shape[1] * ... * dim_shape[-1]). T is computed once per distinct tail
        (i_2..i_d) of the batch, by gathering slices and batched matmuls; or, when the batch
        holds at least half of all possible tails, for all tails at once, by dense products
        of the cores (the same count of multiply-adds within a factor 2, without gathers).
        While ``torch.compile`` or ``torch.export`` traces, always the latter: the route may
        not depend on the values of ``indices``.
        """
        n = indices.shape[0]
        head = self.cores[0][0]  # (num_shape[0], dim_shape[0], r_1)
        if len(self.cores) == 1:
            return head[:, :, 0].index_select(0, indices)[:, : self.embedding_dim]
        n_tails = math.prod(self.num_shape[1:])
        tails = indices % n_tails
        if torch.compiler.is_compiling():  # a route that depends on the values cannot be traced
            tail = self._all_tails().index_select(0, tails)
        else:
            unique, inverse = torch.unique(tails, return_inverse=True)
            if n_tails <= 2 * unique.numel():
                tail = self._all_tails_cached().index_select(0, tails)
            else:
                tail = self._tails(unique).index_select(0, inverse)
        out = torch.bmm(head.index_select(0, indices // n_tails), tail)  # (n, dim_shape[0], prod(dim_shape[1:]))
        return out.reshape(n, out.shape[1] * out.shape[2])[:, : self.embedding_dim]

    def _all_tails(self) -> Tensor:
        """Products of cores 2..d for every tail: (prod(num_shape[1:]), r_1, prod(dim_shape[1:]))."""
        product = self.cores[1]  # (r_1, tails, dims, r)
        for core in list(self.cores)[2:]:
            r1, tails, dims, _ = product.shape
            product = torch.einsum("anes,smft->anmeft", product, core)
            product = product.reshape(r1, tails * core.shape[1], dims * core.shape[2], core.shape[3])
        return product[..., 0].transpose(0, 1).contiguous()

    def _all_tails_cached(self) -> Tensor:
        """``_all_tails()``, kept while no core changes when no gradient flows to the cores
        (``cached``); rebuilt otherwise."""
        return self._all_tails() if self.needs_core_grads() else self.cached(self._all_tails)

    def _tails(self, tails: Tensor) -> Tensor:
        """Products of cores 2..d for the given tails (u,), by gathered slices: (u, r_1, prod(dim_shape[1:]))."""
        digits = []
        for size in reversed(self.num_shape[1:]):
            digits.append(tails % size)
            tails = tails // size
        digits.reverse()
        out = None
        for core, digit in zip(list(self.cores)[1:], digits):
            piece = core.transpose(0, 1).contiguous().index_select(0, digit)  # (u, r_{k-1}, dim_k, r_k)
            u, rank_in, dim, rank_out = piece.shape
            if out is None:
                out = piece.reshape(u, rank_in * dim, rank_out)
            else:
                out = torch.bmm(out, piece.reshape(u, rank_in, dim * rank_out)).reshape(u, out.shape[1] * dim, rank_out)
        return out.reshape(out.shape[0], self.cores[1].shape[0], math.prod(self.dim_shape[1:]))

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor):
            raise TypeError(f"TTEmbedding expects a torch.Tensor of integer indices, got {type(input).__name__}")
        if input.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"TTEmbedding expects integer indices, got dtype {input.dtype}")
        # a lookup, in the cores' dtype under torch.autocast too, as nn.Embedding's (no bfloat16 rounding of the rows)
        with torch.autocast(self.cores[0].device.type, enabled=False):
            flat = input.reshape(-1).long()
            if torch.compiler.is_compiling():  # no value-dependent route or check in a traced graph
                out = self.rows(flat).reshape(*input.shape, self.embedding_dim)
            else:
                unique, inverse = torch.unique(flat, return_inverse=True)
                if unique.numel() and (unique[0] < 0 or unique[-1] >= self.num_embeddings):
                    raise IndexError(f"TTEmbedding indices must be in [0, {self.num_embeddings}), "
                                     f"got values from {int(unique[0])} to {int(unique[-1])}")
                if 2 * unique.numel() > inverse.numel():  # few repeats: the final gather would cost more than it saves
                    out = self.rows(flat).reshape(*input.shape, self.embedding_dim)
                else:
                    out = self.rows(unique).index_select(0, inverse).reshape(*input.shape, self.embedding_dim)
        if self.padding_idx is not None:  # zero, and no gradient to the cores, as nn.Embedding's padding row
            out = out.masked_fill((input == self.padding_idx).unsqueeze(-1), 0.0)
        return out

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, num_shape={self.num_shape}, "
                f"dim_shape={self.dim_shape}, ranks={self.ranks}, compression={self.compression():.1f}x"
                + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""))
