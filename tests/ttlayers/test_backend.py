"""numpy in, numpy out; torch in, torch out: results reconstruct under the backend of their own
cores, whatever tensorly's global backend, and importing ttlayers leaves that backend alone."""

import importlib
import threading

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.decomposition import tensor_train

import ttlayers
from ttlayers import tt_matrix_svd, tt_round, tt_svd


def test_import_leaves_a_users_numpy_tensorly_code_working():
    with tl.backend_context("numpy"):
        importlib.reload(ttlayers)  # runs the package's import code again
        assert tl.get_backend() == "numpy"
        array = np.random.default_rng(0).standard_normal((3, 4, 5))
        assert isinstance(tensor_train(tl.tensor(array), rank=[1, 3, 4, 1]).to_tensor(), np.ndarray)
        assert isinstance(ttlayers.tt_svd(array).to_tensor(), np.ndarray)


@pytest.mark.parametrize("global_backend", ["numpy", "pytorch"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_results_reconstruct_in_their_own_array_type(global_backend, kind):
    rng = np.random.default_rng(0)
    array = rng.standard_normal((4, 6, 5))
    matrix = rng.standard_normal((12, 10))
    wrap = np.asarray if kind == "numpy" else torch.from_numpy
    expected = np.ndarray if kind == "numpy" else torch.Tensor
    with tl.backend_context(global_backend):
        tt = tt_svd(wrap(array))
        full = tt.to_tensor()
        assert isinstance(full, expected)
        np.testing.assert_allclose(np.asarray(full), array, atol=1e-12)
        assert isinstance(tt.to_unfolding(1), expected) and isinstance(tt.to_vec(), expected)
        assert isinstance(tt_round(tt, max_rank=2).to_tensor(), expected)
        ttm = tt_matrix_svd(wrap(matrix), (3, 4), (5, 2))
        np.testing.assert_allclose(np.asarray(ttm.to_matrix()), matrix, atol=1e-12)
        assert isinstance(tt_round(ttm, rel_eps=0.5).to_matrix(), expected)
        assert tl.get_backend() == global_backend


def test_the_backend_is_switched_for_the_calling_thread_only():
    """While one thread reconstructs torch cores, another sees its own backend throughout."""
    tt = tt_svd(torch.randn(30, 40, 50, dtype=torch.float64), max_rank=10)
    seen, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            seen.add(tl.get_backend())

    with tl.backend_context("numpy"):
        watcher = threading.Thread(target=watch)
        watcher.start()
        for _ in range(20):
            tt.to_tensor()
        stop.set()
        watcher.join()
    assert seen == {"numpy"}
