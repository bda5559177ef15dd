"""Contraction plans for TT-matrices, chosen by counting and cached per shape.

A TT-matrix W of shape (prod(out_shape), prod(in_shape)) is held as d cores ``G_k`` of
shape (r_{k-1}, out_shape[k], in_shape[k], r_k) with r_0 = r_d = 1 (the ``TTMatrix``
layout of tensorly), so that

    W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :].

``y = x @ W.T`` for x of shape (batch, prod(in_shape)) is a tensor network of x and
the d cores. It can be evaluated in two ways:

* ``"tt"``: contract x with the cores pairwise, in the order opt_einsum finds cheapest;
* ``"dense"``: build W from the cores (in the cheapest order), then one matmul, or
  only the matmul when W is already built (cached in eval mode).

The cost of a route counts its FLOPs (opt_einsum's convention, a multiply-add is 2)
plus ``WRITE_COST`` FLOPs for every element its pairwise contractions write: on a CPU
the intermediates of a TT contraction (batch x modes x rank) are memory-bound, and
FLOPs alone pick orders that run several times slower than their count says (see
docs/layers.md). opt_einsum's dynamic programming minimises the same sum
(``minimize="combo"``). The cheaper route is taken. Plans depend only on the batch
size and the shapes, so they are computed once and cached (``functools.lru_cache``);
no path search runs per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import opt_einsum as oe
from opt_einsum.contract import ContractExpression
from torch import Tensor

Shape = tuple[int, ...]


def _core_subscripts(d: int) -> tuple[list[str], str, str]:
    """Subscripts of the (boundary-squeezed) cores, of the output modes and of the input modes."""
    sym = oe.get_symbol
    out_modes = [sym(1 + k) for k in range(d)]
    in_modes = [sym(1 + d + k) for k in range(d)]
    ranks = [sym(1 + 2 * d + k) for k in range(d - 1)]
    cores = []
    for k in range(d):
        left = ranks[k - 1] if k > 0 else ""
        right = ranks[k] if k < d - 1 else ""
        cores.append(left + out_modes[k] + in_modes[k] + right)
    return cores, "".join(out_modes), "".join(in_modes)


def core_views(cores) -> list[Tensor]:
    """The cores with their size-1 boundary ranks dropped (views, no copies)."""
    views = list(cores)
    views[0] = views[0].squeeze(0)
    views[-1] = views[-1].squeeze(-1)
    return views


def _view_shapes(out_shape: Shape, in_shape: Shape, ranks: Shape) -> list[Shape]:
    d = len(out_shape)
    full = [(ranks[k], out_shape[k], in_shape[k], ranks[k + 1]) for k in range(d)]
    full[0] = full[0][1:]
    full[-1] = full[-1][:-1]
    return full


WRITE_COST = 200  # FLOPs charged per element written by a pairwise contraction (measured on CPU)
_OPTIMIZER = f"combo-{WRITE_COST // 2}"  # opt_einsum's dp counts multiply-adds, not FLOPs


def _plan(eq: str, shapes: list[Shape]) -> tuple[list, int, int]:
    """Path minimising FLOPs + WRITE_COST * elements written, with its FLOPs and that cost."""
    if len(shapes) == 1:
        return [(0,)], 0, 0
    path, info = oe.contract_path(eq, *shapes, shapes=True, optimize=oe.DynamicProgramming(minimize=_OPTIMIZER))
    written = sum(prod(info.size_dict[c] for c in step[2].split("->")[1]) for step in info.contraction_list)
    return path, int(info.opt_cost), int(info.opt_cost) + WRITE_COST * written


@lru_cache(maxsize=256)
def weight_expression(out_shape: Shape, in_shape: Shape, ranks: Shape) -> tuple[ContractExpression, int, int]:
    """The cheapest expression building W as a tensor (*out_shape, *in_shape), its FLOPs and its cost.

    ``ranks`` is (r_0, ..., r_d) with r_0 = r_d = 1.
    """
    cores, out_modes, in_modes = _core_subscripts(len(out_shape))
    eq = ",".join(cores) + "->" + out_modes + in_modes
    shapes = _view_shapes(out_shape, in_shape, ranks)
    path, flops, cost = _plan(eq, shapes)
    return oe.contract_expression(eq, *shapes, optimize=path), flops, cost


def tt_matrix_to_dense(cores) -> Tensor:
    """The full matrix (prod(out_shape), prod(in_shape)) of a TT-matrix given by its cores."""
    out_shape = tuple(c.shape[1] for c in cores)
    in_shape = tuple(c.shape[2] for c in cores)
    ranks = (1,) + tuple(c.shape[-1] for c in cores)
    expr = weight_expression(out_shape, in_shape, ranks)[0]
    full = expr(*core_views(cores), backend="torch")
    return full.reshape(prod(out_shape), prod(in_shape))


def prod(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


@dataclass(frozen=True)
class LinearPlan:
    """How to compute ``x @ W.T`` for one batch size.

    ``dense`` says whether to go through the full weight. ``tt_cost``/``dense_cost`` are
    the counted costs of the two routes (FLOPs + WRITE_COST * elements written; the dense
    one includes building W unless it was already built), ``tt_flops``/``dense_flops``
    their FLOPs, and ``min_flops`` the fewest FLOPs of any TT contraction order.
    ``expression`` contracts (x, *cores) on the TT route.
    """

    dense: bool
    tt_cost: int
    dense_cost: int
    tt_flops: int
    dense_flops: int
    min_flops: int
    expression: ContractExpression | None


@lru_cache(maxsize=1024)
def linear_plan(batch: int, out_shape: Shape, in_shape: Shape, ranks: Shape, weight_built: bool) -> LinearPlan:
    """The cheaper way to compute ``x @ W.T`` for x of shape (batch, prod(in_shape)).

    ``weight_built`` says that the full W is already at hand (so the dense route
    costs only the matmul).
    """
    n_out, n_in = prod(out_shape), prod(in_shape)
    dense_flops = dense_cost = 2 * batch * n_out * n_in
    dense_cost += WRITE_COST * batch * n_out
    if not weight_built:
        _, flops, cost = weight_expression(out_shape, in_shape, ranks)
        dense_flops += flops
        dense_cost += cost + WRITE_COST * n_out * n_in  # W is written once more in (out, in) order
    cores, out_modes, in_modes = _core_subscripts(len(out_shape))
    b = oe.get_symbol(0)
    eq = ",".join([b + in_modes] + cores) + "->" + b + out_modes
    shapes = [(batch, *in_shape)] + _view_shapes(out_shape, in_shape, ranks)
    path, tt_flops, tt_cost = _plan(eq, shapes)
    min_flops = int(oe.contract_path(eq, *shapes, shapes=True, optimize="dp")[1].opt_cost)
    dense = dense_cost <= tt_cost
    expression = None if dense else oe.contract_expression(eq, *shapes, optimize=path)
    return LinearPlan(dense, tt_cost, dense_cost, tt_flops, dense_flops, min_flops, expression)


def tt_linear_apply(x: Tensor, cores, plan: LinearPlan) -> Tensor:
    """``x @ W.T`` along the TT path: x (batch, prod(in_shape)) -> (batch, prod(out_shape))."""
    in_shape = tuple(c.shape[2] for c in cores)
    out = plan.expression(x.reshape(x.shape[0], *in_shape), *core_views(cores), backend="torch")
    return out.reshape(x.shape[0], prod(c.shape[1] for c in cores))

