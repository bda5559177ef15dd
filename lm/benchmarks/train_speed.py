"""Training speed of presets on one thread, side by side: a few hundred SGD steps of each on
the start of PTB's training split, timed in CPU seconds of this process (what one thread does
with a core to itself, however busy the machine) and wall seconds, and the hours that makes
for the preset's full schedule (training steps only; evaluation not counted).

    OMP_NUM_THREADS=1 python -m lm.benchmarks.train_speed --presets medium medium_awd --steps 300

Writes results/bench_train.json. On a GPU (``--device cuda``) the wall seconds count, the device
synchronised at both ends; ``--compile`` adds, after each preset's row, the same steps through
``torch.compile`` (on CUDA in its "reduce-overhead" mode, which replays each step as a CUDA graph: the
medium_awd step is ~600 small kernels, bound by their launches), its speed against the eager row's,
and the seconds its warm-up steps took (the compilation). On this project's CPU the medium_awd step
compiled was slower than eager (1.49 s against 1.22 s, one thread), the tiny one faster.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from ..allocator import retain_freed_memory
from ..config import TrainConfig, preset
from ..data import Corpus, batchify, bptt_windows
from ..distill import Distillation
from ..model import LanguageModel
from ..results import RESULTS, stamp, write_json
from ..train import COMPILE_MODES, build_model, sgd_step, step_loss


def train_steps(model: LanguageModel, cfg: TrainConfig, data: Tensor, average: AveragedModel | None = None,
                distill: Distillation | None = None, taught: list[Tensor] | None = None) -> list[float]:
    """Train ``model`` on every bptt window of ``data`` (steps, batch) with ``lm.train``'s step
    (``cfg``'s optimizer, regularisation and clipping; the ASGD ``average`` updated after each step; the
    loss ``distill``ed against the teacher's decoder on its stored outputs ``taught``, one per window,
    ``lm.distill.teacher_features``). Returns each step's CPU seconds in this process."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    regularization = cfg.regularization()
    state, seconds = None, []
    for step, (inputs, targets) in enumerate(bptt_windows(data, cfg.bptt)):
        tic = time.process_time()
        soft = None
        if distill is not None:
            with torch.no_grad():
                soft = distill.teacher.decoder(taught[step])
        loss, _, state = step_loss(model, inputs, targets, state, regularization, distill, soft)
        sgd_step(model, optimizer, loss, inputs.shape[0], cfg.clip, average)
        seconds.append(time.process_time() - tic)
    return seconds


def train_stream(cfg: TrainConfig, corpus: Corpus) -> Tensor:
    """The training words ``cfg`` trains on: the corpus's, cut to ``cfg.max_train_tokens`` where set."""
    return corpus.train[: cfg.max_train_tokens] if cfg.max_train_tokens else corpus.train


def train_prefix(cfg: TrainConfig, corpus: Corpus, steps: int) -> Tensor:
    """The first ``steps`` bptt windows of the training words ``cfg`` trains on, batchified:
    shape (steps * bptt + 1, batch_size), fewer rows where the words run out."""
    return batchify(train_stream(cfg, corpus)[: steps * cfg.bptt * cfg.batch_size + cfg.batch_size], cfg.batch_size)


def epoch_tokens(cfg: TrainConfig, corpus: Corpus) -> int:
    """The tokens of one training epoch of ``cfg`` (``lm.train``'s batches)."""
    return (train_stream(cfg, corpus).numel() // cfg.batch_size - 1) * cfg.batch_size


def time_steps(name: str, corpus: Corpus, steps: int, averaged: bool, device: str = "cpu",
               compiled: bool = False, warmup: int = 5) -> dict:
    """``steps`` training steps of preset ``name`` as ``lm.train`` takes them (with the ASGD
    average's update after each step if ``averaged``) on ``device``, through ``torch.compile`` if
    ``compiled``, after ``warmup`` untimed steps (their wall seconds reported: the compilation)."""
    cfg = preset(name)
    model = build_model(cfg, corpus.vocab).to(device)
    average = AveragedModel(model, use_buffers=False) if averaged else None
    net = torch.compile(model, mode=COMPILE_MODES[torch.device(device).type]) if compiled else model
    data = train_prefix(cfg, corpus, steps + warmup).to(device)
    first = warmup * cfg.bptt
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    tic = time.perf_counter()
    if warmup:
        train_steps(net, cfg, data[: first + 1], average)
    sync()
    warmup_s, tic = time.perf_counter() - tic, time.perf_counter()
    cpu = sum(train_steps(net, cfg, data[first:], average))
    sync()
    wall = time.perf_counter() - tic
    tokens = (data.shape[0] - 1 - first) * cfg.batch_size
    per_epoch = epoch_tokens(cfg, corpus)
    rate = tokens / (wall if device != "cpu" else cpu)  # a GPU's steps are wall time; a CPU thread's, its own
    return {"preset": name, "asgd_phase": averaged, "device": device, "compiled": compiled,
            "steps": math.ceil((data.shape[0] - 1 - first) / cfg.bptt), "tokens": tokens, "warmup_s": warmup_s,
            "cpu_s": cpu, "wall_s": wall, "tokens_per_cpu_s": tokens / cpu, "tokens_per_wall_s": tokens / wall,
            "epochs": cfg.epochs, "hours_per_epoch": per_epoch / rate / 3600,
            "hours_schedule": cfg.epochs * per_epoch / rate / 3600}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["medium", "medium_awd"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compile", action="store_true", help="each preset also through torch.compile, side by side")
    p.add_argument("--out", default=str(RESULTS / "bench_train.json"))
    args = p.parse_args()
    retain_freed_memory()  # as the lm command trains
    corpus = Corpus.load()
    rows = []
    rate = "tokens_per_cpu_s" if args.device == "cpu" else "tokens_per_wall_s"
    for name in args.presets:
        runs = [False] + ([True] if preset(name).asgd_start or preset(name).asgd_nonmono else [])
        for averaged in runs:
            for compiled in [False] + [True] * args.compile:
                rows.append(time_steps(name, corpus, args.steps, averaged, args.device, compiled))
                if compiled:
                    rows[-1]["speed_vs_eager"] = rows[-1][rate] / rows[-2][rate]
                print(rows[-1], flush=True)
    for r in rows:
        r["speed_vs_first"] = r[rate] / rows[0][rate]
    write_json(args.out, {**stamp(vars(args), None), "rows": rows})


if __name__ == "__main__":
    main()
