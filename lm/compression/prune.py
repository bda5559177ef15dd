"""Magnitude pruning of a language model with ``torch.nn.utils.prune``.

``prune_model(model, amount, layers=("decoder",))`` zeroes the smallest-magnitude
weights of the named parts (``"embedding"``, ``"lstm"``, ``"decoder"``), layer by
layer or globally over all of them. The masks stay attached (``weight_orig`` and
``weight_mask``) so that retraining keeps the pruned weights at zero; ``finalize``
makes the zeros permanent before export. Repeated calls prune further, each
``amount`` being a fraction of the weights still alive, which is how
``gradual_amounts`` (Zhu & Gupta's cubic schedule) is applied between epochs.

The fused LSTM kernel reads the maps' ``weight`` attributes without calling the maps,
so a pruned LSTM gets a pre-hook that recomputes ``weight = weight_orig * mask``
before every forward.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import prune

PARTS = ("embedding", "lstm", "decoder")


def _targets(model: nn.Module, layers: Iterable[str]) -> list[tuple[nn.Module, str]]:
    targets = []
    for part in layers:
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r} to prune; choose from {PARTS}")
        module = getattr(model, part)
        targets += [(m, "weight") for m in module.modules()
                    if isinstance(m, (nn.Linear, nn.Embedding)) and hasattr(m, "weight")]
    if not targets:
        raise ValueError(f"no dense Linear/Embedding weights to prune in {list(layers)}")
    return targets


def _refresh_masks(module: nn.Module, _inputs) -> None:
    """Pre-hook: recompute every pruned ``weight`` below ``module`` from ``weight_orig`` and its mask."""
    for m in module.modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                hook(m, None)


def prune_model(model: nn.Module, amount: float, layers: Iterable[str] = ("decoder",), scope: str = "layer") -> nn.Module:
    """Prune ``amount`` (a fraction in [0, 1)) of the remaining weights of ``layers``, in place.

    ``scope="layer"`` prunes each weight matrix by its own magnitudes;
    ``scope="global"`` ranks the magnitudes of all of them together.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount}")
    targets = _targets(model, layers)
    if scope == "layer":
        for module, name in targets:
            prune.l1_unstructured(module, name, amount)
    elif scope == "global":
        prune.global_unstructured(targets, prune.L1Unstructured, amount=amount)
    else:
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    lstm = getattr(model, "lstm", None)
    if lstm is not None and "lstm" in layers and not getattr(lstm, "_prune_refresh", None):
        lstm._prune_refresh = lstm.register_forward_pre_hook(_refresh_masks)
    return model


def finalize(model: nn.Module) -> nn.Module:
    """Make the pruning permanent: drop the masks and keep the zeroed weights, in place."""
    for m in model.modules():
        if any(isinstance(h, prune.BasePruningMethod) for h in m._forward_pre_hooks.values()):
            _refresh_masks(m, None)
            prune.remove(m, "weight")
        handle = m.__dict__.pop("_prune_refresh", None)
        if handle is not None:
            handle.remove()
    return model


def finalized_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its pruning made permanent; ``model`` keeps its masks."""
    with torch.no_grad():
        _refresh_masks(model, None)  # masked weights without autograd history, so deepcopy can copy them
    return finalize(copy.deepcopy(model))


def sparsity(model: nn.Module, layers: Iterable[str] = PARTS) -> float:
    """Fraction of zeros among the weights of ``layers``."""
    zeros = total = 0
    for module, name in _targets(model, layers):
        w = getattr(module, name)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total


def gradual_amounts(final: float, steps: int) -> list[float]:
    """Per-step ``amount`` arguments reaching sparsity ``final`` after ``steps`` calls.

    Sparsity after step t is ``final * (1 - (1 - t / steps) ** 3)`` (Zhu & Gupta 2017);
    each amount is the fraction of the still-alive weights to remove at that step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    levels = [final * (1 - (1 - t / steps) ** 3) for t in range(steps + 1)]
    return [(levels[t + 1] - levels[t]) / (1 - levels[t]) for t in range(steps)]
