"""Compressed language models initialised from a trained dense one, by decomposition.

``compress_model(model, embedding=spec, lstm=spec, decoder=spec, counts=...)`` returns
a new ``LanguageModel`` whose named parts are replaced; the others are copied. A
spec is what the study asks for (``{"type": "groupreduce", "groups": 6, "ratio": 8}``);
the returned model's config holds the resolved spec (block edges, ranks, shapes), so
that ``LanguageModel(config)`` and hence ``lm.load`` and the artifact decoder rebuild
the same architecture (``lm.compression.builders`` registers the builders).

Types: embedding and decoder ``low_rank`` (truncated SVD; ``LowRankLinear`` for the
decoder), ``groupreduce`` (frequency blocks, weighted SVD, greedy ranks) and ``tt``
(``TTEmbedding`` / ``TTLinear`` by TT-SVD); LSTM ``lr_lstm`` (Lu et al.'s shared
projection, ttlayers' LR-LSTM helper) and ``tt_lstm`` (TT maps by TT-SVD).

``embedding_size=k`` narrows a dense embedding table E (vocab, d) to k columns: E -> E B^T
for a basis B (k, d) with orthonormal rows, and the first LSTM layer's input weights W ->
W B^T, so that the LSTM reads W B^T B x, the input projected on B's span (exact when every
word vector lies in it). B is E's top-k right singular vectors, except for a tied model
given an ``lr_lstm`` of rank k and no embedding or decoder spec: then B is the last layer's
shared projection U_L (the top-k right singular vectors of [E; V_L], since the tied decoder
reads the last layer), so that the decoder's weight E U_L^T is the narrowed table itself and
the model stays tied. Otherwise a tied model stays tied only when neither its embedding nor
its decoder changes (``tt_lstm`` alone); else its embedding and decoder are compressed (or
kept) apart, each from the shared table.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from ttlayers import LSTM, LowRankLinear, LSTMLayer, TTEmbedding, TTLinear, lr_decoder, lr_lstm, tt_lstm

from ..model import LanguageModel
from . import builders
from .groupreduce import allocate_ranks, frequency_boundaries, word_weights


def set_dropout(model: LanguageModel, p: float) -> LanguageModel:
    """Set the model's non-recurrent dropout (embedding output, between layers, LSTM output), in place."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    model.config.dropout = p
    model.drop.p = p
    model.lstm.dropout = p
    return model


def _groupreduce(weight: Tensor, spec: dict, counts: Tensor | None, hidden: int) -> dict:
    """Resolve a GroupReduce spec (groups, ratio, alpha) into block edges and ranks for ``weight`` (vocab, dim).

    The factors get ``vocab * hidden / ratio`` parameters: ``ratio`` is relative to the dense
    (vocab, hidden) matrix even when ``weight`` is narrower (a decoder behind an LR-LSTM)."""
    if counts is None:
        raise ValueError("groupreduce needs the training-set word counts (counts=...)")
    vocab = weight.shape[0]
    ratio = float(spec.get("ratio", 8))
    if ratio <= 1:
        raise ValueError(f"groupreduce ratio must be > 1, got {ratio}")
    boundaries = spec.get("boundaries") or frequency_boundaries(vocab, int(spec.get("groups", 6)))
    rw = word_weights(counts, float(spec.get("alpha", 0.5)))
    ranks = spec.get("ranks") or allocate_ranks(weight, boundaries, int(vocab * hidden / ratio), rw)
    return {**spec, "type": "groupreduce", "boundaries": list(boundaries), "ranks": list(ranks)}


def _embedding_low_rank(emb: nn.Embedding, spec: dict, counts, config) -> tuple[nn.Module, dict]:
    spec = {**spec, "type": "low_rank", "rank": int(spec["rank"])}
    module = builders.build_embedding(config, spec)
    module.set_from(emb.weight)
    return module, spec


def _embedding_groupreduce(emb: nn.Embedding, spec: dict, counts, config) -> tuple[nn.Module, dict]:
    spec = _groupreduce(emb.weight.detach(), spec, counts, config.hidden_size)
    module = builders.build_embedding(config, spec)
    module.set_from(emb.weight, word_weights(counts, float(spec.get("alpha", 0.5))))
    return module, spec


def _decoder_groupreduce(dec: nn.Linear, spec: dict, counts, config) -> tuple[nn.Module, dict]:
    spec = _groupreduce(dec.weight.detach(), spec, counts, config.hidden_size)
    module = builders.build_decoder(config, dec.in_features, spec)
    module.set_from(dec.weight, word_weights(counts, float(spec.get("alpha", 0.5))))
    with torch.no_grad():
        module.bias.copy_(dec.bias)
    return module, spec


def _embedding_tt(emb: nn.Embedding, spec: dict, counts, config) -> tuple[nn.Module, dict]:
    module = TTEmbedding.from_embedding(emb, rank=spec.get("rank"), rel_eps=spec.get("rel_eps"))
    return module, builders.tt_spec(module, spec)


def _decoder_low_rank(dec: nn.Linear, spec: dict, counts, config) -> tuple[nn.Module, dict]:
    return LowRankLinear.from_linear(dec, int(spec["rank"])), {**spec, "type": "low_rank", "rank": int(spec["rank"])}


def _decoder_tt(dec: nn.Linear, spec: dict, counts, config) -> tuple[nn.Module, dict]:
    module = TTLinear.from_linear(dec, rank=spec.get("rank"), rel_eps=spec.get("rel_eps"))
    return module, builders.tt_spec(module, spec)


def _lstm_tt(lstm: nn.Module, spec: dict, counts, config) -> tuple[nn.Module, dict]:
    module = tt_lstm(lstm, rank=spec.get("rank"), rel_eps=spec.get("rel_eps"))
    return module, builders.tt_lstm_spec(module, spec)


Init = Callable[[nn.Module, dict, "Tensor | None", object], "tuple[nn.Module, dict]"]
EMBEDDING_INIT: dict[str, Init] = {"low_rank": _embedding_low_rank, "groupreduce": _embedding_groupreduce,
                                   "tt": _embedding_tt}
DECODER_INIT: dict[str, Init] = {"low_rank": _decoder_low_rank, "groupreduce": _decoder_groupreduce, "tt": _decoder_tt}
LSTM_KINDS = ("lr_lstm", "tt_lstm")


def _narrow_embedding(model: LanguageModel, basis: Tensor) -> None:
    """In place: the embedding table E -> E B^T and the first LSTM layer's input weights W -> W B^T,
    for ``basis`` B (k, d) with orthonormal rows (see the module docstring)."""
    emb, first = model.embedding, model.lstm.layers[0]
    if type(first.input_map) is not nn.Linear:
        raise ValueError(f"narrowing the embedding needs a dense first input map, got {type(first.input_map).__name__}")
    basis = basis.detach().to(emb.weight)
    narrowed = nn.Embedding(emb.num_embeddings, basis.shape[0], padding_idx=emb.padding_idx,
                            device=emb.weight.device, dtype=emb.weight.dtype)
    input_map = nn.Linear(basis.shape[0], first.input_map.out_features, bias=first.input_map.bias is not None,
                          device=emb.weight.device, dtype=emb.weight.dtype)
    with torch.no_grad():
        narrowed.weight.copy_(emb.weight @ basis.T)
        input_map.weight.copy_(first.input_map.weight @ basis.T)
        if first.input_map.bias is not None:
            input_map.bias.copy_(first.input_map.bias)
    layers = [LSTMLayer(basis.shape[0], first.hidden_size, input_map, first.recurrent_map, proj_size=first.proj_size,
                        projection=getattr(first, "projection", None)), *model.lstm.layers[1:]]
    old = model.lstm
    model.lstm = LSTM(basis.shape[0], old.hidden_size, old.num_layers, old.dropout, old.batch_first, old.bias,
                      layers=layers)
    model.embedding = narrowed
    model.config.embedding_size = basis.shape[0]


def _untie(model: LanguageModel) -> None:
    """In place: the decoder gets its own copy of the shared table."""
    if model.config.tie_weights:
        model.decoder.weight = nn.Parameter(model.embedding.weight.detach().clone())
        model.config.tie_weights = False


def compress_model(model: LanguageModel, *, embedding: dict | None = None, lstm: dict | None = None,
                   decoder: dict | None = None, counts: Tensor | None = None,
                   embedding_size: int | None = None, tie_weights: bool | None = None) -> LanguageModel:
    """A copy of the trained ``model`` with the given parts compressed from its weights.

    ``counts``: training-set word counts (vocab,), needed by ``groupreduce``. ``embedding_size``:
    narrow the (dense) embedding to that many features, and keep a tied model tied where an
    ``lr_lstm`` of that rank allows it (module docstring). ``tie_weights``: True requires the
    result tied (an error where the rules above untie it), False unties it. The copy is in the
    same train/eval mode as ``model`` and shares no tensors with it.
    """
    new = copy.deepcopy(model)
    keep_tie = (new.config.tie_weights and tie_weights is not False and embedding_size is not None and embedding is None
                and decoder is None and lstm is not None and lstm.get("type") == "lr_lstm"
                and int(lstm["rank"]) == embedding_size)
    if embedding_size is not None:
        if type(new.embedding) is not nn.Embedding:
            raise ValueError(f"embedding_size narrows a dense embedding, got {type(new.embedding).__name__}")
        if isinstance(embedding_size, bool) or not isinstance(embedding_size, int) or not (
                1 <= embedding_size < new.config.embedding_dim):
            raise ValueError(f"embedding_size must be an int in [1, {new.config.embedding_dim}), got {embedding_size!r}")
    changes_table = embedding or decoder or embedding_size or (lstm or {}).get("type") == "lr_lstm"
    if tie_weights and (not new.config.tie_weights or (changes_table and not keep_tie)):
        raise ValueError("tie_weights=True keeps a tied model tied: an lr_lstm of rank embedding_size, and no "
                         "embedding or decoder spec (or none of these changes)")
    if not keep_tie and (changes_table or tie_weights is False):
        _untie(new)  # the embedding and the decoder change apart (a tied model under tt_lstm alone stays tied)
    if embedding_size is not None and not keep_tie:
        _, _, vh = torch.linalg.svd(new.embedding.weight.detach().double(), full_matrices=False)
        _narrow_embedding(new, vh[:embedding_size])
    if lstm is not None:
        # first, as the LR-LSTM changes what the decoder reads: its last projection joins the
        # decoder's SVD, and the decoder then reads rank features (dense, or compressed below)
        kind = lstm.get("type")
        if kind == "lr_lstm":
            if type(new.decoder) is not nn.Linear:
                raise ValueError(f"the LR-LSTM needs a dense decoder to share its projection, got {type(new.decoder).__name__}")
            new.lstm = lr_lstm(new.lstm, int(lstm["rank"]), decoder=new.decoder)
            new.decoder = lr_decoder(new.decoder, new.lstm)
            new.config.lstm = {**lstm, "rank": int(lstm["rank"])}
        elif kind == "tt_lstm":
            new.lstm, new.config.lstm = _lstm_tt(new.lstm, lstm, counts, new.config)
        else:
            raise ValueError(f"unknown lstm compression {kind!r}; known: {list(LSTM_KINDS)}")
    if keep_tie:
        _narrow_embedding(new, new.lstm.layers[-1].projection.weight)
        new.decoder.weight = new.embedding.weight  # E U_L^T both: lr_decoder's weight is the narrowed table
        new.config.tie_weights = True
    for part, spec, inits in (("embedding", embedding, EMBEDDING_INIT), ("decoder", decoder, DECODER_INIT)):
        if spec is None:
            continue
        kind = spec.get("type")
        if kind not in inits:
            raise ValueError(f"unknown {part} compression {kind!r}; known: {sorted(inits)}")
        current = getattr(new, part)
        if type(current) not in (nn.Embedding, nn.Linear):
            raise ValueError(f"the {part} to compress must be dense, got {type(current).__name__}")
        module, resolved = inits[kind](current, spec, counts, new.config)
        setattr(new, part, module)
        setattr(new.config, part, resolved)
    new.to(next(model.parameters()))
    rebuilt = LanguageModel(new.config, model.vocab)
    rebuilt.load_state_dict(new.state_dict())  # proves the config rebuilds this very architecture
    return rebuilt.train(model.training)
