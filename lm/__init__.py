"""lm: LSTM language models on PTB, and their compression with ttlayers.

Loading contract: ``lm.load(path)`` returns the ``LanguageModel`` in eval mode;
``model.vocab`` is the list of words by id; ``model(tokens, state=None)`` takes ids
(seq_len, batch) and returns ``(logits (seq_len, batch, vocab), state)``.
"""

from . import compression  # noqa: F401 (registers the compressed layer types and the artifact reader)
from .checkpoint import load
from .model import LanguageModel

__all__ = ["load", "LanguageModel"]
