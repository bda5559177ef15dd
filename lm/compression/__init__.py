"""Compression of trained LSTM language models, measured honestly.

* ``prune``: magnitude pruning (``torch.nn.utils.prune``), one-shot or gradual;
* ``quantize``: the paper's 8-bit scheme per tensor or per channel, and int8 execution;
* ``groupreduce``: block low-rank embedding and softmax by word frequency;
* ``surgery``: LR-LSTM, TT-LSTM, low-rank / TT / GroupReduce embedding and decoder,
  initialised from a trained model by decomposition;
* ``export``: the compact artifact a compressed model ships in, and its byte size;
* ``latency``: one-token CPU latency, eager and int8, side by side.
"""

from . import export, layers  # noqa: F401, E402 (register the compressed layer types and the artifact reader with lm)
