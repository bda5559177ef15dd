"""8-bit quantization: the paper's uniform scheme for storage, and int8 execution.

Grachev et al. quantize every tensor to 256 equal intervals between its minimum and
maximum and store one byte per number. ``quantize_uniform`` does that per tensor or,
with ``per_channel=True``, per output row (dim 0). ``fake_quantize_`` writes the
dequantized values back into a model, which is what the stored artifact decodes to.
``int8_dynamic`` is ``torch.ao.quantization.quantize_dynamic``: int8 weights and
int8 matrix products at run time, for the CPU latency measurements.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

LEVELS = 256


def quantize_uniform(t: Tensor, per_channel: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Codes (uint8, same shape as ``t``), ``lo`` and ``step`` with ``t ~ lo + codes * step``.

    ``lo`` and ``step`` are float32 scalars, or (rows,) vectors for ``per_channel``
    (rows = ``t.shape[0]``; a 1-D tensor is always quantized per tensor).
    """
    if not t.is_floating_point():
        raise ValueError(f"can only quantize floating-point tensors, got {t.dtype}")
    if t.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    x = t.detach().float()
    if per_channel and x.dim() > 1:
        flat = x.reshape(x.shape[0], -1)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        step = (hi - lo) / (LEVELS - 1)
        safe = torch.where(step > 0, step, torch.ones_like(step))
        codes = torch.round((flat - lo[:, None]) / safe[:, None]).clamp_(0, LEVELS - 1).to(torch.uint8)
        return codes.reshape(x.shape), lo, step
    lo, hi = x.min(), x.max()
    step = (hi - lo) / (LEVELS - 1)
    safe = step if step > 0 else torch.ones_like(step)
    codes = torch.round((x - lo) / safe).clamp_(0, LEVELS - 1).to(torch.uint8)
    return codes, lo, step


def dequantize(codes: Tensor, lo: Tensor, step: Tensor) -> Tensor:
    """float32 values ``lo + codes * step`` (per-row when ``lo`` is a vector)."""
    x = codes.float()
    if lo.dim() == 1:
        shape = (-1,) + (1,) * (x.dim() - 1)
        return lo.view(shape) + x * step.view(shape)
    return lo + x * step


@torch.no_grad()
def fake_quantize_(model: nn.Module, per_channel: bool = False) -> nn.Module:
    """Replace every floating-point parameter by its 8-bit reconstruction, in place."""
    for p in model.parameters():
        p.copy_(dequantize(*quantize_uniform(p, per_channel)).to(p.dtype))
    return model


def _torch_lstm(lstm: nn.Module) -> nn.LSTM:
    """``torch.nn.LSTM`` copy of a dense ``ttlayers.LSTM`` without projections (its maps are all ``nn.Linear``)."""
    out = nn.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, bias=lstm.bias, dropout=lstm.dropout,
                  batch_first=lstm.batch_first)
    with torch.no_grad():
        for k, layer in enumerate(lstm.layers):
            getattr(out, f"weight_ih_l{k}").copy_(layer.input_map.weight)
            getattr(out, f"weight_hh_l{k}").copy_(layer.recurrent_map.weight)
            if lstm.bias:
                getattr(out, f"bias_ih_l{k}").copy_(layer.input_map.bias)
                getattr(out, f"bias_hh_l{k}").copy_(layer.recurrent_map.bias)
    return out


def int8_dynamic(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with int8 dynamically quantized ``nn.Linear`` and ``nn.LSTM`` modules.

    A dense ``ttlayers.LSTM`` without projections is first swapped for ``torch.nn.LSTM``
    (same calling convention) so that torch's quantized LSTM kernel runs it. A dense one
    with projections (the LR-LSTM) stays float: torch has no quantized kernel for it, and
    int8 maps would turn its fused ``torch.lstm`` call into a slower per-step loop of
    small products. Factorised LSTMs (TT) run their per-step
    loop anyway and get int8 ``nn.Linear`` maps where they have any.
    """
    model = copy.deepcopy(model).eval()
    spec: dict = {nn.Linear: torch.ao.quantization.default_dynamic_qconfig,
                  nn.LSTM: torch.ao.quantization.default_dynamic_qconfig}
    layers = getattr(getattr(model, "lstm", None), "layers", None)  # a ttlayers.LSTM's
    if layers and all(layer.is_dense for layer in layers):
        lstm = model.lstm
        if lstm.proj_size:
            spec.update({f"lstm.{name}": None for name, _ in lstm.named_modules() if name})
        else:
            model.lstm = _torch_lstm(lstm)
    with warnings.catch_warnings():
        # torch.ao warns that it will move to torchao; it is the quantize_dynamic of the pinned torch
        warnings.simplefilter("ignore", (UserWarning, DeprecationWarning))
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)
