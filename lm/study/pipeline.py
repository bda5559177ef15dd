"""One model's way from a trained model to a measured artifact: compress -> prune -> fine-tune -> export -> evaluate.

``run`` is the sequence that the study (``lm.study.runner``, once per method) and the budget
search (``lm.study.budget``, for the candidate it picks) both follow. Every number it
returns is the exported artifact's, decoded as it ships.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import ARTIFACT_FILE
from ..compression import prune as pruning
from ..compression import qat
from ..compression.export import ArtifactInfo, export, load_artifact
from ..compression.surgery import compress_model, set_dropout
from ..config import TrainConfig
from ..distill import Distillation
from ..evaluate import perplexity
from ..model import LanguageModel
from ..regularize import Regularization
from ..train import train
from .methods import Finetune, Prune


@dataclass
class Outcome:
    """The exported artifact (``artifact.path``, ``artifact.bytes``), the model decoded from it, and that
    model's perplexities on the streams ``run`` was given."""

    artifact: ArtifactInfo
    decoded: LanguageModel
    valid_ppl: float
    test_ppl: float


def finetune_config(base: TrainConfig, model: LanguageModel, lr: float, epochs: int,
                    regularization: Regularization | None = None, min_gain: float | None = None) -> TrainConfig:
    """``base`` (a preset) set to fine-tune ``model``: plain SGD from ``lr``, halved every epoch, for at most
    ``epochs`` (ending once an epoch gains less than ``min_gain``: ``TrainConfig.min_gain``), with
    ``regularization``'s strengths in place of ``base``'s own (None: ``base``'s). The preset's averaged-SGD
    switch belongs to its own schedule and is left out."""
    cfg = replace(base, model=model.config, epochs=epochs, lr=lr, lr_decay=0.5, decay_start=1, min_gain=min_gain,
                  asgd_start=None, asgd_nonmono=None)
    if regularization is None:
        return cfg
    r = regularization
    return replace(cfg, dropout_input=r.input, dropout_hidden=r.hidden, dropout_output=r.output,
                   dropout_embedding=r.embedding, weight_drop=r.weight, ar=r.ar, tar=r.tar)


def run(start: LanguageModel, out_dir: str | Path, *, valid: Tensor, test: Tensor, layers: dict | None = None,
        counts: Tensor | None = None, prune: Prune | None = None, finetune: Finetune | None = None,
        base: TrainConfig | None = None, distill: Distillation | None = None, qat_bits: int | None = None,
        qat_every: int = qat.RANGE_EVERY, quant: str | None = None,
        data_dir: str | Path | None = None, progress: bool = True, save_every: float | None = None,
        device: str | torch.device | None = None) -> Outcome:
    """Compress ``start`` into a new model (``layers``: ``compress_model``'s keyword arguments, ``counts`` its
    word counts; without ``layers``, ``start`` itself goes on, and is changed in place), prune it,
    fine-tune it (``finetune``, on ``base``'s data and schedule, ``distill``ed; in quantization-aware
    training at ``qat_bits`` bits per weight, its row ranges searched every ``qat_every`` steps, baked
    before export), then export it to
    ``out_dir/artifact.safetensors`` (``quant``) and score the decoded artifact on ``valid`` and ``test``.

    A ``gradual`` prune takes one step before each fine-tuning epoch, each epoch its own run at the
    scheduled rate (``out_dir/train/epoch<k>``); otherwise the model is pruned at once and fine-tuned
    in ``out_dir/train``, resumably (within an epoch too, every ``save_every`` minutes: ``lm.train.train``).
    ``device``: where the fine-tuning runs and the decoded artifact is scored (None: the CPU); the export
    itself is on the CPU.
    """
    out = Path(out_dir)
    model = compress_model(start, counts=counts, **layers) if layers else start
    if finetune is not None:
        if base is None:
            raise ValueError("finetune needs the preset to train on (base=...)")
        dropout = model.config.dropout
        set_dropout(model, finetune.dropout)
    if qat_bits:
        qat.enable_qat(model, qat_bits, qat_every)
    gradual = prune is not None and prune.gradual
    if prune is not None and not gradual:
        pruning.prune_model(model, prune.amount, prune.layers)
    if finetune is not None and gradual:
        if finetune.min_gain is not None:
            raise ValueError("a gradual prune runs every fine-tuning epoch (one per pruning step): no min_gain")
        for epoch, amount in enumerate(pruning.gradual_amounts(prune.amount, finetune.epochs)):
            pruning.prune_model(model, amount, prune.layers)
            cfg = finetune_config(base, model, finetune.lr * 0.5 ** epoch, epochs=1,
                                  regularization=finetune.regularization)
            train(cfg, out / "train" / f"epoch{epoch + 1}", data_dir=data_dir, progress=progress, model=model,
                  distill=distill, device=device or "cpu")
    elif finetune is not None:
        cfg = finetune_config(base, model, finetune.lr, finetune.epochs, finetune.regularization, finetune.min_gain)
        train(cfg, out / "train", data_dir=data_dir, resume=True, progress=progress, model=model, distill=distill,
              save_every=save_every, device=device or "cpu")
    pruning.finalize(model)  # this prune's, or one the caller made
    if qat_bits:
        qat.bake(model)
    if finetune is not None:
        set_dropout(model, dropout)
    info = export(model.cpu().eval(), out / ARTIFACT_FILE, quant)
    decoded = load_artifact(info.path).to(device or "cpu")  # every number below is the shipped artifact's
    valid_ppl, test_ppl = perplexity(decoded, valid), perplexity(decoded, test)
    return Outcome(info, decoded.cpu(), valid_ppl, test_ppl)
