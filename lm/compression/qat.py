"""Quantization-aware training (QAT) at 1 to 8 bits, per row, for every map type.

``enable_qat(model, bits)`` puts a fake-quantizer (``lm.compression.lowbit.fake_quantize``)
on every weight of ``model`` with ``torch.nn.utils.parametrize``: the module reads its
weight on the ``bits``-bit grid in the forward pass, and the gradient reaches the float
weight straight through (zero where a value was clipped). It works on any module, with
no module swapped: the fused LSTM kernel, the low-rank and TT contractions all see the
quantized tensors. ``bake(model)`` takes the model out of QAT, writing the quantized
values into the float weights, which an artifact stores as packed codes exactly.

The rows' clipping ratios come from a search (``lowbit.clip_ratios``) that costs several passes
over the weight; searched at every forward it made a QAT step several times as costly as a
float step (``python -m lm.benchmarks.qat_step``, ``results/bench_qat_step.json``). So each
``FakeQuantize`` keeps the ratios and searches them again only every ``every`` optimizer steps
(``RANGE_EVERY``), and once more at ``bake``; in between, each row's range follows the weight
(its extremes and mean at the kept ratio), so that no value is clipped by a stale range, and
the gradient is straight through within the range, zero outside it.

Which tensors, and what a row is (``row_axes``):

* every floating-point parameter with two or more dimensions is quantized; biases and
  other vectors stay float32 (a few hundred numbers per layer);
* ``nn.Linear`` weight (out, in) and ``torch.nn.LSTM`` weights (4 hidden, in): a row is an
  output channel (axis 0); ``nn.Embedding`` weight (vocab, dim): a word (axis 0), so a
  softmax tied to it shares the rows;
* low-rank factors ``u`` (out, rank) and ``v`` (rank, in) (``LowRankLinear``, GroupReduce
  blocks): axis 0, the output channels of each factor's own product;
* TT cores (r_{k-1}, m_k, n_k, r_k) (``TTLinear``, ``TTEmbedding``): axis 1, the core's
  output (or word) mode. Slice ``G_k[:, i]`` enters exactly the rows of W (the words of
  the table) whose k-th digit is ``i``: the TT analogue of an output channel. The rank
  axes would give the first core a single scale (r_0 = 1), and both together would cost
  more in scales than the core's codes at small ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ttlayers import TTEmbedding, TTLinear

from .lowbit import _check_bits, clip_ratios, dequantize_rows, fake_quantize, quantize_rows, row_ranges


RANGE_EVERY = 16  # optimizer steps between two searches of a weight's row ranges


class FakeQuantize(nn.Module):
    """Parametrization: a weight on its per-row ``bits``-bit grid (straight-through gradient).

    Each row's range is its extremes pulled towards its mean by a clipping ratio chosen by a
    search (``lowbit.clip_ratios``: several passes over the weight, the costly part). The
    ratios are kept in the buffer ``clip`` and searched again at the first forward after every
    ``every`` changes of the weight (the optimizer's in-place steps, counted by the tensor's
    version); the ranges ``lo``, ``hi`` themselves follow the weight at every change, from its
    current extremes and mean at the kept ratios (one pass). ``every=1`` is a full search after
    each step, as ``quantize_rows`` does. ``bake`` searches once more, so an artifact is stored
    on the final weights' own ranges. The buffers are not saved in the state dict;
    ``searches`` counts the searches made.
    """

    def __init__(self, bits: int, axis: int = 0, every: int = RANGE_EVERY) -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1 (optimizer steps between range searches), got {every!r}")
        self.axis = axis
        self.every = every
        self.register_buffer("clip", None, persistent=False)
        self.register_buffer("lo", None, persistent=False)
        self.register_buffer("hi", None, persistent=False)
        self.searches = 0
        self._version: int | None = None  # the weight's version when lo and hi were computed
        self._changes = 0  # changes of the weight since the last search

    def forward(self, weight: Tensor) -> Tensor:
        changed = weight._version != self._version
        if changed:
            self._version = weight._version
            self._changes += 1
        if self.clip is None or self._changes >= self.every or self.clip.device != weight.device:
            self.clip = clip_ratios(weight, self.bits, self.axis)
            self.searches += 1
            self._changes = 0
            changed = True
        if changed or self.lo is None:
            self.lo, self.hi = row_ranges(weight, self.bits, self.axis, self.clip)
        return fake_quantize(weight, self.bits, self.axis, (self.lo, self.hi))

    def reset_ranges(self) -> None:
        """Forget the kept ratios and ranges: the next forward searches them."""
        self.clip = self.lo = self.hi = None
        self._version = None

    def extra_repr(self) -> str:
        return f"bits={self.bits}, axis={self.axis}, every={self.every}"


def row_axes(model: nn.Module) -> dict[str, int]:
    """State-dict name -> row axis of every tensor that QAT and the low-bit artifact quantize.

    A tied weight appears under each of its names (the artifact stores it once). Read on a
    model out of QAT (``bake`` first).
    """
    tt_lists = {id(m.cores) for m in model.modules() if isinstance(m, (TTLinear, TTEmbedding))}
    axes = {}
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p.is_floating_point() and p.dim() >= 2:
                axes[f"{prefix}.{name}" if prefix else name] = 1 if id(module) in tt_lists else 0
    return axes


def enable_qat(model: nn.Module, bits: int, every: int = RANGE_EVERY) -> nn.Module:
    """Fake-quantize every weight of ``model`` (in place) at ``bits`` bits per row, its row ranges
    searched every ``every`` optimizer steps (``FakeQuantize``); returns ``model``."""
    _check_bits(bits)
    FakeQuantize(bits, every=every)  # refuses a bad ``every`` before the model is touched
    if is_qat(model):
        raise ValueError("the model is already in QAT mode: call bake(model) first")
    axes = row_axes(model)
    for prefix, module in list(model.named_modules()):
        for name, _ in list(module.named_parameters(recurse=False)):
            key = f"{prefix}.{name}" if prefix else name
            if key in axes:
                parametrize.register_parametrization(module, name, FakeQuantize(bits, axes[key], every))
    return model


def is_qat(model: nn.Module) -> bool:
    """Whether any weight of ``model`` carries a ``FakeQuantize`` parametrization."""
    return any(isinstance(f, FakeQuantize) for m in model.modules() if parametrize.is_parametrized(m)
               for plist in m.parametrizations.values() for f in plist)


@torch.no_grad()
def bake(model: nn.Module) -> nn.Module:
    """Take ``model`` out of QAT (in place): each weight becomes its quantized value, settled
    (``lowbit.quantize_rows``) so that it quantizes to itself: an artifact stores it exactly.

    Settling changes only rows whose levels are less than a float16 step apart and whose end
    levels went unused (their values move within the row's range). ``parametrize`` writes the
    value into the original ``nn.Parameter`` object, so tied weights stay tied (the second name
    settles the first's output to itself). Returns ``model``.
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            # the parametrized class is shared with every deep copy of the module (an ASGD average,
            # a copied model): remove from a private copy of it, or the copies would lose their weights
            cls = module.__class__
            module.__class__ = type(cls.__name__, cls.__bases__,
                                    {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")})
            for name in list(module.parametrizations):
                fakes = list(module.parametrizations[name])
                if all(isinstance(f, FakeQuantize) for f in fakes):
                    for f in fakes:
                        f.reset_ranges()  # the final weights' own ranges, as an export would search them
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                    weight = getattr(module, name)
                    weight.copy_(dequantize_rows(*quantize_rows(weight, fakes[-1].bits, fakes[-1].axis),
                                                 fakes[-1].bits, fakes[-1].axis))
    return model


__all__ = ["RANGE_EVERY", "FakeQuantize", "row_axes", "enable_qat", "is_qat", "bake"]
