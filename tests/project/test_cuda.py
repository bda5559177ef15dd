"""Every layer and decomposition on a GPU gives what it gives on the CPU (float64, forward and
gradients), and keeps its parameters, caches and results on the GPU.

Skipped without CUDA. ``TTLAYERS_TEST_DEVICE=cpu`` runs the same checks against a second CPU
copy, which tests the tests where no GPU is lent. ``benchmarks/device_check.sh`` runs this
file on the device machine.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from ttlayers import LSTM, LowRankLinear, TTEmbedding, TTLinear, lr_lstm, tt_lstm, tt_matrix_svd, tt_round, tt_svd

DEVICE = os.environ.get("TTLAYERS_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA"),
]

TOL = dict(rtol=1e-9, atol=1e-11)


def on_device(t: torch.Tensor) -> bool:
    return t.device.type == torch.device(DEVICE).type


def smooth(shape: tuple[int, ...]) -> torch.Tensor:
    """A sampled smooth function: low TT ranks, a decaying spectrum at every bond."""
    grids = torch.meshgrid(*[torch.linspace(0, 1, n, dtype=torch.float64) for n in shape], indexing="ij")
    return 1.0 / (1.0 + sum((k + 1) * g for k, g in enumerate(grids)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tt_svd_and_round_match_cpu(dtype):
    a = smooth((6, 7, 8, 5)).to(dtype)
    eps = 1e-4 if dtype == torch.float32 else 1e-10
    cpu = tt_svd(a, rel_eps=eps)
    gpu = tt_svd(a.to(DEVICE), rel_eps=eps)
    assert all(on_device(c) and c.dtype == dtype for c in gpu.factors)
    assert gpu.rank == cpu.rank
    error = torch.linalg.norm(gpu.to_tensor().double().cpu() - a.double())
    assert error <= eps * torch.linalg.norm(a.double())
    rounded, rounded_cpu = tt_round(gpu, max_rank=3), tt_round(cpu, max_rank=3)
    assert all(on_device(c) for c in rounded.factors)
    torch.testing.assert_close(rounded.to_tensor().cpu(), rounded_cpu.to_tensor(), **(TOL if dtype == torch.float64 else {}))


def test_tt_matrix_svd_matches_cpu():
    w = smooth((12, 20)).reshape(12, 20)
    cpu = tt_matrix_svd(w, (3, 4), (4, 5), max_rank=4)
    gpu = tt_matrix_svd(w.to(DEVICE), (3, 4), (4, 5), max_rank=4)
    assert all(on_device(c) for c in gpu.factors)
    torch.testing.assert_close(gpu.to_matrix().cpu(), cpu.to_matrix(), **TOL)


def _forward_backward(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    x = x.clone().requires_grad_(x.is_floating_point())
    out = module(x)
    out = out[0] if isinstance(out, tuple) else out
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    (out * weights).sum().backward()
    grads = [p.grad for p in module.parameters()]
    return out, grads, x.grad


def _layers() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64)
    return {
        "tt_linear": (TTLinear(24, 30, 4, **f64), torch.randn(5, 24, **f64)),
        "tt_linear_padded": (TTLinear(23, 29, 3, **f64), torch.randn(2, 3, 23, **f64)),
        "tt_embedding": (TTEmbedding(60, 12, 4, **f64), torch.randint(0, 60, (7, 3))),
        "low_rank": (LowRankLinear(20, 16, 5, **f64), torch.randn(4, 20, **f64)),
        "lstm_dense": (LSTM(10, 12, num_layers=2, dtype=torch.float64), torch.randn(6, 3, 10, **f64)),
        "lstm_low_rank": (lr_lstm(nn.LSTM(12, 16, num_layers=2, dtype=torch.float64), rank=4), torch.randn(6, 3, 12, **f64)),
        "lstm_tt": (tt_lstm(nn.LSTM(12, 16, num_layers=2, dtype=torch.float64), rank=4), torch.randn(6, 3, 12, **f64)),
    }


@pytest.mark.parametrize("name", list(_layers()))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layer_matches_cpu(name, mode):
    module, x = _layers()[name]
    module.train(mode == "train")
    gpu = copy.deepcopy(module).to(DEVICE)
    out, grads, x_grad = _forward_backward(module, x)
    out_g, grads_g, x_grad_g = _forward_backward(gpu, x.to(DEVICE))
    assert on_device(out_g) and all(on_device(g) for g in grads_g)
    torch.testing.assert_close(out_g.cpu(), out, **TOL)
    for g, g_gpu in zip(grads, grads_g):
        torch.testing.assert_close(g_gpu.cpu(), g, **TOL)
    if x_grad is not None:
        torch.testing.assert_close(x_grad_g.cpu(), x_grad, **TOL)


def test_from_dense_on_device():
    torch.manual_seed(0)
    dense = nn.Linear(24, 30, dtype=torch.float64)
    cpu = TTLinear.from_linear(dense, rank=6)
    gpu = TTLinear.from_linear(copy.deepcopy(dense).to(DEVICE), rank=6)
    assert all(on_device(p) for p in gpu.parameters())
    torch.testing.assert_close(gpu.dense_weight().cpu(), cpu.dense_weight(), **TOL)
    low = LowRankLinear.from_linear(copy.deepcopy(dense).to(DEVICE), rank=5)
    torch.testing.assert_close(low.dense_weight().cpu(), LowRankLinear.from_linear(dense, rank=5).dense_weight(), **TOL)


def test_training_step_stays_on_device():
    torch.manual_seed(0)
    model = nn.Sequential(TTLinear(24, 30, 4), nn.Tanh(), LowRankLinear(30, 10, 3)).to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 24, device=DEVICE), torch.randint(0, 10, (16,), device=DEVICE)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(on_device(p) for p in model.parameters())
