"""How strongly a student's fine-tune should be regularised: one student of the study, compressed from the
trained teacher, distilled for ``--steps`` steps from each learning rate under each regularisation, and scored
on the start of the validation split beside its starting perplexity and the teacher's.

    OMP_NUM_THREADS=2 python -m lm.benchmarks.finetune_regularization --preset medium_awd \\
        --checkpoint runs/medium_awd/model.safetensors

The regularisations: the preset's own strengths (``preset``), the study file's ``[finetune] regularization``
(``finetune``, where it has one) and every regulariser off, weight decay kept (``none``). The student is the
method ``--method`` of the preset's study (``lm/study/configs/<preset>.toml``), compressed as the study
compresses it and distilled as it is distilled, at a constant learning rate. This is the check behind
``[finetune] regularization`` (docs/study.md).

Writes results/bench_finetune_regularization_<preset>.json.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict

import torch

from ..checkpoint import load
from ..compression.surgery import compress_model
from ..config import preset as load_preset
from ..data import Corpus, batchify
from ..distill import Distillation, teacher_features
from ..evaluate import perplexity
from ..regularize import Regularization
from ..results import RESULTS, stamp, write_json
from ..study.methods import load_finetune, load_methods
from ..study.pipeline import finetune_config
from .train_speed import train_steps, train_stream


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="medium_awd")
    p.add_argument("--checkpoint", required=True, help="the trained dense teacher (model.safetensors)")
    p.add_argument("--method", default="lr_tied_kd", help="a method of the study that compresses and distils")
    p.add_argument("--steps", type=int, default=400, help="distillation steps from each learning rate")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.5], help="the constant learning rates tried")
    p.add_argument("--valid-tokens", type=int, default=20_000, help="validation words scored (0: all)")
    p.add_argument("--data-dir", default=None, help="PTB (default: $PTB_DIR)")
    p.add_argument("--out", default=None, help="default: results/bench_finetune_regularization_<preset>.json")
    args = p.parse_args(argv)
    if args.steps < 1 or args.valid_tokens < 0 or any(lr <= 0 for lr in args.lrs):
        p.error("--steps must be >= 1, --valid-tokens >= 0 and every --lrs > 0")
    cfg, finetune = load_preset(args.preset), load_finetune(args.preset)
    method = next((m for m in load_methods(args.preset) if m.name == args.method), None)
    if method is None or not method.compress or not method.distill:
        p.error(f"--method {args.method!r}: not a method of the {args.preset} study that compresses and distils")
    corpus = Corpus.load(args.data_dir)
    teacher = load(args.checkpoint).eval()
    valid = corpus.valid[: args.valid_tokens] if args.valid_tokens else corpus.valid
    start = compress_model(teacher, counts=torch.bincount(train_stream(cfg, corpus), minlength=teacher.config.vocab_size),
                           **method.compress_kwargs())
    data = batchify(corpus.train[: args.steps * cfg.bptt * cfg.batch_size + cfg.batch_size], cfg.batch_size)
    taught = teacher_features(teacher, data, cfg.bptt)
    kd = Distillation(teacher, method.distill.alpha, method.distill.temperature)
    variants = {"preset": None, "finetune": finetune.regularization, "none": Regularization()}
    rows = []
    for name, regularization in variants.items():
        if name == "finetune" and regularization is None:
            continue  # the study file keeps the preset's strengths
        for lr in args.lrs:
            torch.manual_seed(cfg.seed)
            student = copy.deepcopy(start)
            tuned = finetune_config(cfg, student, lr, 1, regularization)
            train_steps(student, tuned, data, distill=kd, taught=taught)
            row = {"regularization": name, "strengths": asdict(tuned.regularization() or Regularization()),
                   "weight_decay": tuned.weight_decay, "lr": lr, "valid_ppl": perplexity(student.eval(), valid)}
            print(row, flush=True)
            rows.append(row)
    payload = {**stamp({**vars(args), "threads": torch.get_num_threads()}, cfg.seed), "valid_tokens": valid.numel(),
               "teacher_valid_ppl": perplexity(teacher, valid), "start_valid_ppl": perplexity(start.eval(), valid),
               "rows": rows}
    write_json(args.out or RESULTS / f"bench_finetune_regularization_{args.preset}.json", payload)
    return payload


if __name__ == "__main__":
    main()
