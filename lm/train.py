"""Training with Zaremba et al.'s recipe: SGD, truncated BPTT over contiguous streams,
gradient clipping, per-epoch learning-rate decay, a checkpoint every epoch, an early stop once the
validation curve no longer moves (``min_gain``); optionally
with Merity et al.'s regularisers (``lm.regularize``) and averaged SGD (ASGD: the weights
averaged over every step from a fixed epoch, or from the one after validation stopped
improving (NT-ASGD); evaluation and the saved model then use the average).

Runs data-parallel under ``torchrun`` (DDP over NCCL on CUDA, gloo on CPU): the
batch's contiguous streams are split between the processes.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .checkpoint import (MODEL_FILE, TRAIN_STATE_FILE, ModelFileError, load, load_train_state, save_model,
                         save_train_state)
from .config import TrainConfig
from .data import Corpus, batchify, bptt_windows
from .distill import Distillation, teacher_features
from .evaluate import perplexity
from .model import LanguageModel, count_parameters, detach
from .modelfile import sha256
from .regularize import Regularization, nt_asgd_triggered
from .results import stamp, write_json


# torch.compile's mode for a training step on each device type: the medium_awd step is ~600 small
# kernels, bound on a GPU by their launches, which a CUDA graph replays at once
COMPILE_MODES = {"cuda": "reduce-overhead", "cpu": "default"}


def curve_stalled(history: list[dict], min_gain: float | None) -> bool:
    """Whether the last epoch of ``history`` lowered the validation perplexity by less than ``min_gain`` (a
    fraction) of the epoch's before it: the early stop of ``TrainConfig.min_gain`` (never with None)."""
    return (min_gain is not None and len(history) >= 2
            and history[-1]["valid_ppl"] > (1 - min_gain) * history[-2]["valid_ppl"])


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stops rather than train through it."""


def _distributed() -> tuple[int, int]:
    """(rank, world_size), initialising the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _default_device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def _resumable(cfg: TrainConfig, model: LanguageModel, optimizer, average: AveragedModel | None, epoch: int,
               history: list, elapsed: float) -> dict:
    """What resuming after the finished ``epoch`` (0-based; -1: none) needs."""
    return {"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "epoch": epoch, "history": history, "elapsed": elapsed,
            **({"average": average.state_dict()} if average is not None else {})}


def continue_state(cfg: TrainConfig, checkpoint: str | os.PathLike, history: list[dict],
                   out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/train_state.safetensors`` for a run of ``cfg`` whose own training state is lost but whose
    checkpoint and per-epoch ``history`` survive (a run on a lent GPU whose device time ended before its state
    came back), so that ``train(cfg, out_dir, resume=True)`` continues it from the epoch after the history's last.

    SGD restarts from the checkpoint's weights (those evaluated after the last epoch: the average, once
    averaging) with a fresh optimizer and the seed's RNG; an average that was running is lost, and averaging
    starts again at the next step when the schedule has reached it. The history's last epoch is marked
    ``continued_from`` (the checkpoint's sha256), so that the run's results and curve say where it restarted;
    the run's wall time counts the continuation only. ValueError if ``out_dir`` already holds a training state,
    if the history is not epochs 1..n with n below ``cfg.epochs``, or if the checkpoint is not ``cfg``'s model.
    """
    state_path = Path(out_dir) / TRAIN_STATE_FILE
    if state_path.exists():
        raise ValueError(f"{state_path} exists: resume that run, or continue into a fresh directory")
    if not history or [h.get("epoch") for h in history] != list(range(1, len(history) + 1)):
        raise ValueError("the history must list epochs 1, 2, ... n in order")
    if len(history) >= cfg.epochs:
        raise ValueError(f"the history has {len(history)} epochs, the config trains {cfg.epochs}: nothing to continue")
    saved = load(checkpoint)
    model = build_model(cfg, saved.vocab)
    try:
        model.load_state_dict(saved.state_dict())
    except RuntimeError as err:
        raise ValueError(f"{checkpoint} is not a model of this config ({str(err).splitlines()[0]})") from None
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = torch.Generator().manual_seed(cfg.seed).get_state()
    marked = [*history[:-1], {**history[-1], "continued_from": sha256(checkpoint)}]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_train_state({**_resumable(cfg, model, optimizer, None, len(history) - 1, marked, 0.0), "rng": rng},
                     state_path)
    return state_path


def _to(state, device: torch.device):
    """A saved recurrent state (tensors in tuples, or None) on ``device``."""
    if state is None:
        return None
    return tuple(_to(s, device) for s in state) if isinstance(state, (tuple, list)) else state.to(device)


def build_model(cfg: TrainConfig, vocab: list[str]) -> LanguageModel:
    """A freshly initialised model (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    model = LanguageModel(cfg.model, vocab)
    model.init_uniform(cfg.init_scale)
    return model


def step_loss(net: nn.Module, inputs: Tensor, targets: Tensor, state, regularization: Regularization | None = None,
              distill: Distillation | None = None, soft: Tensor | None = None) -> tuple[Tensor, float, tuple]:
    """One training window's forward pass.

    Parameters
    ----------
    net : the model (or its DDP wrapper), in training mode.
    inputs, targets : (bptt, batch) token ids of the window.
    state : the recurrent state carried from the previous window (None at a stream's start).
    regularization : Merity et al.'s regularisers (``TrainConfig.regularization()``), or None.
    distill, soft : the distillation, and the teacher's logits (bptt, batch, vocab) for this window.

    Returns
    -------
    The loss to train on (the cross-entropy, mixed with the soft targets when distilling, plus the
    activation penalties),
    the cross-entropy as a float (what training reports), and the new state, detached.
    """
    with parametrize.cached():  # a parametrized weight (QAT's) computed once per step, not per time step
        if regularization is None:
            logits, state = net(inputs, state)
        else:
            logits, state, penalty = net(inputs, state, regularization)
    loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
    value = loss.item()
    if soft is not None:
        loss = distill.loss(loss, logits, soft)
    if regularization is not None and (regularization.ar or regularization.tar):
        loss = loss + penalty  # at the weights asked for, distilled or not
    return loss, value, detach(state)


def sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, steps: int, clip: float,
             average: AveragedModel | None = None) -> None:
    """Zaremba et al.'s update on ``loss``, the mean over a window's tokens: the loss summed over the
    window's ``steps`` time steps and averaged over its streams (the mean times ``steps``), the gradient's
    norm clipped to ``clip``, then the ASGD ``average`` (if any) updated with the new weights."""
    optimizer.zero_grad(set_to_none=True)
    (loss * steps).backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    if average is not None:
        average.update_parameters(model)


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    results_path: str | os.PathLike | None = None,
    progress: bool = True,
    model: LanguageModel | None = None,
    distill: Distillation | None = None,
    save_every: float | None = None,
    compiled: bool = False,
) -> dict:
    """Train ``cfg`` (or fine-tune ``model``) and return the results dict written as JSON.

    Writes ``out_dir/model.safetensors`` (the checkpoint: the averaged weights once ASGD averages)
    and ``out_dir/train_state.safetensors`` (the SGD weights, and the average if any; ``lm.checkpoint``,
    both written atomically) after every epoch; ``resume=True`` continues from the last finished epoch, with the same config
    but for ``epochs`` (a run may be extended, or cut at an epoch it has finished). With ``cfg.min_gain``,
    training ends before ``epochs`` after an epoch that lowered the validation perplexity by less than that
    fraction (``curve_stalled``); a resumed run that had stopped so stays stopped. ``distill``
    adds a teacher's soft targets to the loss (``lm.distill``); the reported training
    perplexity stays the cross-entropy's.

    ``save_every`` (minutes) also saves the training state within an epoch, at the first step that
    many minutes after the last save (0: after every step): the weights, optimizer, RNG and average, the
    step reached, the recurrent state carried between windows and the epoch's running loss, so that
    ``resume=True`` continues from that step and ends exactly as an uninterrupted run. The checkpoint
    (``model.safetensors``) is still written at epoch ends only. One process only (not with DDP).

    ``compiled`` runs the training steps' forward and backward through ``torch.compile`` (in
    ``COMPILE_MODES[device type]``: on CUDA, each step replayed as a CUDA graph); the evaluations stay
    eager, and the weights, checkpoints and resumption are the same.
    """
    rank, world = _distributed()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} processes")
    if save_every is not None and (not math.isfinite(save_every) or save_every < 0):
        raise ValueError(f"save_every must be a number of minutes >= 0, got {save_every}")
    if save_every is not None and world > 1:
        raise ValueError("save_every (saves within an epoch) runs in one process; DDP saves at epoch ends")
    device = torch.device(device) if device is not None else _default_device(rank)
    out_dir = Path(out_dir)
    state_path, model_path = out_dir / TRAIN_STATE_FILE, out_dir / MODEL_FILE

    corpus = Corpus.load(data_dir)
    train_stream = corpus.train[: cfg.max_train_tokens] if cfg.max_train_tokens else corpus.train
    per_rank = cfg.batch_size // world
    train_data = batchify(train_stream, cfg.batch_size)[:, rank * per_rank : (rank + 1) * per_rank].to(device)

    if model is None:
        model = build_model(cfg, corpus.vocab)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    regularization = cfg.regularization()
    average: AveragedModel | None = None  # the ASGD average of the weights, once averaging started
    start_epoch, history, elapsed, partial = 0, [], 0.0, None
    if resume and state_path.is_file():
        saved = load_train_state(state_path)
        # the lr schedule does not depend on the number of epochs, so a run may be extended, or cut at an
        # epoch it has finished; any other change is another run
        if {**saved["config"], "epochs": cfg.epochs} != cfg.to_dict():
            raise ValueError(f"{state_path} was trained with another config; use a fresh --out directory")
        if saved["epoch"] + 1 > cfg.epochs:
            raise ValueError(f"{state_path} has finished {saved['epoch'] + 1} epochs, more than the {cfg.epochs} "
                             "asked for; use a fresh --out directory")
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["rng"])
            if "average" in saved:
                average = AveragedModel(model, use_buffers=False)
                average.load_state_dict(saved["average"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ModelFileError(state_path, f"does not fit the model and optimizer of its config ({err})") from None
        start_epoch, history, elapsed = saved["epoch"] + 1, saved["history"], saved["elapsed"]
        partial = saved.get("partial")  # saved within the epoch start_epoch: continue from its step
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if compiled:
        net = torch.compile(net, mode=COMPILE_MODES[device.type])
    # a copy, so that the caller's teacher keeps its device and mode; its LSTM runs once, here (lm.distill)
    teacher = copy.deepcopy(distill.teacher).to(device).eval() if distill else None
    finished = start_epoch >= cfg.epochs or curve_stalled(history, cfg.min_gain)
    taught = (teacher_features(teacher, train_data, cfg.bptt, progress and rank == 0, cache=distill.cache)
              if teacher is not None and not finished else None)  # none for a finished run

    steps = math.ceil((train_data.shape[0] - 1) / cfg.bptt)
    for epoch in range(start_epoch, cfg.epochs):
        if curve_stalled(history, cfg.min_gain):
            break
        lr = cfg.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if average is None and cfg.asgd_start is not None and epoch + 1 >= cfg.asgd_start:
            average = AveragedModel(model, use_buffers=False)
        net.train()
        state, total, count, tic, done = None, 0.0, 0, time.time(), 0
        if partial is not None:
            state, total, count, done = _to(partial["state"], device), partial["total"], partial["count"], partial["step"]
            tic -= partial["seconds"]
            partial = None
        last_save = time.time()
        windows = itertools.islice(bptt_windows(train_data, cfg.bptt), done, None)
        bar = tqdm(windows, total=steps, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   mininterval=2.0, disable=not progress or rank != 0)
        for step, (inputs, targets) in enumerate(bar, start=done):
            soft = None
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher.decoder(taught[step])
            loss, value, state = step_loss(net, inputs, targets, state, regularization, distill, soft)
            trained = value if teacher is None else loss.item()  # a NaN in the soft term must stop training too
            if not math.isfinite(trained):
                raise TrainingDiverged(
                    f"non-finite loss ({trained}) at epoch {epoch + 1}, step {step + 1}, lr {lr}: "
                    f"lower --lr or --clip, or check the data; the last good checkpoint is {model_path}"
                )
            sgd_step(model, optimizer, loss, inputs.shape[0], cfg.clip, average)
            total += value * targets.numel()
            count += targets.numel()
            if step % 10 == 0:
                rate = count * world / max(time.time() - tic, 1e-9)
                bar.set_postfix(loss=f"{total / count:.3f}", ppl=f"{math.exp(total / count):.1f}", tok_s=f"{rate:.0f}")
            if save_every is not None and step + 1 < steps and time.time() - last_save >= 60 * save_every:
                save_train_state({**_resumable(cfg, model, optimizer, average, epoch - 1, history, elapsed),
                                  "partial": {"epoch": epoch, "step": step + 1, "total": total, "count": count,
                                              "seconds": time.time() - tic, "state": state}}, state_path)
                last_save = time.time()
        seconds = time.time() - tic
        elapsed += seconds
        averaged = average is not None and int(average.n_averaged) > 0
        evaluated = average.module if averaged else model  # the model evaluated and saved
        valid_ppl = perplexity(evaluated, corpus.valid)
        history.append({"epoch": epoch + 1, "lr": lr, "train_ppl": math.exp(total / count), "valid_ppl": valid_ppl,
                        "tokens_per_s": count * world / seconds, "device": device.type,  # a run may move (GPU, then CPU)
                        **({"averaged": averaged} if cfg.asgd_start or cfg.asgd_nonmono else {})})
        if average is None and cfg.asgd_nonmono and nt_asgd_triggered([h["valid_ppl"] for h in history],
                                                                      cfg.asgd_nonmono):
            average = AveragedModel(model, use_buffers=False)  # averages from the next step on
        if rank == 0:
            if progress:
                tqdm.write(f"epoch {epoch + 1}: lr {lr:.4g}  train ppl {math.exp(total / count):.2f}  "
                           f"valid ppl {valid_ppl:.2f}  {count * world / seconds:.0f} tok/s")
            save_model(evaluated, model_path)
            save_train_state(_resumable(cfg, model, optimizer, average, epoch, history, elapsed), state_path)
        if world > 1:
            dist.barrier()

    if average is not None and int(average.n_averaged) > 0:  # the caller's model ends with the averaged weights
        model.load_state_dict(average.module.state_dict())
    if rank == 0 and not model_path.is_file():  # a finished run's training state handed back alone (device_pack)
        save_model(model, model_path)
    test_ppl = perplexity(model, corpus.test)
    # the epochs this run trained itself: those after the last one it was continued from (continue_state)
    restart = max((i for i, h in enumerate(history) if h.get("continued_from")), default=-1)
    own = history[restart + 1:]
    results = {
        **stamp(cfg.to_dict(), cfg.seed),
        "valid_ppl": history[-1]["valid_ppl"] if history else perplexity(model, corpus.valid),
        "test_ppl": test_ppl,
        "parameters": count_parameters(model),
        "checkpoint_bytes": model_path.stat().st_size if model_path.is_file() else None,
        "wall_time_s": elapsed,
        "tokens_per_s": sum(h["tokens_per_s"] for h in own) / max(len(own), 1),
        "device": str(device) + (f" x{world}" if world > 1 else ""),
        **({"continued_after_epoch": history[restart]["epoch"]} if restart >= 0 else {}),
        "history": history,
    }
    if rank == 0:
        write_json(results_path or out_dir / "results.json", results)
    return results
