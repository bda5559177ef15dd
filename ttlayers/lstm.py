"""A multi-layer LSTM whose input and recurrent maps are pluggable modules.

Each layer computes, with torch's gate order (i, f, g, o),

    gates_t = input_map(x_t) + recurrent_map(h_{t-1})          (batch, 4 * hidden)
    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of the four chunks
    c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)

``input_map`` and ``recurrent_map`` may be any module mapping the last dimension
to ``4 * hidden_size`` (``nn.Linear``, ``LowRankLinear``, ``TTLinear``...). With
``proj_size > 0`` (``torch.nn.LSTM``'s projections, Sak et al. 2014) the state is
projected, ``h_t = projection(o * tanh(c_t))`` of size ``proj_size``, and that
projection feeds both the recurrence and the next layer. When every map of the
stack is a plain ``nn.Linear`` (or one whose weight ``torch.nn.utils.parametrize`` computes,
e.g. fake-quantized for quantization-aware training) the fused ``torch.lstm`` kernel runs the
whole stack. A layer whose maps plan their route (``PlannedMap``, such as ``TTLinear``) runs the
same kernel on the maps' built weights when the recurrent map's plan for the whole call
prefers its dense weight (the gradients still reach the cores through the build). A single
time step (token-by-token inference) skips the kernel and multiplies by those weights
directly: the kernel's per-call setup (oneDNN reorders the weights on CPU) costs more than
one step at batch 1. Otherwise the input maps of all time steps run in one batched call and
only the recurrent map runs per step (a ``PlannedMap`` plans all steps at once with
``repeated(batch, calls)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._higher_order_ops.scan import scan  # torch.export's loop with a dynamic trip count
from torch.nn.utils import parametrize

from ._tt_layout import check_float_input

State = tuple[Tensor, Tensor]


@runtime_checkable
class PlannedMap(Protocol):
    """What an LSTM map offers beyond ``map(x)`` (x (*, in_features) -> (*, out_features)) when
    it can run either through a dense weight or through its own factors (``TTLinear``).

    ``LSTMLayer`` runs a plain ``nn.Linear`` on its ``weight``, a ``PlannedMap`` as below, and
    any other module (``LowRankLinear``...) by calling it once per time step.
    """

    bias: Tensor | None

    def dense_weight(self) -> Tensor:
        """The weight W (out_features, in_features), differentiable when gradients flow."""

    def uses_dense_weight(self, batch: int, calls: int = 1) -> bool:
        """Whether ``calls`` products of ``batch`` rows, with unchanged parameters, are cheaper
        through ``dense_weight()`` than through the factors."""

    def repeated(self, batch: int, calls: int = 1) -> Callable[[Tensor], Tensor]:
        """The map as a function of x (batch, in_features), planned for ``calls`` such calls."""


class LSTMLayer(nn.Module):
    """One LSTM layer: ``gates = input_map(x_t) + recurrent_map(h_{t-1})``.

    The biases live in the maps (``input_map.bias`` is torch's ``bias_ih``,
    ``recurrent_map.bias`` its ``bias_hh``), so a layer built from
    ``nn.Linear`` maps holds exactly the parameters of one ``nn.LSTM`` layer;
    with ``proj_size > 0``, ``projection.weight`` is torch's ``weight_hr`` and
    ``recurrent_map`` reads the projected state (proj_size features).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        input_map: nn.Module | None = None,
        recurrent_map: nn.Module | None = None,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        proj_size: int = 0,
        projection: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size} and {hidden_size}")
        if not 0 <= proj_size < hidden_size:
            raise ValueError(f"proj_size must be in [0, hidden_size) = [0, {hidden_size}), got {proj_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.proj_size = proj_size
        factory = {"device": device, "dtype": dtype}
        self.input_map = input_map if input_map is not None else nn.Linear(input_size, 4 * hidden_size, bias=bias, **factory)
        self.recurrent_map = (
            recurrent_map if recurrent_map is not None
            else nn.Linear(self.output_size, 4 * hidden_size, bias=bias, **factory)
        )
        if proj_size:
            self.projection = projection if projection is not None else nn.Linear(hidden_size, proj_size, bias=False, **factory)
        elif projection is not None:
            raise ValueError("a projection module needs proj_size > 0")
        if input_map is None and recurrent_map is None:
            self.reset_parameters()

    @property
    def output_size(self) -> int:
        """Features of the output and of h: ``proj_size`` if set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def maps(self) -> list[nn.Module]:
        """The input and recurrent maps, and the projection if any."""
        return [self.input_map, self.recurrent_map] + ([self.projection] if self.proj_size else [])

    def reset_parameters(self) -> None:
        """``nn.LSTM``'s init: every dense weight and bias uniform in ±1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for m in self.maps():
            if is_plain_linear(m):
                for p in m.parameters():
                    nn.init.uniform_(p, -bound, bound)
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()

    @property
    def is_dense(self) -> bool:
        """True when every map is a plain ``nn.Linear`` (``is_plain_linear``: the fused kernel applies)."""
        return all(is_plain_linear(m) for m in self.maps()) and (not self.proj_size or self.projection.bias is None)

    def flat_weights(self) -> list[Tensor]:
        """``[w_ih, w_hh(, b_ih, b_hh)(, w_hr)]`` in ``torch.lstm``'s order (dense layers only)."""
        weights = [self.input_map.weight, self.recurrent_map.weight]
        if self.input_map.bias is not None:
            weights += [self.input_map.bias, self.recurrent_map.bias]
        if self.proj_size:
            weights.append(self.projection.weight)
        return weights

    def built_weights(self, batch: int, seq_len: int) -> list[Tensor] | None:
        """``torch.lstm``'s weights ``[w_ih, w_hh(, b_ih, b_hh)]`` for one call of ``seq_len``
        steps at ``batch``, when the recurrent map multiplies by a dense weight for that call
        (an ``nn.Linear``, or a ``PlannedMap`` whose ``uses_dense_weight(batch, seq_len)``) and
        the input map has one or can build it (an ``nn.Linear`` or a ``PlannedMap``); None
        otherwise.

        The input map is then built even where its plan would contract the cores: one kernel
        call for the whole recurrence, forward and backward, measured faster than the per-step
        loop (``python -m benchmarks.bench_layers --recurrence``), which the plan's count of
        FLOPs and memory traffic leaves out.
        """
        if self.proj_size:
            return None
        w_hh = _planned_weight(self.recurrent_map, batch, seq_len)
        w_ih = _current_weight(self.input_map) if w_hh is not None else None
        if w_ih is None:
            return None
        b_ih, b_hh = self.input_map.bias, self.recurrent_map.bias
        if (b_ih is None) != (b_hh is None):
            return None
        return [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x: (seq_len, batch, input_size); state: h (batch, output_size), c (batch, hidden_size).

        Returns the outputs (seq_len, batch, output_size) and the final state.
        """
        h, c = state
        exporting = torch.compiler.is_exporting()
        # traced (torch.compile, torch.export): no torch.lstm kernel, which inductor cannot compile
        # for training with dynamic shapes nor torch.export with a dynamic sequence length
        weights = None if torch.compiler.is_compiling() else self.built_weights(x.shape[1], x.shape[0])
        if weights is not None and x.shape[0] > 1:  # the fused kernel on the built weights
            x, h, c = autocast_inputs(x, h, c)
            out, h_n, c_n = torch.lstm(x, (h[None], c[None]), weights, len(weights) == 4, 1, 0.0, self.training,
                                       False, False)
            return out, (h_n[0], c_n[0])
        if weights is not None:  # one step: two products, cheaper than the kernel's per-call setup
            w_ih, w_hh, b_ih, b_hh = weights if len(weights) == 4 else weights + [None, None]
            input_gates = F.linear(x, w_ih, b_ih)
            recurrent = partial(F.linear, weight=w_hh, bias=b_hh)
        else:
            input_gates = self.input_map(x)  # all time steps in one call
            recurrent = self.recurrent_map
            if isinstance(recurrent, PlannedMap) and exporting:  # W built once, before the loop (a constant
                # to the runtime): torch 2.13 cannot lower a TT contraction of symbolic size inside scan
                recurrent = partial(F.linear, weight=recurrent.dense_weight(), bias=recurrent.bias)
            elif isinstance(recurrent, PlannedMap):  # e.g. TTLinear: one route for all steps (W built once if cheaper)
                recurrent = recurrent.repeated(h.shape[0], x.shape[0])
        if exporting:  # a loop over steps would fix seq_len in the graph; scan keeps it dynamic
            def combine(carry: State, gates_x: Tensor) -> tuple[State, Tensor]:
                h, c = self._cell(gates_x + recurrent(carry[0]), carry[1])
                return (h, c), h.clone()  # scan's outputs may not alias its carry
            (h, c), out = scan(combine, (h, c), input_gates)
            return out, (h, c)
        outputs = []
        for gates_x in input_gates:
            h, c = self._cell(gates_x + recurrent(h), c)
            outputs.append(h)
        return torch.stack(outputs), (h, c)

    def _cell(self, gates: Tensor, c: Tensor) -> State:
        """One step from the gates (batch, 4 * hidden_size) and c: the new (h, c)."""
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if self.proj_size:
            h = self.projection(h)
        return h, c

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + (f", proj_size={self.proj_size}" if self.proj_size else "")


def is_plain_linear(m: nn.Module) -> bool:
    """Whether ``m`` computes ``F.linear(x, m.weight, m.bias)``: an ``nn.Linear`` itself, or the
    class ``torch.nn.utils.parametrize`` derives from it when a parametrization computes its
    weight (read through ``m.weight`` like a plain one). A subclass of ``nn.Linear`` may change
    ``forward`` and is not one."""
    cls = type(m)
    return cls is nn.Linear or (parametrize.is_parametrized(m) and cls.__bases__ == (nn.Linear,))


def autocast_inputs(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors in autocast's dtype when ``torch.autocast`` is on for their device, else as
    given. ``torch.lstm`` casts its weights there but, on CPU, not its input and state (oneDNN then
    fails on float32 ones, in ``nn.LSTM`` too); cast, they run as under CUDA's autocast."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) for t in tensors)


def _planned_weight(m: nn.Module, batch: int, calls: int) -> Tensor | None:
    """An ``nn.Linear``'s weight, or a ``PlannedMap``'s dense weight when its plan for ``calls``
    products of ``batch`` rows prefers it; None otherwise."""
    if is_plain_linear(m):
        return m.weight
    return m.dense_weight() if isinstance(m, PlannedMap) and m.uses_dense_weight(batch, calls) else None


def _current_weight(m: nn.Module) -> Tensor | None:
    """An ``nn.Linear``'s weight, or a ``PlannedMap``'s dense weight; None otherwise."""
    if is_plain_linear(m):
        return m.weight
    return m.dense_weight() if isinstance(m, PlannedMap) else None


class LSTM(nn.Module):
    """Multi-layer LSTM with the calling convention of ``torch.nn.LSTM``.

    Args:
        input_size: features of the input x.
        hidden_size: features of the hidden state h.
        num_layers: stacked layers.
        dropout: dropout on the outputs of every layer but the last (training only).
        batch_first: inputs and outputs are (batch, seq, feature) instead of (seq, batch, feature).
        proj_size: if > 0, every layer's state is projected to ``proj_size`` features
            (as ``torch.nn.LSTM(proj_size=...)``); the output then has ``proj_size`` features.
        layers: optional prebuilt ``LSTMLayer`` list (e.g. with low-rank or TT maps).

    ``forward(input, hx=None)`` takes input (seq_len, batch, input_size) (or an
    unbatched (seq_len, input_size)) and ``hx = (h_0, c_0)``, h_0 of shape
    (num_layers, batch, output_size) and c_0 (num_layers, batch, hidden_size), and
    returns ``output, (h_n, c_n)`` as ``nn.LSTM`` does; ``output`` has
    ``output_size`` features (``proj_size`` or ``hidden_size``).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        batch_first: bool = False,
        bias: bool = True,
        *,
        layers: list[LSTMLayer] | None = None,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.batch_first = batch_first
        self.bias = bias
        if layers is None:
            sizes = [input_size] + [proj_size or hidden_size] * (num_layers - 1)
            layers = [LSTMLayer(n, hidden_size, bias=bias, device=device, dtype=dtype, proj_size=proj_size) for n in sizes]
        elif layers and not proj_size:
            proj_size = layers[0].proj_size
        if len(layers) != num_layers:
            raise ValueError(f"got {len(layers)} layers for num_layers={num_layers}")
        if any((layer.hidden_size, layer.proj_size) != (hidden_size, proj_size) for layer in layers):
            raise ValueError(f"every layer must have hidden_size={hidden_size} and proj_size={proj_size}, got "
                             f"{[(layer.hidden_size, layer.proj_size) for layer in layers]}")
        fed = [input_size] + [layer.output_size for layer in layers[:-1]]
        if [layer.input_size for layer in layers] != fed:
            raise ValueError(f"the layers read {[layer.input_size for layer in layers]} input features, but are fed "
                             f"{fed} (the input's, then each layer's output)")
        for k, layer in enumerate(layers):
            has = {m.bias is not None for m in (layer.input_map, layer.recurrent_map) if hasattr(m, "bias")}
            if has and has != {bias}:
                raise ValueError(f"layer {k}'s maps {'have' if True in has else 'lack'} biases"
                                 f"{' in part' if len(has) > 1 else ''}, but the LSTM has bias={bias}")
        self.proj_size = proj_size
        self.layers = nn.ModuleList(layers)

    @property
    def output_size(self) -> int:
        """Features of the output and of h: ``proj_size`` if set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def reset_parameters(self) -> None:
        """Every layer's ``reset_parameters`` (``nn.LSTM``'s init for dense maps)."""
        for layer in self.layers:
            layer.reset_parameters()

    @classmethod
    def from_torch(cls, lstm: nn.LSTM) -> "LSTM":
        """An exact copy of a unidirectional ``torch.nn.LSTM`` (with or without ``proj_size``)."""
        if lstm.bidirectional:
            raise ValueError("from_torch supports unidirectional LSTMs only")
        p = next(lstm.parameters())
        out = cls(
            lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout, lstm.batch_first, lstm.bias,
            proj_size=lstm.proj_size, device=p.device, dtype=p.dtype,
        )
        with torch.no_grad():
            for k, layer in enumerate(out.layers):
                layer.input_map.weight.copy_(getattr(lstm, f"weight_ih_l{k}"))
                layer.recurrent_map.weight.copy_(getattr(lstm, f"weight_hh_l{k}"))
                if lstm.bias:
                    layer.input_map.bias.copy_(getattr(lstm, f"bias_ih_l{k}"))
                    layer.recurrent_map.bias.copy_(getattr(lstm, f"bias_hh_l{k}"))
                if lstm.proj_size:
                    layer.projection.weight.copy_(getattr(lstm, f"weight_hr_l{k}"))
        return out

    def forward(self, input: Tensor, hx: State | None = None) -> tuple[Tensor, State]:
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM expects a 2-D or 3-D input, got shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"LSTM expects input features {self.input_size}, got {input.shape[-1]}")
        check_float_input(input, next(self.parameters()).dtype, "LSTM")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        if hx is None:
            c0 = x.new_zeros(self.num_layers, x.shape[1], self.hidden_size)
            hx = (x.new_zeros(self.num_layers, x.shape[1], self.output_size), c0)
        elif unbatched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        h0, c0 = hx
        expected_h = (self.num_layers, x.shape[1], self.output_size)
        expected_c = (self.num_layers, x.shape[1], self.hidden_size)
        if tuple(h0.shape) != expected_h or tuple(c0.shape) != expected_c:
            raise ValueError(f"hx must be tensors of shapes {expected_h} and {expected_c}, "
                             f"got {tuple(h0.shape)} and {tuple(c0.shape)}")
        if any((t.dtype, t.device) != (x.dtype, x.device) for t in (h0, c0)):
            raise TypeError(f"hx must have the input's dtype and device ({x.dtype}, {x.device}), got "
                            f"({h0.dtype}, {h0.device}) and ({c0.dtype}, {c0.device})")
        if x.shape[0] == 0:
            raise ValueError("LSTM expects a sequence length of at least 1, got 0")

        if all(layer.is_dense for layer in self.layers) and x.shape[0] > 1 and not torch.compiler.is_compiling():
            weights = [w for layer in self.layers for w in layer.flat_weights()]
            x, h0, c0 = autocast_inputs(x, h0, c0)
            out, h_n, c_n = torch.lstm(
                x, (h0, c0), weights, self.bias, self.num_layers, self.dropout, self.training, False, False
            )
        else:
            h_n, c_n = [], []
            out = x
            for k, layer in enumerate(self.layers):
                if k > 0 and self.dropout > 0:
                    out = nn.functional.dropout(out, self.dropout, self.training)
                out, (h, c) = layer(out, (h0[k], c0[k]))
                h_n.append(h)
                c_n.append(c)
            h_n, c_n = torch.stack(h_n), torch.stack(c_n)

        if unbatched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, (h_n, c_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.batch_first:
            s += ", batch_first=True"
        return s
