"""TTLinear: a linear layer whose weight is a TT-matrix (Novikov et al. 2015, "Tensorizing Neural Networks")."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._tt_layout import capped_ranks, check_features, core_std, cores_key, mode_shapes, tt_size
from .tt_contract import linear_plan, tt_linear_apply, tt_matrix_to_dense
from .tt_matrix import tt_matrix_svd


class TTLinear(nn.Module):
    """``y = x @ W.T + b`` with W a TT-matrix of d cores.

    W has shape (out_features, in_features) and is held as cores ``cores[k]`` of shape
    (r_{k-1}, out_shape[k], in_shape[k], r_k), r_0 = r_d = 1 (tensorly's ``TTMatrix``
    layout): W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ... G_d[:, i_d, j_d, :].

    Args:
        in_features, out_features: sizes of the input and output features.
        rank: TT rank, one int for every bond or a list of d - 1 ints; each is capped at
            the largest rank the shapes can use.
        in_shape, out_shape: the factorisations of in/out features into d modes; by default
            ``ttlayers.factorize`` with 3 modes (or as many as the given one). When the
            product exceeds the size (sizes that factor badly), the input is zero-padded and
            the output sliced, invisibly.
        bias: learn an additive bias (out_features,).

    Input (*, in_features) -> output (*, out_features). For every batch size the cheaper
    of two routes is taken by FLOP count (planned once per size, cached): contract the
    input with the cores (order found by opt_einsum), or build W and do one matmul. In
    eval mode with autograd off, the built W is kept until a core changes. ``repeated``
    plans many calls with unchanged cores at once (the recurrent map of an LSTM).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int | Sequence[int],
        *,
        in_shape: Sequence[int] | None = None,
        out_shape: Sequence[int] | None = None,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = check_features(in_features, "in_features")
        self.out_features = check_features(out_features, "out_features")
        self.out_shape, self.in_shape = mode_shapes(out_features, in_features, out_shape, in_shape, "out_shape", "in_shape")
        ranks = capped_ranks(rank, self.out_shape, self.in_shape)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(ranks[k], m, n, ranks[k + 1], **factory))
            for k, (m, n) in enumerate(zip(self.out_shape, self.in_shape))
        )
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self._weight_cache: tuple[tuple, Tensor] | None = None
        self.reset_parameters()

    @property
    def ranks(self) -> tuple[int, ...]:
        """TT ranks ``(1, r_1, ..., r_{d-1}, 1)``."""
        return (1, *(c.shape[-1] for c in self.cores))

    def reset_parameters(self) -> None:
        """Gaussian cores whose full W has ``nn.Linear``'s init variance 1 / (3 in_features), and
        ``nn.Linear``'s bias init, U(-1/sqrt(in_features), 1/sqrt(in_features))."""
        std = core_std(1.0 / (3 * self.in_features), self.ranks)
        for core in self.cores:
            nn.init.normal_(core, 0.0, std)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        self._weight_cache = None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        rank: int | Sequence[int] | None = None,
        rel_eps: float | None = None,
        in_shape: Sequence[int] | None = None,
        out_shape: Sequence[int] | None = None,
    ) -> "TTLinear":
        """TT-SVD of ``linear.weight`` (``ttlayers.tt_matrix_svd``): ranks capped at ``rank``,
        error ``||W - W_tt||_F <= rel_eps ||W||_F``; neither gives an exact copy."""
        weight = linear.weight.detach()
        out = cls(linear.in_features, linear.out_features, 1, in_shape=in_shape, out_shape=out_shape,
                  bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
        padded = F.pad(weight, (0, math.prod(out.in_shape) - out.in_features, 0, math.prod(out.out_shape) - out.out_features))
        tt = tt_matrix_svd(padded, out.out_shape, out.in_shape, max_rank=rank, rel_eps=rel_eps)
        out.cores = nn.ParameterList(nn.Parameter(c.to(weight.dtype).contiguous()) for c in tt.factors)
        if linear.bias is not None:
            with torch.no_grad():
                out.bias.copy_(linear.bias)
        return out

    def full_weight(self) -> Tensor:
        """W including padding: (prod(out_shape), prod(in_shape))."""
        return tt_matrix_to_dense(list(self.cores))

    def dense_weight(self) -> Tensor:
        """W: (out_features, in_features), differentiable in the cores."""
        return self.full_weight()[: self.out_features, : self.in_features]

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            raise ValueError(f"TTLinear expects input (*, {self.in_features}), got shape {tuple(input.shape)}")
        x = input.reshape(-1, self.in_features)
        return self.repeated(x.shape[0])(x).reshape(*input.shape[:-1], self.out_features)

    def repeated(self, batch: int, calls: int = 1) -> Callable[[Tensor], Tensor]:
        """``self`` as a function of x (batch, in_features) -> (batch, out_features), for
        ``calls`` such inputs while the cores stay unchanged (the steps of a recurrence).

        The route is chosen for all calls together (``built_weight``): either one
        ``F.linear`` per call with a W built here once, or a contraction with the cores.
        """
        weight = self.built_weight(batch, calls)
        if weight is not None:
            return lambda x: F.linear(x, weight, self.bias)
        plan = linear_plan(batch, self.out_shape, self.in_shape, self.ranks, self._cacheable(), calls)  # the plan built_weight looked up
        cores, pad = list(self.cores), math.prod(self.in_shape) - self.in_features

        def contract(x: Tensor) -> Tensor:
            y = tt_linear_apply(F.pad(x, (0, pad)) if pad else x, cores, plan)[:, : self.out_features]
            return y if self.bias is None else y + self.bias
        return contract

    def built_weight(self, batch: int, calls: int = 1) -> Tensor | None:
        """W (out_features, in_features) if ``calls`` products of ``batch`` rows with unchanged
        cores count cheaper through it than through the cores (``linear_plan`` with
        ``calls``: the calls share W's build, reads and gradient writes), else None."""
        if not linear_plan(batch, self.out_shape, self.in_shape, self.ranks, self._cacheable(), calls).dense:
            return None
        return self.current_weight()

    def current_weight(self) -> Tensor:
        """W (out_features, in_features): taken from the cache when neither the module nor
        autograd needs gradients of the cores, else built now, differentiably."""
        weight = self._cached_weight() if self._cacheable() else self.full_weight()
        return weight[: self.out_features, : self.in_features]

    def _cacheable(self) -> bool:
        return not self.training and not (torch.is_grad_enabled() and any(c.requires_grad for c in self.cores))

    def _cached_weight(self) -> Tensor:
        """The full W, rebuilt when any core changed (tracked by storage and in-place version)."""
        key = cores_key(self.cores)
        if self._weight_cache is None or self._weight_cache[0] != key:
            with torch.no_grad():
                self._weight_cache = (key, self.full_weight())
        return self._weight_cache[1]

    def train(self, mode: bool = True) -> "TTLinear":
        self._weight_cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._weight_cache = None
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        ratio = self.in_features * self.out_features / tt_size(self.out_shape, self.in_shape, self.ranks)
        return (f"in_features={self.in_features}, out_features={self.out_features}, in_shape={self.in_shape}, "
                f"out_shape={self.out_shape}, ranks={self.ranks}, compression={ratio:.1f}x, bias={self.bias is not None}")
