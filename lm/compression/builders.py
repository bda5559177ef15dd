"""Builders of the compressed layer types, from a resolved spec in a ``ModelConfig``.

Importing this module registers them in ``lm.model``'s registries, so that
``LanguageModel(config)``, ``lm.load`` and the artifact decoder rebuild compressed
models from their config.
The builders make the architecture only; ``lm.compression.surgery`` fills in the
weights of a trained model.
"""

from __future__ import annotations

from torch import nn

from ttlayers import LSTM, LSTMLayer, LowRankLinear, TTEmbedding, TTLinear

from ..config import ModelConfig
from ..model import DECODERS, EMBEDDINGS, LSTMS
from .groupreduce import BlockLowRankEmbedding, BlockLowRankLinear


def build_embedding(c: ModelConfig, spec: dict | None = None) -> nn.Module:
    spec = spec or c.embedding
    kind = spec["type"]
    if kind == "low_rank":
        return BlockLowRankEmbedding(c.vocab_size, c.embedding_dim, [0, c.vocab_size], [int(spec["rank"])])
    if kind == "groupreduce":
        return BlockLowRankEmbedding(c.vocab_size, c.embedding_dim, spec["boundaries"], spec["ranks"])
    if kind == "tt":
        return TTEmbedding(c.vocab_size, c.embedding_dim, spec["ranks"], **_shapes(spec, "num_shape", "dim_shape"))
    raise ValueError(f"unknown embedding type {kind!r}")


def build_decoder(c: ModelConfig, in_features: int, spec: dict | None = None) -> nn.Module:
    spec = spec or c.decoder
    kind = spec["type"]
    if kind == "low_rank":
        return LowRankLinear(in_features, c.vocab_size, int(spec["rank"]))
    if kind == "groupreduce":
        return BlockLowRankLinear(in_features, c.vocab_size, spec["boundaries"], spec["ranks"])
    if kind == "tt":
        return TTLinear(in_features, c.vocab_size, spec["ranks"], **_shapes(spec, "in_shape", "out_shape"))
    raise ValueError(f"unknown decoder type {kind!r}")


def build_lstm(c: ModelConfig, spec: dict | None = None) -> nn.Module:
    spec = spec or c.lstm
    kind = spec["type"]
    if kind == "lr_lstm":
        return LSTM(c.embedding_dim, c.hidden_size, c.num_layers, dropout=c.dropout, proj_size=int(spec["rank"]))
    if kind == "tt_lstm":
        layers = []
        for k, maps in enumerate(spec["maps"]):
            tt = [TTLinear(m["in_features"], 4 * c.hidden_size, m["ranks"], **_shapes(m, "in_shape", "out_shape"))
                  for m in maps]
            layers.append(LSTMLayer(c.embedding_dim if k == 0 else c.hidden_size, c.hidden_size, *tt))
        return LSTM(c.embedding_dim, c.hidden_size, c.num_layers, dropout=c.dropout, layers=layers)
    raise ValueError(f"unknown lstm type {kind!r}")


def _shapes(spec: dict, *keys: str) -> dict:
    return {k: tuple(spec[k]) for k in keys if spec.get(k) is not None}


def tt_spec(module: nn.Module, spec: dict) -> dict:
    """The resolved spec of a ``TTLinear`` / ``TTEmbedding``: its inner ranks and mode shapes."""
    shapes = ("in_shape", "out_shape") if isinstance(module, TTLinear) else ("num_shape", "dim_shape")
    return {**spec, "type": "tt", "ranks": list(module.ranks[1:-1]), **{k: list(getattr(module, k)) for k in shapes}}


def tt_lstm_spec(lstm: nn.Module, spec: dict) -> dict:
    """The resolved spec of a TT-LSTM: per layer, the input and recurrent maps' sizes, ranks and shapes."""
    maps = [[{"in_features": m.in_features, **tt_spec(m, {})} for m in (layer.input_map, layer.recurrent_map)]
            for layer in lstm.layers]
    for layer_maps in maps:
        for m in layer_maps:
            m.pop("type")
    return {**spec, "type": "tt_lstm", "maps": maps}


for _kind in ("low_rank", "groupreduce", "tt"):
    EMBEDDINGS[_kind] = build_embedding
    DECODERS[_kind] = build_decoder
for _kind in ("lr_lstm", "tt_lstm"):
    LSTMS[_kind] = build_lstm
