"""GroupReduce (Chen et al. 2018): block-wise low-rank embedding and softmax by word frequency.

The vocabulary is sorted by decreasing frequency (``lm.data.build_vocab``), so a
frequency partition is a partition into id ranges ``[b_g, b_{g+1})``. Block g of the
(vocab, dim) matrix is held as ``U_g @ V_g`` with ``U_g`` (n_g, r_g) and ``V_g``
(r_g, dim). The factors minimise the frequency-weighted error
``sum_i w_i ||row_i - approx_i||^2`` with ``w_i = count_i ** alpha``, whose optimum in
a block is the SVD of ``diag(sqrt(w)) W_g`` (exact, not iterated). Ranks are
allocated greedily under a parameter budget: each step buys the singular direction
with the largest weighted error removed per parameter, so frequent blocks get the
higher ranks. One block with ``alpha = 0`` is the plain truncated-SVD low-rank matrix.
"""

from __future__ import annotations

import heapq
import itertools
import math

import torch
from torch import Tensor, nn


def frequency_boundaries(num_words: int, groups: int) -> list[int]:
    """Block edges ``[0, ..., num_words]``, geometric in word rank: few frequent words, many rare ones.

    The edges are ``round(num_words ** (g / groups))``; where rounding leaves an empty block or a
    block larger than the next (small ``num_words``), the block sizes are made at least 1 and sorted,
    so that there are always ``groups`` blocks of non-decreasing size.
    """
    if groups < 1 or groups > num_words:
        raise ValueError(f"groups must be in [1, {num_words}], got {groups}")
    edges = [0] + [round(num_words ** (g / groups)) for g in range(1, groups)] + [num_words]
    sizes = sorted(max(1, b - a) for a, b in zip(edges, edges[1:]))
    for i in reversed(range(groups)):  # give back what raising empty blocks to 1 added, largest first
        sizes[i] -= min(sum(sizes) - num_words, sizes[i] - 1)
    return list(itertools.accumulate(sorted(sizes), initial=0))


def _check_blocks(num_rows: int, dim: int, boundaries: list[int], ranks: list[int]) -> None:
    if boundaries[0] != 0 or boundaries[-1] != num_rows or any(a >= b for a, b in zip(boundaries, boundaries[1:])):
        raise ValueError(f"boundaries must increase strictly from 0 to {num_rows}, got {boundaries}")
    if len(ranks) != len(boundaries) - 1:
        raise ValueError(f"need one rank per block ({len(boundaries) - 1}), got {len(ranks)}")
    for r, a, b in zip(ranks, boundaries, boundaries[1:]):
        if not 1 <= r <= min(b - a, dim):
            raise ValueError(f"rank {r} of block [{a}, {b}) must be in [1, {min(b - a, dim)}]")


class _BlockFactors(nn.Module):
    """The factors ``u[g]`` (n_g, r_g) and ``v[g]`` (r_g, dim) of a block low-rank (rows, dim) matrix."""

    def __init__(self, num_rows: int, dim: int, boundaries: list[int], ranks: list[int], device=None, dtype=None):
        super().__init__()
        boundaries, ranks = [int(b) for b in boundaries], [int(r) for r in ranks]
        _check_blocks(num_rows, dim, boundaries, ranks)
        self.boundaries, self.ranks = boundaries, ranks
        f = {"device": device, "dtype": dtype}
        self.u = nn.ParameterList([nn.Parameter(torch.empty(b - a, r, **f)) for r, a, b in zip(ranks, boundaries, boundaries[1:])])
        self.v = nn.ParameterList([nn.Parameter(torch.empty(r, dim, **f)) for r in ranks])

    def reset_factors(self, std: float) -> None:
        """Random factors whose products have entries of standard deviation ``std``."""
        for u, v in zip(self.u, self.v):
            s = math.sqrt(std / math.sqrt(u.shape[1]))
            nn.init.normal_(u, 0.0, s)
            nn.init.normal_(v, 0.0, s)

    @torch.no_grad()
    def set_from(self, weight: Tensor, row_weights: Tensor | None = None) -> None:
        """Weighted-SVD factors of ``weight`` (rows, dim), block by block."""
        for g, (a, b) in enumerate(zip(self.boundaries, self.boundaries[1:])):
            w = torch.ones(b - a, dtype=torch.float64) if row_weights is None else row_weights[a:b].double()
            sq = w.sqrt()[:, None]
            p, s, qt = torch.linalg.svd(sq * weight[a:b].double(), full_matrices=False)
            r = self.ranks[g]
            self.u[g].copy_((p[:, :r] * s[:r]) / sq)
            self.v[g].copy_(qt[:r])

    def dense(self) -> Tensor:
        return torch.cat([u @ v for u, v in zip(self.u, self.v)])

    def extra_repr(self) -> str:
        return f"boundaries={self.boundaries}, ranks={self.ranks}"


class BlockLowRankEmbedding(_BlockFactors):
    """Embedding whose (num_embeddings, embedding_dim) table is block low-rank; lookups never build the table."""

    def __init__(self, num_embeddings: int, embedding_dim: int, boundaries: list[int], ranks: list[int],
                 device=None, dtype=None) -> None:
        super().__init__(num_embeddings, embedding_dim, boundaries, ranks, device, dtype)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors whose table has ``nn.Embedding``'s N(0, 1) entries' variance."""
        self.reset_factors(1.0)

    def forward(self, ids: Tensor) -> Tensor:
        """ids (...) -> (..., embedding_dim)."""
        flat = ids.reshape(-1)
        out = self.v[0].new_zeros(flat.shape[0], self.embedding_dim)
        block = torch.bucketize(flat, flat.new_tensor(self.boundaries[1:-1]), right=True)
        for g, (u, v) in enumerate(zip(self.u, self.v)):
            rows = (block == g).nonzero().squeeze(1)
            if rows.numel():
                out = out.index_put((rows,), u[flat[rows] - self.boundaries[g]] @ v)
        return out.view(*ids.shape, self.embedding_dim)

    def dense_weight(self) -> Tensor:
        return self.dense()


class BlockLowRankLinear(_BlockFactors):
    """Linear map to ``out_features`` (the vocabulary) whose weight rows are block low-rank.

    ``forward``: x (..., in_features) -> (..., out_features), computed as
    ``cat_g((x @ v_g.T) @ u_g.T) + bias``.
    """

    def __init__(self, in_features: int, out_features: int, boundaries: list[int], ranks: list[int], bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(out_features, in_features, boundaries, ranks, device, dtype)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors whose weight has ``nn.Linear``'s init variance 1 / (3 in_features); zero bias."""
        self.reset_factors(1.0 / math.sqrt(3 * self.in_features))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat([(x @ v.t()) @ u.t() for u, v in zip(self.u, self.v)], dim=-1)
        return out + self.bias if self.bias is not None else out

    def dense_weight(self) -> Tensor:
        return self.dense()


def allocate_ranks(weight: Tensor, boundaries: list[int], budget: int, row_weights: Tensor | None = None,
                   min_rank: int = 1) -> list[int]:
    """Per-block ranks of at most ``budget`` factor parameters minimising the weighted error.

    A rank-1 step in block g costs ``n_g + dim`` parameters and removes ``s_{g,k}^2``
    of weighted error; the greedy choice by error per parameter is optimal because
    each block's singular values decrease.
    """
    dim = weight.shape[1]
    spectra, costs, ranks = [], [], []
    for a, b in zip(boundaries, boundaries[1:]):
        w = torch.ones(b - a, dtype=torch.float64) if row_weights is None else row_weights[a:b].double()
        spectra.append(torch.linalg.svdvals(w.sqrt()[:, None] * weight[a:b].double()).pow(2).tolist())
        costs.append(b - a + dim)
        ranks.append(min(min_rank, b - a, dim))
    spent = sum(r * c for r, c in zip(ranks, costs))
    if spent > budget:
        raise ValueError(f"a budget of {budget} parameters cannot give every one of the {len(ranks)} blocks rank {min_rank}")
    heap = [(-spectra[g][ranks[g]] / costs[g], g) for g in range(len(ranks)) if ranks[g] < len(spectra[g])]
    heapq.heapify(heap)
    while heap:
        _, g = heapq.heappop(heap)
        if spent + costs[g] > budget:
            continue
        spent += costs[g]
        ranks[g] += 1
        if ranks[g] < len(spectra[g]):
            heapq.heappush(heap, (-spectra[g][ranks[g]] / costs[g], g))
    return ranks


def word_weights(counts: Tensor, alpha: float = 0.5) -> Tensor:
    """Row weights ``(count + 1) ** alpha`` from training-set word counts (vocab,)."""
    return (counts.double() + 1.0) ** alpha
