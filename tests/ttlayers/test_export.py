"""Every ttlayers layer under torch.compile (no graph break, dynamic shapes), torch.export with a
dynamic batch and sequence length, and ONNX (torch.onnx.export(dynamo=True)) run by onnxruntime
(the ``export`` extra; those tests are skipped without it)."""

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.export import Dim

from ttlayers import LSTM, LowRankLinear, LSTMLayer, TTEmbedding, TTLinear, tt_lstm
from ttlayers.tt_contract import _assume_constant_result, _weight_contraction, planned

FEATURES, HIDDEN, VOCAB = 12, 10, 60
SIZES = [(1, 1), (3, 2), (7, 5)]  # (sequence length, batch) at which exported models are run


def low_rank_lstm() -> LSTM:
    layers = [LSTMLayer(n, HIDDEN, LowRankLinear(n, 4 * HIDDEN, 3), LowRankLinear(HIDDEN, 4 * HIDDEN, 3))
              for n in (FEATURES, HIDDEN)]
    return LSTM(FEATURES, HIDDEN, 2, layers=layers)


def tt_maps_lstm() -> LSTM:
    return tt_lstm(LSTM(FEATURES, HIDDEN, 2), rank=2)


# name -> (module factory, input factory for (sequence length, batch))
MODELS = {
    "tt_linear": (lambda: TTLinear(FEATURES, 14, 3), lambda t, b: torch.randn(t, b, FEATURES)),
    "tt_linear_padded": (lambda: TTLinear(7, 11, 2), lambda t, b: torch.randn(t, b, 7)),
    "tt_embedding": (lambda: TTEmbedding(VOCAB, 8, 3, padding_idx=0), lambda t, b: torch.randint(0, VOCAB, (t, b))),
    "low_rank": (lambda: LowRankLinear(FEATURES, 14, 3), lambda t, b: torch.randn(t, b, FEATURES)),
    "lstm_dense": (lambda: LSTM(FEATURES, HIDDEN, 2), lambda t, b: torch.randn(t, b, FEATURES)),
    "lstm_low_rank": (low_rank_lstm, lambda t, b: torch.randn(t, b, FEATURES)),
    "lstm_tt": (tt_maps_lstm, lambda t, b: torch.randn(t, b, FEATURES)),
}
DYNAMIC = ({0: Dim("seq", min=1, max=64), 1: Dim("batch", min=1, max=64)},)


def model(name: str) -> tuple[nn.Module, callable]:
    torch.manual_seed(0)
    make, inputs = MODELS[name]
    return make().eval(), inputs


def flat(outputs) -> list[torch.Tensor]:
    return [o for o in torch.utils._pytree.tree_leaves(outputs)]


def assert_same(got, expected) -> None:
    for a, b in zip(flat(got), flat(expected), strict=True):
        a = torch.as_tensor(a)
        assert a.shape == b.shape
        assert torch.linalg.norm(a - b) <= 1e-5 * torch.linalg.norm(b) + 1e-7  # float32: relative error <= 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_compile_traces_the_whole_forward_with_dynamic_shapes(name):
    """fullgraph=True: no graph break; dynamic=True: symbolic sizes (the eager backend traces
    as inductor does, without its code generation; the slow test below runs inductor)."""
    m, inputs = model(name)
    compiled = torch.compile(m, backend="eager", dynamic=True, fullgraph=True)
    with torch.no_grad():
        for t, b in SIZES[1:]:
            x = inputs(t, b)
            assert_same(compiled(x), m(x))
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("grad", [False, True])
def test_inductor_compiles_forward_and_backward(name, grad):
    m, inputs = model(name)
    m.train(grad)
    compiled = torch.compile(m, dynamic=True, fullgraph=True)
    for t, b in SIZES[1:]:
        x = inputs(t, b)
        with torch.set_grad_enabled(grad):
            assert_same(compiled(x), m(x))
        if grad:
            sum(o.sum() for o in flat(compiled(x))).backward()
            got = [p.grad.clone() for p in m.parameters()]
            m.zero_grad()
            sum(o.sum() for o in flat(m(x))).backward()
            for a, b in zip(got, [p.grad for p in m.parameters()]):
                assert torch.linalg.norm(a - b) <= 1e-5 * torch.linalg.norm(b) + 1e-7
            m.zero_grad()
    torch._dynamo.reset()


def test_compile_meets_no_lru_cache_and_breaks_no_graph():
    """The route planning (opt_einsum, lru_cache) runs eagerly, outside the traced graph."""
    m, inputs = model("tt_linear")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explanation = torch._dynamo.explain(m)(inputs(3, 2))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    torch._dynamo.reset()


def test_plans_carry_the_mark_of_torch_assume_constant_result():
    """Our decorator sets exactly what torch's public one does (which imports dynamo to do it)."""
    marked = torch.compiler.assume_constant_result(lambda: None)
    assert vars(marked) and vars(_assume_constant_result(lambda: None)) == vars(marked)
    for fn in (planned, _weight_contraction):
        assert {k: getattr(fn, k, None) for k in vars(marked)} == vars(marked)


def test_import_leaves_dynamo_unloaded():
    code = "import sys, torch, ttlayers; m = ttlayers.TTLinear(12, 14, 3); m(torch.randn(2, 12)).sum().backward(); " \
           "print('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("name", MODELS)
def test_export_with_dynamic_batch_and_sequence_length(name):
    m, inputs = model(name)
    program = torch.export.export(m, (inputs(3, 2),), dynamic_shapes=DYNAMIC)
    exported = program.module()
    with torch.no_grad():
        for t, b in SIZES:
            x = inputs(t, b)
            assert_same(exported(x), m(x))


@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_runs_in_onnxruntime_with_the_same_outputs(name):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m, inputs = model(name)
    onnx_program = torch.onnx.export(m, (inputs(3, 2),), dynamic_shapes=DYNAMIC, dynamo=True, verbose=False)
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for t, b in SIZES:
            x = inputs(t, b)
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            assert_same([torch.from_numpy(g) for g in got], m(x))
