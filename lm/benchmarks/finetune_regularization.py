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

from ..allocator import retain_freed_memory
from ..compression.surgery import compress_model
from ..distill import Distillation
from ..evaluate import perplexity
from ..regularize import Regularization
from ..results import stamp, write_json
from ..study.methods import load_finetune, load_methods
from ..study.pipeline import finetune_config
from .teacher_setup import TeacherSetup, check_teacher_arguments, results_path, teacher_arguments
from .train_speed import train_steps


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    teacher_arguments(p, steps=400, what="distillation steps from each learning rate")
    p.add_argument("--method", default="lr_tied_kd", help="a method of the study that compresses and distils")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.5], help="the constant learning rates tried")
    args = p.parse_args(argv)
    retain_freed_memory()  # as the lm command trains
    check_teacher_arguments(p, args)
    if any(lr <= 0 for lr in args.lrs):
        p.error("every --lrs must be > 0")
    finetune = load_finetune(args.preset)
    method = next((m for m in load_methods(args.preset) if m.name == args.method), None)
    if method is None or not method.compress or not method.distill:
        p.error(f"--method {args.method!r}: not a method of the {args.preset} study that compresses and distils")
    setup = TeacherSetup.from_args(args)
    cfg, teacher, valid = setup.cfg, setup.teacher, setup.valid
    start = compress_model(teacher, counts=setup.counts, **method.compress_kwargs())
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
            train_steps(student, tuned, setup.data, distill=kd, taught=setup.taught)
            row = {"regularization": name, "strengths": asdict(tuned.regularization() or Regularization()),
                   "weight_decay": tuned.weight_decay, "lr": lr, "valid_ppl": perplexity(student.eval(), valid)}
            print(row, flush=True)
            rows.append(row)
    payload = {**stamp({**vars(args), "threads": torch.get_num_threads()}, cfg.seed), "valid_tokens": valid.numel(),
               "teacher_valid_ppl": perplexity(teacher, valid), "start_valid_ppl": perplexity(start.eval(), valid),
               "rows": rows}
    write_json(results_path(args, "bench_finetune_regularization"), payload)
    return payload


if __name__ == "__main__":
    main()
