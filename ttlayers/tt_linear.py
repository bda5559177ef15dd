"""TTLinear: a linear layer whose weight is a TT-matrix (Novikov et al. 2015, "Tensorizing Neural Networks")."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._tt_layout import check_float_input
from .tt_contract import LinearPlan, planned, tt_linear_apply
from .tt_matrix_module import TTMatrixModule


class TTLinear(TTMatrixModule):
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

    Input (*, in_features) -> output (*, out_features), in the cores' dtype. For every batch
    size the cheaper of two routes is taken by counted cost (planned once per size, cached):
    contract the input with the cores (order found by opt_einsum), or build W and do one
    matmul. In eval mode with autograd off, the built W is kept until a core changes.
    ``repeated`` plans many calls with unchanged cores at once (the recurrent map of an LSTM).
    Under ``torch.compile`` and ``torch.export`` the route is planned from the shapes known
    while tracing (see ``plan``) and nothing is cached.
    """

    def __init__(self, in_features: int, out_features: int, rank: int | Sequence[int], *,
                 in_shape: Sequence[int] | None = None, out_shape: Sequence[int] | None = None, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(out_features, in_features, rank, out_shape, in_shape,
                         ("out_features", "in_features", "out_shape", "in_shape"), device=device, dtype=dtype)
        self.in_features, self.out_features = self.n_cols, self.n_rows
        self.out_shape, self.in_shape = self.row_shape, self.col_shape
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian cores whose full W has ``nn.Linear``'s init variance 1 / (3 in_features), and
        ``nn.Linear``'s bias init, U(-1/sqrt(in_features), 1/sqrt(in_features))."""
        self.init_cores(1.0 / (3 * self.in_features))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int | Sequence[int] | None = None, rel_eps: float | None = None,
                    in_shape: Sequence[int] | None = None, out_shape: Sequence[int] | None = None) -> "TTLinear":
        """A copy of ``linear`` with its weight's TT-SVD as cores and its bias (``decompose``:
        ranks capped at ``rank``, ``||W - W_tt||_F <= rel_eps ||W||_F``, neither: exact)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        out = cls.decomposed(linear.weight, (linear.in_features, linear.out_features), rank, rel_eps,
                             in_shape=in_shape, out_shape=out_shape, bias=linear.bias is not None)
        if linear.bias is not None:
            with torch.no_grad():
                out.bias.copy_(linear.bias)
        return out

    def dense_weight(self) -> Tensor:
        """W: (out_features, in_features). Built from the cores, differentiably, when the module
        trains or autograd records gradients of the cores; otherwise the W kept since the
        cores last changed (do not modify it in place)."""
        cores = self.current_cores()
        return self._dense_weight(self._weight_is_constant(cores))

    def _dense_weight(self, constant: bool) -> Tensor:
        """``dense_weight()`` for a caller that has just called ``current_cores``."""
        if constant and not torch.compiler.is_compiling():
            return self._kept(self._sliced_matrix)
        return self._sliced_matrix()

    def _sliced_matrix(self) -> Tensor:
        return self.full_matrix()[: self.out_features, : self.in_features]

    def plan(self, batch: int, calls: int = 1) -> LinearPlan:
        """The route for ``calls`` products of ``batch`` rows while the cores stay unchanged
        (``ttlayers.tt_contract.linear_plan``: the calls share W's build, reads and gradient
        writes), kept on the module until the ranks change. While ``torch.compile`` or
        ``torch.export`` traces, ``batch`` and ``calls`` count as 1, whatever they are: a traced
        route must hold for every size (the sizes may be symbolic), and batch-1 inference, step
        by step, is what an exported layer runs most."""
        cores = self.current_cores()
        return self._plan(batch, calls, self._weight_is_constant(cores))

    def _plan(self, batch: int, calls: int, constant: bool) -> LinearPlan:
        """``plan`` for a caller that has just called ``current_cores``."""
        if torch.compiler.is_compiling():
            return planned(1, self.out_shape, self.in_shape, self.ranks, constant, 1)
        key = (batch, calls, constant)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = planned(batch, self.out_shape, self.in_shape, self._kept_ranks, constant, calls)
        return plan

    def uses_dense_weight(self, batch: int, calls: int = 1) -> bool:
        """Whether ``calls`` products of ``batch`` rows go through ``dense_weight()`` (``plan``)."""
        return self.plan(batch, calls).dense

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            raise ValueError(f"TTLinear expects input (*, {self.in_features}), got shape {tuple(input.shape)}")
        cores = self.current_cores()
        check_float_input(input, cores[0].dtype, "TTLinear")
        x = input if input.dim() == 2 else input.reshape(-1, self.in_features)
        y = self._repeated(x.shape[0], 1, cores)(x)
        return y if input.dim() == 2 else y.reshape(*input.shape[:-1], self.out_features)

    def repeated(self, batch: int, calls: int = 1) -> Callable[[Tensor], Tensor]:
        """``self`` as a function of x (batch, in_features) -> (batch, out_features), for
        ``calls`` such inputs while the cores stay unchanged (the steps of a recurrence).

        The route is chosen for all calls together (``plan``): either one ``F.linear`` per
        call with a W built here once, or a contraction with the cores.
        """
        return self._repeated(batch, calls, self.current_cores())

    def _repeated(self, batch: int, calls: int, cores: tuple[Tensor, ...]) -> Callable[[Tensor], Tensor]:
        """``repeated`` for a caller that has just called ``current_cores``."""
        constant = self._weight_is_constant(cores)
        plan = self._plan(batch, calls, constant)
        if plan.dense:
            weight, bias = self._dense_weight(constant), self.bias
            return lambda x: F.linear(x, weight, bias)
        pad = math.prod(self.in_shape) - self.in_features

        def contract(x: Tensor) -> Tensor:
            y = tt_linear_apply(F.pad(x, (0, pad)) if pad else x, cores, plan)[:, : self.out_features]
            return y if self.bias is None else y + self.bias.to(y.dtype)  # y's dtype, under autocast too
        return contract

    def _weight_is_constant(self, cores: tuple[Tensor, ...]) -> bool:
        """Whether W needs no gradient now (eval mode, no gradient recorded for the cores)."""
        return not self.training and not (torch.is_grad_enabled() and any(c.requires_grad for c in cores))

    def full_weight(self) -> Tensor:
        """Deprecated: ``dense_weight()`` is W; this one is W with its padding."""
        warnings.warn("TTLinear.full_weight() is deprecated; use dense_weight()", DeprecationWarning, stacklevel=2)
        return self.full_matrix()

    def current_weight(self) -> Tensor:
        """Deprecated alias of ``dense_weight()``."""
        warnings.warn("TTLinear.current_weight() is deprecated; use dense_weight()", DeprecationWarning, stacklevel=2)
        return self.dense_weight()

    def built_weight(self, batch: int, calls: int = 1) -> Tensor | None:
        """Deprecated: ``dense_weight()`` when ``uses_dense_weight(batch, calls)``, else None."""
        warnings.warn("TTLinear.built_weight() is deprecated; use uses_dense_weight() and dense_weight()",
                      DeprecationWarning, stacklevel=2)
        return self.dense_weight() if self.uses_dense_weight(batch, calls) else None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, in_shape={self.in_shape}, "
                f"out_shape={self.out_shape}, ranks={self.ranks}, compression={self.compression():.1f}x, "
                f"bias={self.bias is not None}")
