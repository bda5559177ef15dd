"""The LSTM language model of Zaremba et al. (2014): embedding -> ttlayers.LSTM -> decoder.

Dropout acts on the non-recurrent connections only: the embedding output, between
LSTM layers, and the last LSTM output. Each of the three parts is built from a layer
spec (see ``lm.config``), so that dense, low-rank and TT variants share one class.
In training, ``forward(..., regularization=...)`` adds Merity et al.'s regularisers
(``lm.regularize``); they leave the parameters and the eval-mode model unchanged.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from ttlayers import LSTM, count_parameters  # noqa: F401 (count_parameters: lm imports it from here)

from .config import ModelConfig
from .regularize import Regularization, activation_penalty, embedding_dropout, locked_dropout, lstm_forward

State = tuple[Tensor, Tensor]

# spec type -> builder(config) -> module. lm.compression registers the compressed layer types here (importing lm
# imports it), so that the core knows nothing of them.
EMBEDDINGS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "dense": lambda c: nn.Embedding(c.vocab_size, c.embedding_dim),
}
LSTMS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "dense": lambda c: LSTM(c.embedding_dim, c.hidden_size, c.num_layers, dropout=c.dropout),
}
DECODERS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "dense": lambda c, in_features: nn.Linear(in_features, c.vocab_size),
}


def _build(registry: dict, spec: dict, *args) -> nn.Module:
    kind = spec.get("type", "dense")
    if kind not in registry:
        raise ValueError(f"unknown layer type {kind!r}; known: {sorted(registry)}")
    return registry[kind](*args)


class LanguageModel(nn.Module):
    """Word-level LSTM language model.

    ``forward(tokens, state=None)``: tokens (seq_len, batch) of ids -> logits
    (seq_len, batch, vocab_size) and the LSTM state ``(h, c)``, each
    (num_layers, batch, hidden). ``vocab`` is the list of words indexed by id.
    ``forward(tokens, state, regularization)`` (training) also returns the activation
    penalty, a scalar (``lm.regularize.activation_penalty``).
    """

    def __init__(self, config: ModelConfig, vocab: list[str] | None = None) -> None:
        super().__init__()
        if vocab is not None and len(vocab) != config.vocab_size:
            raise ValueError(f"vocab has {len(vocab)} words but vocab_size is {config.vocab_size}")
        self.config = config
        self.vocab = vocab
        self.embedding = _build(EMBEDDINGS, config.embedding, config)
        self.lstm = _build(LSTMS, config.lstm, config)
        self.drop = nn.Dropout(config.dropout)
        self.decoder = _build(DECODERS, config.decoder, config, getattr(self.lstm, "output_size", config.hidden_size))
        if config.tie_weights:
            if not (isinstance(self.embedding, nn.Embedding) and isinstance(self.decoder, nn.Linear)):
                raise ValueError("tie_weights needs a dense embedding and decoder")
            if self.decoder.in_features != config.embedding_dim:
                raise ValueError("tie_weights needs the decoder input size to equal the embedding size")
            self.decoder.weight = self.embedding.weight

    def init_uniform(self, scale: float) -> None:
        """Zaremba's init: every parameter uniform in [-scale, scale]."""
        for p in self.parameters():
            nn.init.uniform_(p, -scale, scale)

    def forward(
        self, tokens: Tensor, state: State | None = None, regularization: Regularization | None = None
    ) -> tuple[Tensor, State] | tuple[Tensor, State, Tensor]:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (seq_len, batch), got shape {tuple(tokens.shape)}")
        if regularization is not None:
            return self._regularized(tokens, state, regularization)
        out, state = self.features(tokens, state)
        return self.decoder(self.drop(out)), state

    def features(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """What the decoder reads: the last LSTM layer's output (seq_len, batch, decoder input), before
        the output dropout, and the state; ``forward`` is ``decoder(dropout(features))``."""
        return self.lstm(self.drop(self.embedding(tokens)), state)

    def _regularized(self, tokens: Tensor, state: State | None, r: Regularization) -> tuple[Tensor, State, Tensor]:
        """The forward with ``r``'s regularisers added to the model's own dropout (training only)."""
        if not self.training:
            logits, state = self.forward(tokens, state)
            return logits, state, logits.new_zeros(())
        x = embedding_dropout(self.embedding(tokens), tokens, self.config.vocab_size, r.embedding)
        x = locked_dropout(self.drop(x), r.input)
        raw, state = lstm_forward(self.lstm, x, state, r.hidden, r.weight)
        out = locked_dropout(self.drop(raw), r.output)
        return self.decoder(out), state, activation_penalty(raw, out, r.ar, r.tar)


def detach(state: State) -> State:
    """Cut the graph between bptt windows, keeping the values."""
    return tuple(s.detach() for s in state)  # type: ignore[return-value]
