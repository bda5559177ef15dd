"""Knowledge distillation (Hinton et al., 2015) from a dense teacher while fine-tuning a compressed model.

The student's loss mixes the usual cross-entropy with the teacher's softened
next-word distribution: ``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)``,
where ``_T`` is a softmax at temperature ``T`` (the ``T^2`` keeps the gradient scale of
the soft term independent of ``T``). Training adds the AR/TAR penalties to the mix at their own
weights (``lm.train.step_loss``).

The teacher is in eval mode, so its logits for a training window do not change from one
epoch to the next: ``teacher_features`` runs its LSTM once over the training stream, and each
step then runs only the teacher's decoder on the stored outputs (the same numbers as running the
whole teacher at every step). With a ``cache`` folder those outputs are also kept on disk, keyed
by the teacher's weights, the stream and the window length, so that the next run with the same
teacher and data (another student, a resumed run) reads them instead of running the LSTM again.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from tqdm import tqdm

from .data import bptt_windows


@dataclass
class Distillation:
    """A teacher (a ``LanguageModel`` over the student's vocabulary) and the loss mix."""

    teacher: nn.Module  # a LanguageModel (its ``features`` and ``decoder``)
    alpha: float = 0.5
    temperature: float = 2.0
    cache: str | os.PathLike | None = None  # a folder keeping the teacher's outputs between runs (teacher_features)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be positive and finite, got {self.temperature}")

    def loss(self, cross_entropy: Tensor, student: Tensor, teacher: Tensor) -> Tensor:
        """The mixed loss from the student's cross-entropy and both models' logits (..., vocab)."""
        return (1 - self.alpha) * cross_entropy + self.alpha * soft_target_loss(student, teacher, self.temperature)


def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over tokens.

    student, teacher: logits (..., vocab) of the same shape; zero exactly where the two
    agree up to a constant per token. No gradient flows to the teacher.

    Computed a few rows at a time on the CPU, where the rows' softmaxes stay in cache (on a
    GPU, all at once), with its gradient ``T (softmax(student / T) - softmax(teacher / T)) / tokens``
    written in the same pass, instead of several whole-tensor passes over (tokens, vocab) and autograd's.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    vocab = student.shape[-1]
    return _SoftTargetLoss.apply(student.reshape(-1, vocab), teacher.detach().reshape(-1, vocab), temperature)


class _SoftTargetLoss(torch.autograd.Function):
    """``soft_target_loss`` on (tokens, vocab) logits; the gradient with respect to the student's logits is
    computed in the forward pass and kept (in place of the student's log-softmax that autograd would keep)."""

    CACHE_ELEMENTS = 1 << 16  # logits per block of rows on the CPU (256 KB in float32)

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        tokens, vocab = student.shape
        rows = max(1, _SoftTargetLoss.CACHE_ELEMENTS // vocab) if student.device.type == "cpu" else tokens
        grad = torch.empty_like(student)
        total = student.new_zeros(())
        for i in range(0, tokens, rows):
            log_p = torch.log_softmax(student[i : i + rows] / temperature, -1)
            log_q = torch.log_softmax(teacher[i : i + rows] / temperature, -1)
            q = log_q.exp()
            total += torch.sum(q * (log_q - log_p))
            torch.sub(log_p.exp_(), q, out=grad[i : i + rows])
        ctx.save_for_backward(grad)
        ctx.scale = temperature / tokens
        return total * (temperature**2 / tokens)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * (grad_output * ctx.scale), None, None


@torch.no_grad()
def teacher_features(teacher: nn.Module, data: Tensor, bptt: int, progress: bool = False,
                     cache: str | os.PathLike | None = None) -> list[Tensor]:
    """The teacher's ``features`` (its decoder's input) for every bptt window of ``data`` (steps, batch), in
    order, the state carried from window to window as in an epoch of training: one (seq_len, batch, features)
    tensor per window. ``teacher`` must be in eval mode.

    ``cache``: a folder where the outputs are kept (``teacher_outputs_<key>.safetensors``, written atomically),
    the key a sha256 of the teacher's weights and config, ``data``, ``bptt`` and the torch version; a file with
    the key is read instead of running the teacher, the same numbers bit for bit."""
    if teacher.training:
        raise ValueError("the teacher's outputs are stored once: it must be in eval mode")
    path = Path(cache) / f"teacher_outputs_{_key(teacher, data, bptt)}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        return list(torch.split(load_file(path, device=str(data.device))["outputs"], bptt))  # where computed
    outputs, state = [], None
    for inputs, _ in tqdm(bptt_windows(data, bptt), total=math.ceil((data.shape[0] - 1) / bptt),
                          desc="teacher outputs", mininterval=2.0, disable=not progress):
        out, state = teacher.features(inputs, state)
        outputs.append(out)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file({"outputs": torch.cat(outputs).contiguous()}, partial)
        os.replace(partial, path)
    return outputs


def _remove_orphans(path: Path) -> None:
    """Delete the partial writes of ``path`` left by processes that no longer run (killed while saving);
    another live process's write is left alone."""
    for partial in path.parent.glob(f"{path.name}.*.tmp"):
        pid = partial.name[len(path.name) + 1 : -len(".tmp")]
        if pid.isdigit() and not _running(int(pid)):
            partial.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _key(teacher: nn.Module, data: Tensor, bptt: int) -> str:
    """What the teacher's outputs on ``data`` depend on, hashed: its weights and config, the stream, the
    window length and the torch version."""
    h = hashlib.sha256(f"{torch.__version__}|{bptt}|{getattr(teacher, 'config', None)!r}".encode())
    for name, t in [("data", data), *teacher.state_dict().items()]:
        t = t.detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]
