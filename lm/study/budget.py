"""Compression to a size budget, as Grachev et al. (2019) propose.

``compress_to_budget(checkpoint, budget_mb)`` tries every family of compressions
(magnitude pruning, GroupReduce embedding and softmax, the same with an LR-LSTM, TT
embedding and softmax, and plain 8-bit quantization), each stored in float32 or in
8 bits. For each family it finds by bisection the mildest setting whose exported
artifact fits the budget, scores that candidate on a prefix of the validation set,
fine-tunes the best one with the study's recipe, and writes its artifact and results.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..checkpoint import load
from ..compression import prune as pruning
from ..compression.export import artifact_size
from ..compression.surgery import compress_model
from ..config import PRESETS, TrainConfig, preset
from ..data import Corpus
from ..evaluate import perplexity
from ..model import LanguageModel, count_parameters
from ..results import stamp, write_json
from . import pipeline
from .methods import Finetune, load_finetune, presets
from .report import MB


@dataclass
class Family:
    """A one-knob family: ``build(dense, keep, counts)``, larger ``keep`` in ``(lo, hi]`` = larger artifact."""

    name: str
    build: Callable[[LanguageModel, float, torch.Tensor], LanguageModel]
    lo: float
    hi: float
    integer: bool = False


def _gr(keep: float) -> dict:
    return {"type": "groupreduce", "groups": 6, "ratio": 1 / keep, "alpha": 0.5}


def families(hidden: int, vocab: int) -> list[Family]:
    prune_all = ["embedding", "lstm", "decoder"]
    gr_lo = 1.05 * (vocab + 6 * hidden) / (vocab * hidden)  # every one of the 6 blocks at rank >= 1
    return [
        Family("pruned", lambda m, k, c: pruning.prune_model(copy.deepcopy(m), 1 - k, prune_all), 0.01, 1.0),
        Family("groupreduce", lambda m, k, c: compress_model(m, embedding=_gr(k), decoder=_gr(k), counts=c), gr_lo, 0.5),
        Family("groupreduce+lr_lstm",
               lambda m, k, c: compress_model(m, embedding=_gr(k), decoder=_gr(k), counts=c,
                                              lstm={"type": "lr_lstm", "rank": max(1, round(k * hidden))}), gr_lo, 0.5),
        Family("tt", lambda m, k, c: compress_model(m, embedding={"type": "tt", "rank": int(k)},
                                                    decoder={"type": "tt", "rank": int(k)}), 1, 64, integer=True),
        Family("dense", lambda m, k, c: copy.deepcopy(m), 1.0, 1.0),
    ]


def _size(model: LanguageModel, quant: str | None) -> int:
    return artifact_size(pruning.finalized_copy(model), quant)


def fit(family: Family, dense: LanguageModel, counts: torch.Tensor, budget: int, quant: str | None,
        steps: int = 7) -> tuple[float, LanguageModel, int] | None:
    """The largest ``keep`` of ``family`` whose artifact fits ``budget`` bytes: (keep, model, bytes), or None."""
    def attempt(k: float):
        model = family.build(dense, k, counts)
        return model, _size(model, quant)

    model, size = attempt(family.hi)
    if size <= budget:
        return family.hi, model, size
    if family.lo == family.hi:
        return None
    model, size = attempt(family.lo)
    if size > budget:
        return None
    best, lo, hi = (family.lo, model, size), family.lo, family.hi
    for _ in range(steps):
        if family.integer and hi - lo <= 1:
            break
        mid = (lo + hi) // 2 if family.integer else math.sqrt(lo * hi)
        model, size = attempt(mid)
        if size <= budget:
            best, lo = (mid, model, size), mid
        else:
            hi = mid
    return best


def _finetune_config(dense: LanguageModel) -> tuple[TrainConfig, Finetune]:
    """The study preset whose hidden size matches the dense model (small otherwise) and its fine-tuning recipe."""
    name = next((n for n in PRESETS if n in presets() and PRESETS[n].model.hidden_size == dense.config.hidden_size),
                "small")
    return preset(name), load_finetune(name)


def compress_to_budget(checkpoint: str | os.PathLike, budget_mb: float, out_dir: str | os.PathLike | None = None,
                       data_dir: str | os.PathLike | None = None, finetune_epochs: int | None = None,
                       search_tokens: int = 20_000, progress: bool = True) -> dict:
    """Compress the model at ``checkpoint`` to at most ``budget_mb`` MB (10^6 bytes) at the best validation PPL.

    Writes ``out_dir/artifact.safetensors`` (the artifact) and ``out_dir/result.json``; returns the result.
    """
    if budget_mb <= 0:
        raise ValueError(f"budget_mb must be positive, got {budget_mb}")
    budget = int(budget_mb * MB)
    out = Path(out_dir) if out_dir else Path(checkpoint).with_name(f"compressed_{budget_mb:g}MB")
    dense = load(checkpoint)
    corpus = Corpus.load(data_dir)
    base, recipe = _finetune_config(dense)
    counts = torch.bincount(corpus.train, minlength=dense.config.vocab_size)
    search = corpus.valid[:search_tokens]
    candidates = []
    for family in families(dense.config.hidden_size, dense.config.vocab_size):
        for quant in (None, "q8"):
            found = fit(family, dense, counts, budget, quant)
            if found is None:
                continue
            keep, model, size = found
            ppl = perplexity(pruning.finalized_copy(model).eval(), search)
            candidates.append({"family": family.name, "quant": quant, "keep": keep, "bytes": size, "search_ppl": ppl,
                               "model": model})
            if progress:
                tqdm.write(f"{family.name:>20} {str(quant):>5}: keep {keep:.4g}, {size / MB:.3f} MB, "
                           f"valid[:{len(search)}] ppl {ppl:.2f}")
    if not candidates:
        raise ValueError(f"no compression fits {budget_mb} MB; the smallest family settings are still larger")
    best = min(candidates, key=lambda c: c["search_ppl"])
    model = best.pop("model")
    finetune = None if best["family"] == "dense" else Finetune(
        finetune_epochs or recipe.epochs, recipe.lr, max(dense.config.dropout, recipe.dropout), recipe.regularization)
    done = pipeline.run(model, out, valid=corpus.valid, test=corpus.test, finetune=finetune, base=base,
                        quant=best["quant"], data_dir=data_dir, progress=progress)
    result = {
        **stamp({"checkpoint": str(checkpoint), "budget_mb": budget_mb, "search_tokens": search_tokens,
                 "finetune": recipe.to_dict(), "finetune_epochs": finetune_epochs}, base.seed),
        "chosen": best, "artifact": str(done.artifact.path), "size_bytes": done.artifact.bytes,
        "size_mb": done.artifact.bytes / MB, "parameters": count_parameters(done.decoded),
        "valid_ppl": done.valid_ppl, "test_ppl": done.test_ppl,
        "candidates": [{k: v for k, v in c.items() if k != "model"} for c in candidates],
    }
    write_json(out / "result.json", result)
    return result
