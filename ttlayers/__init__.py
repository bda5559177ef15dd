"""ttlayers: Tensor-Train and low-rank layers as first-class PyTorch modules.

Importing ttlayers selects tensorly's ``pytorch`` backend (as tensorly-torch does), so that
``TTTensor.to_tensor()`` and ``TTMatrix.to_matrix()`` work on the torch cores our functions
return. Decompositions of numpy arrays return numpy cores; reconstruct those inside
``tensorly.backend_context("numpy")``.
"""

import tensorly as _tl

_tl.set_backend("pytorch")

from .factorize import factorize
from .tt_matrix import tt_matrix_svd
from .tt_round import tt_round
from .tt_svd import tt_svd
from .tt_matrix_module import TTMatrixModule
from .low_rank import LowRankLinear
from .lstm import LSTM, LSTMLayer, PlannedMap
from .tt_embedding import TTEmbedding
from .tt_linear import TTLinear
from .compress import CompressionReport, compress, count_parameters
from .lstm_compression import lr_decoder, lr_lstm, tt_lstm

__all__ = [
    "factorize",
    "tt_matrix_svd",
    "tt_round",
    "tt_svd",
    "TTMatrixModule",
    "LowRankLinear",
    "LSTM",
    "LSTMLayer",
    "PlannedMap",
    "TTEmbedding",
    "TTLinear",
    "CompressionReport",
    "compress",
    "count_parameters",
    "lr_decoder",
    "lr_lstm",
    "tt_lstm",
]
