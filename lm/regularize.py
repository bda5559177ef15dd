"""Training-time regularisation of the LSTM language model (Merity et al. 2018's AWD-LSTM).

Every piece acts in training only; in eval mode the model is exactly the plain one, so a
regularised model saves, loads, compresses and scores like any other.

- ``locked_dropout``: variational dropout (Gal & Ghahramani 2016), one mask per sequence
  (per batch row and feature, shared by every time step of the window).
- ``embedding_dropout``: whole words dropped from the embedding matrix, the same word
  dropped everywhere in the batch.
- weight drop (DropConnect, Wan et al. 2013) on each layer's recurrent map ``W_hh``: one
  mask per forward call, shared by every time step. The mask goes on the dense ``W_hh``,
  built from the map's factors (``LowRankLinear``, ``TTLinear``) when it has any, and the
  layer then runs ``torch.lstm``'s fused kernel on that weight (see ``lstm_forward``).
- ``activation_penalty``: activation (AR) and temporal activation (TAR) regularisation.
- ``nt_asgd_triggered``: when non-monotonically triggered averaged SGD starts averaging.

References
----------
Y. Gal, Z. Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
Networks", NeurIPS 2016. S. Merity, N. S. Keskar, R. Socher, "Regularizing and Optimizing
LSTM Language Models", ICLR 2018.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttlayers.lstm import LSTM, LSTMLayer

State = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Regularization:
    """Probabilities of the training-time regularisers, and the activation penalties' weights.

    ``input``: locked dropout on the embedding output; ``hidden``: between LSTM layers;
    ``output``: on the last LSTM output, before the decoder; ``embedding``: words dropped
    from the embedding matrix; ``weight``: DropConnect on the recurrent weights; ``ar`` and
    ``tar``: weights of the AR and TAR penalties (``activation_penalty``).
    """

    input: float = 0.0
    hidden: float = 0.0
    output: float = 0.0
    embedding: float = 0.0
    weight: float = 0.0
    ar: float = 0.0
    tar: float = 0.0

    def __post_init__(self) -> None:
        check_settings(self, ("input", "hidden", "output", "embedding", "weight"), ("ar", "tar"), "Regularization.")


def check_settings(settings, probabilities: tuple[str, ...], weights: tuple[str, ...], prefix: str = "") -> None:
    """Refuse a dropout probability of ``settings`` (one of the attributes ``probabilities``) outside
    [0, 1), or a penalty weight (``weights``) below 0 or not finite, naming the attribute (after ``prefix``)."""
    for name in probabilities:
        if not 0.0 <= getattr(settings, name) < 1.0:
            raise ValueError(f"{prefix}{name} is a dropout probability in [0, 1), got {getattr(settings, name)}")
    for name in weights:
        if not (getattr(settings, name) >= 0 and math.isfinite(getattr(settings, name))):
            raise ValueError(f"{prefix}{name} must be a finite number >= 0, got {getattr(settings, name)}")


def _check_probability(p: float, what: str) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{what} takes a dropout probability in [0, 1), got {p}")


def locked_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Dropout with one mask per sequence: x (seq_len, batch, features), the mask
    (1, batch, features) shared by every time step, kept entries scaled by 1 / (1 - p)."""
    _check_probability(p, "locked_dropout")
    if not training or p == 0.0:
        return x
    if x.dim() != 3:
        raise ValueError(f"locked_dropout expects x (seq_len, batch, features), got shape {tuple(x.shape)}")
    mask = x.new_empty(1, x.shape[1], x.shape[2]).bernoulli_(1 - p).div_(1 - p)
    return x * mask


def embedding_dropout(embedded: Tensor, tokens: Tensor, vocab_size: int, p: float, training: bool = True) -> Tensor:
    """Drop whole words: ``embedded`` (*, dim), the embedding of ``tokens`` (*), with each
    word's row of the embedding matrix kept with probability 1 - p (and scaled by 1 / (1 - p))
    or zeroed, the same for every occurrence of the word in the batch.

    Scaling the looked-up rows by ``mask[tokens]`` equals looking up in the masked matrix
    (values and gradients), for any embedding module, without building that matrix.
    """
    _check_probability(p, "embedding_dropout")
    if not training or p == 0.0:
        return embedded
    mask = embedded.new_empty(vocab_size, 1).bernoulli_(1 - p).div_(1 - p)
    return embedded * mask[tokens]


def dense_weight(m: nn.Module) -> Tensor:
    """The map's weight (out_features, in_features): ``nn.Linear.weight``, or the one a factorised
    map builds (``dense_weight()``: ``LowRankLinear``, ``TTLinear``), differentiable in its factors."""
    if isinstance(m, nn.Linear):
        return m.weight
    if hasattr(m, "dense_weight"):
        return m.dense_weight()
    raise TypeError(f"weight drop needs maps with a dense weight (nn.Linear, LowRankLinear, TTLinear...), "
                    f"got {type(m).__name__}")


def weight_dropped_layer(layer: LSTMLayer, x: Tensor, state: State, p: float) -> tuple[Tensor, State]:
    """``layer`` on x (seq_len, batch, input_size) with DropConnect on its recurrent weight:
    one mask on ``W_hh`` (4 * hidden, output_size) for the whole sequence, kept entries scaled
    by 1 / (1 - p); the input map, biases and projection as they are. Runs ``torch.lstm``'s
    fused kernel on the dense weights (built from the factors of low-rank and TT maps).
    """
    _check_probability(p, "weight_dropped_layer")
    w_hh = F.dropout(dense_weight(layer.recurrent_map), p, training=True)
    weights = [dense_weight(layer.input_map), w_hh]
    b_ih, b_hh = getattr(layer.input_map, "bias", None), getattr(layer.recurrent_map, "bias", None)
    if (b_ih is None) != (b_hh is None):
        raise ValueError("weight drop needs both or neither of the input and recurrent maps to have a bias")
    if b_ih is not None:
        weights += [b_ih, b_hh]
    if layer.proj_size:
        if not isinstance(layer.projection, nn.Linear) or layer.projection.bias is not None:
            raise ValueError("weight drop needs the projection to be an nn.Linear without bias")
        weights.append(layer.projection.weight)
    h, c = state
    out, h_n, c_n = torch.lstm(x, (h[None], c[None]), weights, b_ih is not None, 1, 0.0, True, False, False)
    return out, (h_n[0], c_n[0])


def lstm_forward(lstm: LSTM, x: Tensor, state: State | None, hidden: float, weight: float) -> tuple[Tensor, State]:
    """A training forward of ``lstm`` (seq_len, batch, input_size) -> outputs and ``(h_n, c_n)``,
    layer by layer: the LSTM's own dropout, then locked dropout (``hidden``) between layers,
    and weight drop (``weight``) on every layer's recurrent map."""
    if state is None:
        state = (x.new_zeros(lstm.num_layers, x.shape[1], lstm.output_size),
                 x.new_zeros(lstm.num_layers, x.shape[1], lstm.hidden_size))
    h0, c0 = state
    out, h_n, c_n = x, [], []
    for k, layer in enumerate(lstm.layers):
        if k > 0:
            out = locked_dropout(F.dropout(out, lstm.dropout, training=True), hidden)
        if weight > 0:
            out, (h, c) = weight_dropped_layer(layer, out, (h0[k], c0[k]), weight)
        else:
            out, (h, c) = layer(out, (h0[k], c0[k]))
        h_n.append(h)
        c_n.append(c)
    return out, (torch.stack(h_n), torch.stack(c_n))


def activation_penalty(raw: Tensor, dropped: Tensor, ar: float, tar: float) -> Tensor:
    """Merity et al.'s AR and TAR: ``ar * mean(dropped ** 2) + tar * mean((raw[t] - raw[t-1]) ** 2)``,
    ``raw`` the last LSTM layer's output (seq_len, batch, hidden) and ``dropped`` the same after
    the output dropout."""
    penalty = raw.new_zeros(())
    if ar:
        penalty = penalty + ar * dropped.pow(2).mean()
    if tar and raw.shape[0] > 1:
        penalty = penalty + tar * (raw[1:] - raw[:-1]).pow(2).mean()
    return penalty


def nt_asgd_triggered(valid: list[float], nonmono: int) -> bool:
    """Merity et al.'s non-monotone trigger: averaging starts once the latest validation score
    (the last of ``valid``, lower is better) is worse than the best one from more than
    ``nonmono`` evaluations before it."""
    if nonmono < 1:
        raise ValueError(f"nonmono must be >= 1, got {nonmono}")
    earlier = valid[:-1]
    return len(earlier) > nonmono and valid[-1] > min(earlier[:-nonmono])
