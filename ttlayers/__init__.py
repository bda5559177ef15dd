"""ttlayers: Tensor-Train and low-rank layers as first-class PyTorch modules."""
