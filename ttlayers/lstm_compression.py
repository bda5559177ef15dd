"""Compressed LSTMs from trained ones: the LR-LSTM (shared low-rank projections) and the TT-LSTM.

LR-LSTM (Lu et al. 2016, "Learning compact recurrent neural networks"; Grachev et al.
2019, eq. 11-14). Layer l's hidden state h_t^l (hidden_size) is read by two matrices:
its own recurrent weights V_l (4H x H) and the next layer's input weights W_{l+1}
(4H x H), or the decoder D (vocab x H) after the last layer. Both are replaced by
products through one shared r-dimensional projection m_t^l = U_l h_t^l:

    [W_{l+1}; V_l] ~= [W'_{l+1}; V'_l] U_l,

with U_l (r x H) the top-r right singular vectors of the stacked matrix, so that
W'_{l+1} = W_{l+1} U_l^T and V'_l = V_l U_l^T (the truncated SVD of the stack,
Eckart-Young). This is exactly ``torch.nn.LSTM(proj_size=r)`` (``weight_hr_l = U_l``),
so the result runs on the fused kernel. The first layer's input weights stay dense.

TT-LSTM: every input and recurrent map becomes a ``TTLinear`` initialised by TT-SVD.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .lstm import LSTM, LSTMLayer, is_plain_linear
from .tt_linear import TTLinear


def _as_lstm(lstm: nn.Module) -> LSTM:
    if isinstance(lstm, nn.LSTM):
        return LSTM.from_torch(lstm)
    if isinstance(lstm, LSTM):
        return lstm
    raise ValueError(f"expected a torch.nn.LSTM or a ttlayers.LSTM, got {type(lstm).__name__}")


def _weight(module: nn.Module) -> Tensor:
    """The dense (out, in) weight of a map: ``.weight`` of ``nn.Linear``, else ``dense_weight()``."""
    return (module.weight if is_plain_linear(module) else module.dense_weight()).detach()


def _copy_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def lr_lstm(lstm: nn.Module, rank: int, decoder: nn.Linear | None = None) -> LSTM:
    """The LR-LSTM with shared projections of size ``rank`` (an ``LSTM`` with ``proj_size=rank``).

    ``lstm``: a trained ``torch.nn.LSTM`` or ``ttlayers.LSTM`` without projections (its maps
    dense, or any module with ``dense_weight()``). ``decoder``: the (vocab x hidden) layer
    that reads the last layer's output; when given, its weight joins the last layer's
    stacked SVD, as the next layer's input weights do for the other layers. The output
    then has ``rank`` features: map the decoder with :func:`lr_decoder`.
    """
    lstm = _as_lstm(lstm)
    if lstm.proj_size:
        raise ValueError(f"lr_lstm needs an LSTM without projections, got proj_size={lstm.proj_size}")
    hidden = lstm.hidden_size
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank < hidden:
        raise ValueError(f"rank must be an int in [1, hidden_size) = [1, {hidden}), got {rank!r}")
    if decoder is not None and decoder.in_features != hidden:
        raise ValueError(f"decoder must read hidden_size={hidden} features, got in_features={decoder.in_features}")
    old = list(lstm.layers)
    projections = []
    for k, layer in enumerate(old):
        reader = _weight(old[k + 1].input_map) if k + 1 < len(old) else (_weight(decoder) if decoder is not None else None)
        stacked = _weight(layer.recurrent_map) if reader is None else torch.cat([reader, _weight(layer.recurrent_map)])
        _, _, vh = torch.linalg.svd(stacked.double(), full_matrices=False)
        projections.append(vh[:rank].to(stacked.dtype))  # U_l: (rank, hidden), orthonormal rows
    layers = []
    for k, layer in enumerate(old):
        w_in = _weight(layer.input_map) if k == 0 else _weight(layer.input_map) @ projections[k - 1].T
        input_map = _copy_linear(w_in, layer.input_map.bias)
        recurrent_map = _copy_linear(_weight(layer.recurrent_map) @ projections[k].T, layer.recurrent_map.bias)
        projection = _copy_linear(projections[k], None)
        layers.append(LSTMLayer(layer.input_size if k == 0 else rank, hidden, input_map, recurrent_map,
                                proj_size=rank, projection=projection))
    return LSTM(lstm.input_size, hidden, lstm.num_layers, lstm.dropout, lstm.batch_first, lstm.bias, layers=layers)


def lr_decoder(decoder: nn.Linear, lstm: LSTM) -> nn.Linear:
    """The decoder reading the LR-LSTM's projected output: weight D U_L^T (vocab x rank), same bias."""
    if not lstm.proj_size:
        raise ValueError("lr_decoder needs an LSTM with projections (from lr_lstm)")
    projection = _weight(lstm.layers[-1].projection)
    if decoder.in_features != projection.shape[1]:
        raise ValueError(f"decoder must read hidden_size={projection.shape[1]} features, got {decoder.in_features}")
    bias = None if decoder.bias is None else decoder.bias.detach()
    return _copy_linear(decoder.weight.detach() @ projection.T, bias)


def tt_lstm(lstm: nn.Module, rank: int | Sequence[int] | None = None, rel_eps: float | None = None) -> LSTM:
    """A TT-LSTM: every input and recurrent map of ``lstm`` (``torch.nn.LSTM`` or dense
    ``ttlayers.LSTM`` without projections) replaced by ``TTLinear.from_linear(map, rank,
    rel_eps)``, with the default mode shapes (``ttlayers.factorize``, 3 modes)."""
    lstm = _as_lstm(lstm)
    if lstm.proj_size:
        raise ValueError(f"tt_lstm needs an LSTM without projections, got proj_size={lstm.proj_size}")
    layers = []
    for layer in lstm.layers:
        maps = [m if is_plain_linear(m) else _copy_linear(_weight(m), m.bias) for m in (layer.input_map, layer.recurrent_map)]
        tt_maps = [TTLinear.from_linear(m, rank=rank, rel_eps=rel_eps) for m in maps]
        layers.append(LSTMLayer(layer.input_size, layer.hidden_size, *tt_maps))
    return LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout, lstm.batch_first, lstm.bias, layers=layers)
