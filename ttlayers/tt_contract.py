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

The cost of a route is its FLOPs plus ``WRITE_COST`` FLOPs per element that its
contractions write, plus ``STEP_COST`` per operation it launches (each pairwise step, and the
dense route's matmul); the dense matmul also counts the W-sized gradient it writes (and the
W it reads). On a CPU the intermediates of a TT route (batch x modes x rank) are
memory-bound, and FLOPs alone pick orders that run several times slower than their
count says (``python -m benchmarks.bench_layers --orders``); and at small batches the
matmul itself is bound by reading W. ``WRITE_COST`` was fitted on measured orders of the
benchmark shapes (docs/layers.md). ``STEP_COST`` is the measured time of a pairwise step on
1 x 1 operands (the fixed cost of its permutes, reshapes and matmul call) over the time of a
FLOP of a large matmul: at batch 1 it is what a TT route of three steps mostly spends.
Reading an already built W (eval, nothing to write back) is charged per element instead:
``READ_COST`` while W stays in the cache between calls (up to ``CACHED_W`` elements),
``MEMORY_READ_COST`` beyond, as measured at batch 1 on the benchmark shapes (docs/layers.md).
opt_einsum's dynamic programming minimises the same sum
(``minimize="combo"``; every order has the same number of steps). The cheaper route is taken. Plans depend only on the batch size
and the shapes, so they are computed once and cached (``functools.lru_cache``); no path
search runs per call, and none while ``torch.compile`` traces (the plans are computed
eagerly and enter the graph as constants).

A plan runs as a sequence of pairwise products, each compiled once into permute, reshape,
one ``mm``/``bmm`` and a view (``Pairwise``): a handful of autograd nodes per step, where
``torch.einsum`` records about a dozen, which matters at small batches where the
contractions are tiny. Every result keeps its indices in one global order (batch, output
modes, input modes, ranks), so the last product writes y directly in (batch, out) layout;
opt_einsum's own executor (``tensordot``) can leave it transposed, which costs a strided
copy of y in the forward and of its gradient in the backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import prod

import opt_einsum as oe
import torch
from torch import Tensor

Shape = tuple[int, ...]


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result(fn)`` without importing ``torch._dynamo``, which the public
    decorator does first and which takes longer than the rest of ``import ttlayers`` together (about 1.8 s):
    dynamo reads only the mark that its decorator sets (tests/ttlayers/test_export.py holds the two equal)."""
    fn._dynamo_marked_constant = True
    return fn

WRITE_COST = 400  # FLOPs charged per element written (fitted on CPU, see the module docstring)
STEP_COST = 1_400_000  # FLOPs charged per operation a route launches (measured, see the module docstring)
READ_COST = 8  # FLOPs charged per element of an already built W that a matmul reads from the cache
MEMORY_READ_COST = 20  # ... per element of a built W too large for the cache (over CACHED_W elements)
CACHED_W = 7 * 2**18  # elements of a built W that stay cached between calls (7 MiB of float32)
_OPTIMIZER = f"combo-{WRITE_COST // 2}"  # opt_einsum's dp counts multiply-adds, not FLOPs


def _core_subscripts(d: int) -> tuple[list[str], str, str]:
    """Subscripts of the (boundary-squeezed) cores, of the output modes and of the input modes.

    Symbol 0 is left for the batch; then come the output modes, the input modes and the
    ranks, so that sorting a set of subscripts puts them in that order.
    """
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


@dataclass(frozen=True)
class Pairwise:
    """``torch.einsum(equation, left, right)`` for an equation in which every index of an operand
    is either shared with the other operand or kept, compiled to permute + reshape + (b)mm + view."""

    equation: str
    left_perm: tuple[int, ...]  # left -> (batch, left-only, contracted)
    right_perm: tuple[int, ...]  # right -> (batch, contracted, right-only)
    n_batch: int
    n_left: int
    n_right: int
    out_perm: tuple[int, ...]  # (batch, left-only, right-only) -> the result's subscripts

    @classmethod
    def compile(cls, equation: str) -> "Pairwise":
        terms, result = equation.split("->")
        left, right = terms.split(",")
        if len(set(left)) != len(left) or len(set(right)) != len(right) or not set(left) ^ set(right) <= set(result):
            raise ValueError(f"cannot compile {equation!r} to one matmul")
        batch = [c for c in left if c in right and c in result]
        summed = [c for c in left if c in right and c not in result]
        left_only = [c for c in left if c not in right]
        right_only = [c for c in right if c not in left]
        order = batch + left_only + right_only
        return cls(
            equation,
            tuple(left.index(c) for c in batch + left_only + summed),
            tuple(right.index(c) for c in batch + summed + right_only),
            len(batch), len(left_only), len(right_only),
            tuple(order.index(c) for c in result),
        )

    def __call__(self, left: Tensor, right: Tensor) -> Tensor:
        return _pairwise(self, left, right)


def _pairwise(p: Pairwise, left: Tensor, right: Tensor) -> Tensor:
    """``p(left, right)``; a function, so that traced code reads the plan as data (a constant
    made by ``assume_constant_result`` has no source for dynamo to guard a method call on)."""
    nb, nl, nr = p.n_batch, p.n_left, p.n_right
    a = left.permute(p.left_perm)
    b = right.permute(p.right_perm)
    batch, free_l = a.shape[:nb], a.shape[nb:nb + nl]
    free_r = b.shape[b.dim() - nr:]
    k = prod(a.shape[nb + nl:])
    m, n = prod(free_l), prod(free_r)
    if nb:
        out = torch.bmm(a.reshape(-1, m, k), b.reshape(-1, k, n))
    else:
        out = torch.mm(a.reshape(m, k), b.reshape(k, n))
    return out.view(batch + free_l + free_r).permute(p.out_perm)


@dataclass(frozen=True)
class Contraction:
    """A pairwise contraction order: ``steps`` of (i, j, product) in opt_einsum's linear-path
    format (operands i < j leave the list, their ``Pairwise`` product is appended), each
    result's subscripts sorted; ``shapes``: the operand shapes it was planned for."""

    steps: tuple[tuple[int, int, Pairwise], ...]
    flops: int
    cost: int
    shapes: tuple[Shape, ...] = ()

    @classmethod
    def plan(cls, equation: str, shapes: list[Shape], minimize: str = _OPTIMIZER) -> "Contraction":
        """The order of least cost (see the module docstring) for ``equation`` on ``shapes``;
        ``minimize="flops"`` gives the fewest-FLOP order instead."""
        terms, output = equation.split("->")
        terms = terms.split(",")
        if len(terms) == 1:
            return cls((), 0, 0, tuple(shapes))
        path, info = oe.contract_path(equation, *shapes, shapes=True, optimize=oe.DynamicProgramming(minimize=minimize))
        steps, written = [], 0
        for pair in path:
            i, j = sorted(pair)
            rest = [t for k, t in enumerate(terms) if k not in (i, j)]
            needed = set(output).union(*rest)
            result = "".join(sorted((set(terms[i]) | set(terms[j])) & needed))
            steps.append((i, j, Pairwise.compile(f"{terms[i]},{terms[j]}->{result}")))
            written += prod(info.size_dict[c] for c in result)
            terms = rest + [result]
        flops = int(info.opt_cost)
        return cls(tuple(steps), flops, flops + WRITE_COST * written + STEP_COST * len(steps), tuple(shapes))

    def __call__(self, *operands: Tensor) -> Tensor:
        return contract(self, operands)


def contract(contraction: Contraction, operands) -> Tensor:
    """``contraction(*operands)``, as a function (see ``_pairwise``)."""
    operands = list(operands)
    for i, j, product in contraction.steps:
        right, left = operands.pop(j), operands.pop(i)
        operands.append(_pairwise(product, left, right))
    return operands[0]


@lru_cache(maxsize=256)
def weight_contraction(out_shape: Shape, in_shape: Shape, ranks: Shape) -> Contraction:
    """How to build W as a tensor (*out_shape, *in_shape) from the cores; ``ranks`` is
    (r_0, ..., r_d) with r_0 = r_d = 1."""
    cores, out_modes, in_modes = _core_subscripts(len(out_shape))
    return Contraction.plan(",".join(cores) + "->" + out_modes + in_modes, _view_shapes(out_shape, in_shape, ranks))


@_assume_constant_result
def _weight_contraction(out_shape: Shape, in_shape: Shape, ranks: Shape) -> Contraction:
    """``weight_contraction``, which traced code (``torch.compile``) calls eagerly: the plan
    enters the graph as a constant, and no path search or cache is traced."""
    return weight_contraction(out_shape, in_shape, ranks)


def tt_matrix_to_dense(cores) -> Tensor:
    """The full matrix (prod(out_shape), prod(in_shape)) of a TT-matrix given by its cores."""
    out_shape = tuple(c.shape[1] for c in cores)
    in_shape = tuple(c.shape[2] for c in cores)
    ranks = (1,) + tuple(c.shape[-1] for c in cores)
    full = contract(_weight_contraction(out_shape, in_shape, ranks), core_views(cores))
    return full.reshape(prod(out_shape), prod(in_shape))


@dataclass(frozen=True)
class LinearPlan:
    """How to compute ``x @ W.T`` for one batch size.

    ``dense`` says whether to go through the full weight. ``tt_cost``/``dense_cost`` are
    the counted costs of the two routes (the dense one includes building W unless it was
    already built), ``tt_flops``/``dense_flops`` their FLOPs, and ``min_flops`` the fewest
    FLOPs of any TT contraction order. ``contraction`` contracts (x, *cores) on the TT route.
    """

    dense: bool
    tt_cost: int
    dense_cost: int
    tt_flops: int
    dense_flops: int
    min_flops: int
    contraction: Contraction


def linear_network(batch: int, out_shape: Shape, in_shape: Shape, ranks: Shape) -> tuple[str, list[Shape]]:
    """The equation and operand shapes of ``y = x @ W.T`` as a network of x (batch, *in_shape) and the cores."""
    cores, out_modes, in_modes = _core_subscripts(len(out_shape))
    b = oe.get_symbol(0)
    return ",".join([b + in_modes] + cores) + "->" + b + out_modes, [(batch, *in_shape)] + _view_shapes(out_shape, in_shape, ranks)


@lru_cache(maxsize=1024)
def linear_plan(batch: int, out_shape: Shape, in_shape: Shape, ranks: Shape, weight_built: bool,
                calls: int = 1) -> LinearPlan:
    """The cheaper way to compute ``x @ W.T`` for x of shape (batch, prod(in_shape)).

    ``weight_built`` says that the full W is already at hand and needs no gradient (so the
    dense route costs only the matmul and W's read, ``READ_COST`` or ``MEMORY_READ_COST`` per
    element). ``calls``:
    how many products of this size one W serves (the time steps of a recurrence). Costs are per product; the calls share the
    W-sized terms (its build, its reads and gradient writes): measured on TT-LSTMs,
    ``python -m benchmarks.bench_layers --recurrence``.
    """
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    n_out, n_in = prod(out_shape), prod(in_shape)
    dense_flops = 2 * batch * n_out * n_in
    read = READ_COST if n_out * n_in <= CACHED_W else MEMORY_READ_COST
    access = (read if weight_built else WRITE_COST) * n_out * n_in  # W's read, or its gradient
    dense_cost = dense_flops + WRITE_COST * batch * n_out + STEP_COST + access // calls
    if not weight_built:
        build = weight_contraction(out_shape, in_shape, ranks)
        dense_flops += build.flops // calls
        dense_cost += build.cost // calls
    eq, shapes = linear_network(batch, out_shape, in_shape, ranks)
    tt = Contraction.plan(eq, shapes)
    min_flops = int(oe.contract_path(eq, *shapes, shapes=True, optimize="dp")[1].opt_cost)
    return LinearPlan(dense_cost <= tt.cost, tt.cost, dense_cost, tt.flops, dense_flops, min_flops, tt)


@_assume_constant_result
def planned(batch: int, out_shape: Shape, in_shape: Shape, ranks: Shape, weight_built: bool,
            calls: int = 1) -> LinearPlan:
    """``linear_plan``, which traced code (``torch.compile``) calls eagerly: the plan enters the
    graph as a constant, and no path search or cache is traced. All arguments must be ints
    (plan a symbolic size as a concrete one)."""
    return linear_plan(batch, out_shape, in_shape, ranks, weight_built, calls)


def tt_linear_apply(x: Tensor, cores, plan: LinearPlan) -> Tensor:
    """``x @ W.T`` along the TT route: x (batch, prod(in_shape)) -> (batch, prod(out_shape))."""
    x_shape, *views = plan.contraction.shapes  # the planned shapes: a traced core's may be symbolic
    operands = [x.reshape(x.shape[0], *x_shape[1:])] + [c.reshape(v) for c, v in zip(cores, views)]
    return contract(plan.contraction, operands).flatten(1)
