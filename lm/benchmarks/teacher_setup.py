"""What the benchmarks that distil students from a trained teacher share: their common command-line
options, and the teacher with the data its students train and are scored on."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import load
from ..config import TrainConfig
from ..config import preset as load_preset
from ..data import Corpus
from ..distill import teacher_features
from ..model import LanguageModel
from ..results import RESULTS
from .train_speed import train_prefix, train_stream


def teacher_arguments(p: argparse.ArgumentParser, steps: int, what: str) -> None:
    """Add the options every teacher benchmark takes to ``p``: ``--preset``, ``--checkpoint``, ``--steps``
    (default ``steps``, ``what`` they are), ``--valid-tokens``, ``--data-dir`` and ``--out``."""
    p.add_argument("--preset", default="medium_awd")
    p.add_argument("--checkpoint", required=True, help="the trained dense teacher (model.safetensors)")
    p.add_argument("--steps", type=int, default=steps, help=what)
    p.add_argument("--valid-tokens", type=int, default=20_000, help="validation words scored (0: all)")
    p.add_argument("--data-dir", default=None, help="PTB (default: $PTB_DIR)")
    p.add_argument("--out", default=None, help="default: results/<benchmark>_<preset>.json")


def check_teacher_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, through ``p.error``, a ``--steps`` below 1 or a negative ``--valid-tokens``."""
    if args.steps < 1 or args.valid_tokens < 0:
        p.error("--steps must be >= 1 and --valid-tokens >= 0")


def results_path(args: argparse.Namespace, benchmark: str) -> Path:
    """``--out``, or ``results/<benchmark>_<preset>.json``."""
    return Path(args.out) if args.out else RESULTS / f"{benchmark}_{args.preset}.json"


@dataclass
class TeacherSetup:
    """A trained teacher and the data of its students' benchmark runs.

    Attributes
    ----------
    cfg : TrainConfig
        The preset's recipe.
    corpus : Corpus
        PTB.
    teacher : LanguageModel
        The dense teacher, in eval mode.
    valid : Tensor, shape (valid_tokens,)
        The start of the validation split that is scored.
    counts : Tensor, shape (vocab_size,)
        How often each word occurs in the training words ``cfg`` trains on (what the embeddings'
        compression orders by).
    data : Tensor, shape (steps * bptt + 1, batch_size)
        The first ``steps`` bptt windows of the training words, batchified.
    taught : list of Tensor
        The teacher's stored outputs on each window of ``data`` (``lm.distill.teacher_features``).
    """

    cfg: TrainConfig
    corpus: Corpus
    teacher: LanguageModel
    valid: Tensor
    counts: Tensor
    data: Tensor
    taught: list[Tensor]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TeacherSetup:
        """Load ``args.checkpoint``, trained on the PTB of ``args.data_dir``, with ``args.steps`` windows of
        the preset's training words and ``args.valid_tokens`` validation words (0: all)."""
        cfg = load_preset(args.preset)
        corpus = Corpus.load(args.data_dir)
        teacher = load(args.checkpoint).eval()
        if teacher.vocab is not None and teacher.vocab != corpus.vocab:
            raise ValueError(f"{args.checkpoint} was trained on another vocabulary")
        data = train_prefix(cfg, corpus, args.steps)
        return cls(cfg=cfg, corpus=corpus, teacher=teacher,
                   valid=corpus.valid[: args.valid_tokens] if args.valid_tokens else corpus.valid,
                   counts=torch.bincount(train_stream(cfg, corpus), minlength=teacher.config.vocab_size),
                   data=data, taught=teacher_features(teacher, data, cfg.bptt))
