"""ttlayers: Tensor-Train and low-rank layers as first-class PyTorch modules."""

from .factorize import factorize
from .tt_matrix import tt_matrix_svd
from .tt_round import tt_round
from .tt_svd import tt_svd
