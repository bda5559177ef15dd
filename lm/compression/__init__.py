"""Compression of trained LSTM language models, measured honestly.

* ``prune``: magnitude pruning (``torch.nn.utils.prune``), one-shot or gradual;
* ``quantize``: the paper's 8-bit scheme per tensor or per channel, and int8 execution;
* ``lowbit``: 2-4 bit per-row codes and their packing; ``qat``: quantization-aware training at those bits;
* ``groupreduce``: block low-rank embedding and softmax by word frequency;
* ``surgery``: LR-LSTM, TT-LSTM, low-rank / TT / GroupReduce embedding and decoder,
  initialised from a trained model by decomposition;
* ``export``: the compact artifact a compressed model ships in, and its byte size;
* ``builders``: the compressed layer types' modules, built from their specs.
"""

from . import builders, export  # noqa: F401 (register the compressed layer types and the artifact reader with lm)
