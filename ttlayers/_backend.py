"""The numpy / torch / tensorly adapter of the decompositions.

The decompositions compute on torch tensors and return tensorly factorized tensors whose cores
have the input's array type (numpy in, numpy out). tensorly's functions run under one backend
at a time, chosen globally with ``tensorly.set_backend``; ttlayers never changes it (a library
that did would break its user's other tensorly code, as tensorly-torch's import does). Instead
the decompositions return :class:`TTTensor` / :class:`TTMatrix`, tensorly's classes whose
methods (``to_tensor``, ``to_matrix``, ``to_unfolding``, ``to_vec``) run under the backend of
their own cores, set for the calling thread only and restored afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import tensorly as tl
import torch
from tensorly import tt_matrix, tt_tensor


def as_torch(array, name: str = "tensor") -> tuple[torch.Tensor, str]:
    """``array`` (torch tensor or numpy array, float32/float64) as a detached torch tensor (numpy
    memory is shared), and the name of the matching tensorly backend."""
    if torch.is_tensor(array):
        backend, out = "pytorch", array.detach()
    elif isinstance(array, np.ndarray):
        backend = "numpy"
        out = torch.from_numpy(np.ascontiguousarray(array)) if array.dtype in (np.float32, np.float64) else None
    else:
        raise ValueError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(array).__name__}")
    if out is None or out.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64, got dtype {array.dtype}")
    return out, backend


def from_torch(tensor: torch.Tensor, backend: str):
    """Back to the array type of ``backend``."""
    return tensor.cpu().numpy() if backend == "numpy" else tensor


def backend_of(array) -> str:
    """The tensorly backend whose arrays ``array`` is: ``"pytorch"`` or ``"numpy"``."""
    return "pytorch" if torch.is_tensor(array) else "numpy"


@contextmanager
def backend_for(factors: Sequence) -> Iterator[None]:
    """tensorly's backend set to that of ``factors`` for the calling thread, restored on exit;
    the process-wide default (``tensorly.set_backend``) is never touched."""
    name, old = backend_of(factors[0]), tl.get_backend()
    if name == old:
        yield
        return
    tl.set_backend(name, local_threadsafe=True)
    try:
        yield
    finally:
        tl.set_backend(old, local_threadsafe=True)


def _in_own_backend(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with backend_for(self.factors):
            return method(self, *args, **kwargs)
    return run


class _BuiltInOwnBackend:
    """Builds a tensorly factorized tensor under the backend of its factors (a mixin)."""

    def __init__(self, factors, inplace=False):
        with backend_for(factors):
            super().__init__(factors, inplace)


class TTTensor(_BuiltInOwnBackend, tt_tensor.TTTensor):
    """tensorly's ``TTTensor`` built, and its dense forms computed, with the backend of its cores."""

    to_tensor = _in_own_backend(tt_tensor.TTTensor.to_tensor)
    to_unfolding = _in_own_backend(tt_tensor.TTTensor.to_unfolding)
    to_vec = _in_own_backend(tt_tensor.TTTensor.to_vec)


class TTMatrix(_BuiltInOwnBackend, tt_matrix.TTMatrix):
    """tensorly's ``TTMatrix`` built, and its dense forms computed, with the backend of its cores."""

    to_tensor = _in_own_backend(tt_matrix.TTMatrix.to_tensor)
    to_matrix = _in_own_backend(tt_matrix.TTMatrix.to_matrix)
    to_unfolding = _in_own_backend(tt_matrix.TTMatrix.to_unfolding)
    to_vec = _in_own_backend(tt_matrix.TTMatrix.to_vec)


def build(cls: type[TTTensor] | type[TTMatrix], factors: list[torch.Tensor], backend: str) -> TTTensor | TTMatrix:
    """``cls(factors)`` with the factors converted to the array type of ``backend``."""
    return cls([from_torch(f, backend) for f in factors])
