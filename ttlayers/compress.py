"""Model surgery: replace the dense layers of a trained model by TT or low-rank layers, in place.

``compress(model, "tt", rank=16)`` walks ``model`` and replaces every ``nn.Linear`` by a
``TTLinear`` (``"low_rank"``: a ``LowRankLinear``), every ``nn.Embedding`` by a
``TTEmbedding`` (TT only), and every ``nn.LSTM`` by a ``ttlayers.LSTM`` whose maps are
compressed the same way; each is initialised from the trained weights (TT-SVD or
truncated SVD). It returns a report of the parameter counts before and after.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ._tt_layout import capped_ranks, mode_shapes, tt_size
from .low_rank import LowRankLinear
from .lstm import LSTM
from .tt_embedding import TTEmbedding
from .tt_linear import TTLinear

METHODS = ("tt", "low_rank")


@dataclass
class LayerReport:
    """One replaced layer: its qualified name, types, parameter counts, ranks and relative
    Frobenius error ``||W - W'|| / ||W||`` of the weight."""

    name: str
    before: str
    after: str
    params_before: int
    params_after: int
    ranks: tuple[int, ...]
    rel_error: float


@dataclass
class CompressionReport:
    """Parameter counts of the whole model (shared parameters counted once) and per layer."""

    params_before: int
    params_after: int
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.params_before / self.params_after

    def __str__(self) -> str:
        lines = [f"{'layer':30s} {'from':>10s} {'to':>14s} {'params':>22s} {'ranks':>16s} {'rel.err':>8s}"]
        for r in self.layers:
            lines.append(f"{r.name:30s} {r.before:>10s} {r.after:>14s} {r.params_before:>10d} -> {r.params_after:<9d} "
                         f"{str(r.ranks):>16s} {r.rel_error:8.4f}")
        lines.append(f"total parameters {self.params_before} -> {self.params_after} ({self.ratio:.2f}x smaller)")
        return "\n".join(lines)


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters of ``module`` (tied ones counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def compress(
    module: nn.Module,
    method: str = "tt",
    *,
    rank: int | Sequence[int] | None = None,
    rel_eps: float | None = None,
    ratio: float | None = None,
    ranks: Mapping[str, int | Sequence[int]] | None = None,
    skip: Sequence[str] = (),
) -> CompressionReport:
    """Replace, in place, the ``nn.Linear``, ``nn.Embedding`` and ``nn.LSTM`` submodules of ``module``.

    Args:
        method: ``"tt"`` (``TTLinear``/``TTEmbedding`` by TT-SVD, default 3 modes) or
            ``"low_rank"`` (``LowRankLinear`` by truncated SVD; embeddings are left alone).
        rank: rank of every layer (TT: cap on every bond).
        rel_eps: TT only: relative Frobenius error bound of every layer's weight (with ``rank``,
            both bounds apply).
        ratio: target compression of every layer's weight (dense size / factored size); each
            layer gets the largest uniform rank within it. Excludes ``rank`` and ``rel_eps``.
        ranks: per-layer ranks by qualified name (as in ``named_modules``), overriding the
            above; the name of an LSTM sets all its maps.
        skip: qualified names of layers (or of modules containing them) to leave dense.

    Exact types only are replaced (``type(m) is nn.Linear``: subclasses such as attention
    projections are left alone). A layer registered under several names is factored once and the
    one replacement put at each; a weight shared by two layers (tied) is factored twice,
    untying it, with a warning. Each replacement keeps its layer's mode (``training``) and, for a
    layer with every parameter frozen, is frozen too. If a layer cannot be factored, the error
    names it and ``module`` is left as it was. Returns a :class:`CompressionReport`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if ratio is not None and (rank is not None or rel_eps is not None):
        raise ValueError("give either ratio or rank/rel_eps, not both")
    if ratio is not None and not ratio >= 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    if method == "low_rank" and rel_eps is not None:
        raise ValueError("rel_eps applies to method='tt' only; give rank or ratio for low_rank")
    if method == "low_rank" and rank is None and ratio is None and not ranks:
        raise ValueError("method='low_rank' needs a rank or a ratio (or per-layer ranks)")
    if type(module) in (nn.Linear, nn.Embedding, nn.LSTM):
        raise ValueError(f"compress replaces submodules; pass a model containing the {type(module).__name__}, "
                         "or use TTLinear.from_linear / TTEmbedding.from_embedding / tt_lstm directly")
    ranks = dict(ranks or {})
    before = count_parameters(module)

    def skipped(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in skip)

    replaced = []  # (name, the module it replaced), undone if a later layer fails

    def put(names: list[str], old: nn.Module, new: nn.Module) -> None:
        new.train(old.training)
        if not any(p.requires_grad for p in old.parameters()):
            new.requires_grad_(False)
        for name in names:
            replaced.append((name, _replace(module, name, new)))

    report = CompressionReport(before, 0)
    try:
        for names, child in _by_module(module, lambda n, m: type(m) is nn.LSTM and not skipped(n)):
            with _naming(names[0]):
                put(names, child, LSTM.from_torch(child))
        targets = _by_module(module, lambda n, m: not skipped(n) and (
            type(m) is nn.Linear or (type(m) is nn.Embedding and method == "tt")))
        _warn_tied([(names[0], m) for names, m in targets])
        for names, child in targets:
            name = names[0]
            layer_rank = _lookup(ranks, name)
            with _naming(name):
                new = _factor(child, method, rank if layer_rank is None else layer_rank,
                              None if layer_rank is not None else rel_eps, None if layer_rank is not None else ratio)
            put(names, child, new)
            report.layers.append(_layer_report(name, child, new))
    except BaseException:
        for name, old in reversed(replaced):
            _replace(module, name, old)
        raise
    report.params_after = count_parameters(module)
    return report


@contextmanager
def _naming(name: str):
    """Prefix a ``ValueError`` or ``TypeError`` raised inside with the layer's name."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise type(err)(f"layer {name!r}: {err}") from None


def _by_module(root: nn.Module, wanted) -> list[tuple[list[str], nn.Module]]:
    """``(names, module)`` for each module ``m`` under ``root`` with ``wanted(name, m)``, with every
    name it is registered under, in ``named_modules`` order."""
    found: dict[int, tuple[list[str], nn.Module]] = {}
    for name, m in root.named_modules(remove_duplicate=False):
        if wanted(name, m):
            found.setdefault(id(m), ([], m))[0].append(name)
    return list(found.values())


def _lookup(ranks: Mapping[str, object], name: str):
    """The rank for ``name``: its own entry or that of its nearest listed ancestor."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        key = ".".join(parts[:k])
        if key in ranks:
            return ranks[key]
    return None


def _factor(layer: nn.Module, method: str, rank, rel_eps, ratio) -> nn.Module:
    rows, cols = layer.weight.shape
    if method == "low_rank":
        if ratio is not None:
            rank = max(1, math.floor(rows * cols / ratio / (rows + cols)))
        if rank is None:
            raise ValueError("method='low_rank' needs a rank or a ratio")
        return LowRankLinear.from_linear(layer, min(rank, rows, cols))
    if ratio is not None:
        rank = _rank_for_ratio(rows, cols, ratio)
    if isinstance(layer, nn.Embedding):
        return TTEmbedding.from_embedding(layer, rank=rank, rel_eps=rel_eps)
    return TTLinear.from_linear(layer, rank=rank, rel_eps=rel_eps)


def _rank_for_ratio(rows: int, cols: int, ratio: float) -> int:
    """Largest uniform TT rank (default mode shapes) whose cores hold at most rows * cols / ratio
    entries (at least 1)."""
    row_shape, col_shape = mode_shapes(rows, cols, None, None, "row_shape", "col_shape")
    budget = rows * cols / ratio
    top = max(capped_ranks(rows * cols, row_shape, col_shape))
    low, high = 1, top
    while low < high:
        mid = (low + high + 1) // 2
        if tt_size(row_shape, col_shape, capped_ranks(mid, row_shape, col_shape)) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def _replace(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` under ``root``; returns the module it replaced."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


def _warn_tied(targets) -> None:
    seen = {}
    for name, m in targets:
        key = id(m.weight)
        if key in seen:
            warnings.warn(f"{name} and {seen[key]} share a weight; compress factors each and unties them", stacklevel=3)
        seen[key] = name


def _layer_report(name: str, old: nn.Module, new: nn.Module) -> LayerReport:
    with torch.no_grad():
        weight = old.weight.detach()
        error = float(torch.linalg.norm(new.dense_weight() - weight) / torch.linalg.norm(weight).clamp_min(1e-30))
    ranks = (new.rank,) if isinstance(new, LowRankLinear) else tuple(new.ranks)
    return LayerReport(name, type(old).__name__, type(new).__name__, count_parameters(old), count_parameters(new),
                       ranks, error)
