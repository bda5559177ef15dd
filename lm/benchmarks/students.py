"""The study's students compressed from a trained teacher, before any training: how far each starts
from the teacher, and what an epoch of its distillation costs.

    OMP_NUM_THREADS=1 python -m lm.benchmarks.students --preset medium_awd \\
        --checkpoint runs/medium_awd/model.safetensors

For every method of the preset's study (``lm/study/configs/<preset>.toml``) that compresses the dense
teacher (``compress``, no ``base``), the teacher is compressed as the study compresses it
(``lm.compression.surgery.compress_model`` with the method's layers and shape), and for each
quantization-aware fine-tune of such a student (``qat_bits``), the same student put in QAT at its width
(from the compressed teacher, not the distilled student the study starts it from), and each is:

* scored on the start of the validation split (``--valid-tokens``), beside the teacher;
* trained for ``--steps`` steps as its fine-tune trains (the preset's regularisation, SGD at the
  method's rate, distilled from the teacher's stored outputs when the method distills), each step
  timed in CPU seconds of this process; the median step gives the minutes of an epoch and of the
  method's fine-tune, beside a training step of the teacher itself; their sum is the CPU hours of the
  study's student runs on one thread (``students_hours``).

Writes results/bench_students_<preset>.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from ..allocator import retain_freed_memory
from ..compression import qat
from ..compression.surgery import compress_model
from ..distill import Distillation
from ..evaluate import perplexity
from ..model import LanguageModel, count_parameters
from ..results import stamp, write_json
from ..study.methods import Method, load_finetune, load_methods
from ..study.pipeline import finetune_config
from .teacher_setup import TeacherSetup, check_teacher_arguments, results_path, teacher_arguments
from .train_speed import epoch_tokens, train_steps


def student_methods(preset: str, names: list[str] | None = None) -> list[tuple]:
    """``(method, start)`` for the methods of ``preset``'s study that compress the dense teacher, and for
    the quantization-aware fine-tunes of their models (``start``: the method that compresses; ``names``:
    only those)."""
    known = {m.name: m for m in load_methods(preset)}
    pairs = [(m, m) for m in known.values() if m.compress and not m.base]
    pairs += [(m, known[m.base]) for m in known.values()
              if m.qat_bits and m.base in known and known[m.base].compress and not known[m.base].base]
    if names:
        unknown = sorted(set(names) - {m.name for m, _ in pairs})
        if unknown:
            raise ValueError(f"{unknown}: not methods of the {preset} study that compress the teacher or "
                             f"quantization-aware train such a student; those are {[m.name for m, _ in pairs]}")
        pairs = [(m, start) for m, start in pairs if m.name in names]
    return pairs


def untrained_student(teacher: LanguageModel, counts: Tensor, method: Method, start: Method) -> LanguageModel:
    """``method``'s student before any training: ``teacher`` compressed as ``start`` compresses it (``counts``: the
    training words' frequencies), in quantization-aware training at ``method``'s width if it has one."""
    student = compress_model(teacher, counts=counts, **start.compress_kwargs())
    if method.qat_bits:
        qat.enable_qat(student, method.qat_bits, method.qat_every or qat.RANGE_EVERY)
    return student


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    teacher_arguments(p, steps=10, what="training steps timed per model")
    p.add_argument("--methods", nargs="+", help="default: every method that compresses the teacher")
    args = p.parse_args(argv)
    retain_freed_memory()  # as the lm command trains
    check_teacher_arguments(p, args)
    torch.manual_seed(0)
    methods = student_methods(args.preset, args.methods)
    finetune = load_finetune(args.preset)
    setup = TeacherSetup.from_args(args)
    cfg, teacher, valid = setup.cfg, setup.teacher, setup.valid
    per_epoch = epoch_tokens(cfg, setup.corpus) / (cfg.bptt * cfg.batch_size)  # steps

    def row(name: str, model, lr: float, epochs: int, distill: Distillation | None) -> dict:
        with parametrize.cached():  # a QAT weight quantized once, not at every call
            start = perplexity(model.eval(), valid)
        step = statistics.median(train_steps(model, finetune_config(cfg, model, lr, epochs, finetune.regularization),
                                             setup.data, distill=distill, taught=setup.taught))
        r = {"model": name, "parameters": count_parameters(model), "valid_ppl_start": start, "ms_per_step": 1e3 * step,
             "min_per_epoch": step * per_epoch / 60, "epochs": epochs, "hours": step * per_epoch * epochs / 3600}
        print(r, flush=True)
        return r

    rows = [row("teacher", copy.deepcopy(teacher), cfg.lr, cfg.epochs, None)]  # its own training, for scale
    for m, start in methods:
        # a QAT method's base untrained here: the step's cost, and what the grids alone cost at the start
        student = untrained_student(teacher, setup.counts, m, start)
        kd = Distillation(teacher, m.distill.alpha, m.distill.temperature) if m.distill else None
        rows.append(row(m.name, student, m.lr or finetune.lr, m.epochs or finetune.epochs, kd))
    payload = {**stamp({**vars(args), "threads": torch.get_num_threads()}, 0), "valid_tokens": valid.numel(),
               "rows": rows, "students_hours": sum(r["hours"] for r in rows[1:])}  # one thread, every run in turn
    write_json(results_path(args, "bench_students"), payload)
    return payload


if __name__ == "__main__":
    main()
