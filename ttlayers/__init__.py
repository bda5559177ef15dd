"""ttlayers: Tensor-Train and low-rank layers as first-class PyTorch modules.

Importing ttlayers leaves tensorly's backend as it is. The decompositions return tensorly
``TTTensor`` / ``TTMatrix`` objects whose ``to_tensor()`` / ``to_matrix()`` run under the backend
of their own cores (numpy in, numpy out; torch in, torch out).
"""

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
