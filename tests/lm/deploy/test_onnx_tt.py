"""lm.deploy.onnx_tt: TT weights built from their cores when onnxruntime opens the file (``tt="load"``)."""

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lm.compression.surgery import compress_model  # noqa: E402
from lm.config import ModelConfig  # noqa: E402
from lm.deploy.onnx_export import export_onnx  # noqa: E402
from lm.deploy.onnx_tt import _build_nodes, built_weights, holders  # noqa: E402
from lm.deploy.runtime import OnnxRuntime, TorchRuntime  # noqa: E402
from lm.model import LanguageModel  # noqa: E402
from ttlayers import TTEmbedding, TTLinear  # noqa: E402


def _run_build(weight, transposed: bool) -> np.ndarray:
    """The weight as the graph's build nodes compute it, run by onnxruntime with its optimizations off."""
    nodes, inits = _build_nodes(weight, "w", transposed)
    shape = weight.value.T.shape if transposed else weight.value.shape
    graph = helper.make_graph(nodes, "build", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {})[0]


class _Holder(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer


@pytest.mark.parametrize("layer", [
    TTLinear(37, 50, rank=4),  # both sides padded (37 and 50 factor badly)
    TTLinear(64, 48, rank=[3, 5], in_shape=(4, 4, 4), out_shape=(2, 4, 6)),
    TTLinear(6, 1, rank=2, in_shape=(6,), out_shape=(1,)),  # one core, an output of size one
    TTEmbedding(100, 12, rank=3),
    TTEmbedding(61, 7, rank=5),  # padded vocabulary and width
    TTEmbedding(30, 6, rank=2, padding_idx=4),  # its padding row is zero in the built table
], ids=["linear-padded", "linear-3-cores", "linear-1-core", "embedding", "embedding-padded", "embedding-padding-idx"])
@pytest.mark.parametrize("transposed", [False, True])
def test_the_build_nodes_compute_the_built_weight(layer, transposed):
    torch.manual_seed(0)
    for core in layer.cores:  # an ill-scaled train of cores: 1e3 and 1e-3
        torch.nn.init.normal_(core)
    with torch.no_grad():
        layer.cores[0].mul_(1e3)
        layer.cores[-1].mul_(1e-3)
    (weight,) = built_weights(_Holder(layer))
    want = weight.value.T if transposed else weight.value
    expected = (layer.dense_weight() if isinstance(layer, TTLinear) else layer(torch.arange(layer.num_embeddings)))
    np.testing.assert_array_equal(weight.value, expected.detach().numpy())
    got = _run_build(weight, transposed)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("transposed", [False, True])
def test_a_fused_gate_weight_is_built_from_its_tt_and_dense_blocks(transposed):
    from ttlayers import LSTM
    from ttlayers.lstm import LSTMLayer

    torch.manual_seed(0)
    layer = LSTMLayer(37, 8, input_map=TTLinear(37, 32, rank=3), recurrent_map=torch.nn.Linear(8, 32))
    (gate,) = built_weights(_Holder(LSTM(37, 8, layers=[layer])))
    assert [type(b).__name__ for b in gate.blocks] == ["BuiltWeight", "ndarray"] and gate.value.shape == (32, 45)
    np.testing.assert_array_equal(gate.value[:, 37:], layer.recurrent_map.weight.detach().numpy())
    want = gate.value.T if transposed else gate.value
    np.testing.assert_allclose(_run_build(gate, transposed), want, rtol=1e-5, atol=1e-6)


def test_holders_find_a_weight_and_its_transpose_by_value():
    layer = TTLinear(8, 6, rank=2)
    (weight,) = built_weights(_Holder(layer))
    graph = helper.make_graph([], "g", [], [], [numpy_helper.from_array(weight.value, "w"),
                                                numpy_helper.from_array(weight.value.T.copy(), "w_t"),
                                                numpy_helper.from_array(weight.value + 1, "other")])
    found = holders(graph, [weight])
    assert {name: transposed for name, (_, transposed) in found.items()} == {"w": False, "w_t": True}


def _optimized(path, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(tmp_path / "optimized.onnx").graph


def _tt_model(hidden: int) -> LanguageModel:
    """A 60-word, 2 x ``hidden`` model with a TT embedding (rank 3), a TT-LSTM (rank 3) and a low-rank softmax."""
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=60, hidden_size=hidden, num_layers=2), [f"w{i}" for i in range(60)])
    model.init_uniform(0.3)
    return compress_model(model.eval(), embedding={"type": "tt", "rank": 3}, lstm={"type": "tt_lstm", "rank": 3},
                          decoder={"type": "low_rank", "rank": 4}).eval()


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_load_stores_the_cores_and_runs_the_built_weights(weights, steps, tmp_path):
    """The file holds the cores, not the built weights; the session (after constant folding) holds the built
    weights, in int8 for int8; and the outputs are the built route's."""
    model = _tt_model(64)  # wide enough that the float32 cores take fewer bytes than the int8 weights
    load = export_onnx(model, tmp_path / "load.onnx", weights=weights)
    dense = export_onnx(model, tmp_path / "dense.onnx", weights=weights, tt="dense")
    assert load.tt == "load" and dense.tt == "dense" and load.bytes < dense.bytes
    built = {w.value.shape for w in built_weights(model)} | {w.value.T.shape for w in built_weights(model)}
    # the embedding, and per LSTM layer its two TT maps fused into one product [W_ih, W_hh]
    assert [type(w).__name__ for w in built_weights(model)] == ["GateWeight", "GateWeight", "BuiltWeight"]
    assert len(built_weights(model, fuse=False)) == 5
    stored = [tuple(t.dims) for t in onnx.load(load.path).graph.initializer]
    assert not built & set(stored)
    session = _optimized(load.path, tmp_path)
    folded = [t for t in session.initializer if tuple(t.dims) in built]
    assert len(folded) >= 3
    if weights == "int8":
        assert {t.data_type for t in folded} <= {TensorProto.INT8, TensorProto.UINT8}  # the quantizer's lookups: uint8
    assert not {n.op_type for n in session.node} & {"QuantizeLinear", "Transpose"}  # folded, not run per step
    ids = np.random.default_rng(0).integers(0, 60, (5, 3))
    want = steps(OnnxRuntime(dense.path), ids, 3)
    for got, ref in zip(steps(OnnxRuntime(load.path), ids, 3), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=(1e-5 if weights == "float32" else 0.02) * np.abs(ref).max())


def test_load_keeps_a_built_weight_whose_cores_are_larger(tiny, tmp_path):
    """At hidden size 12 the TT maps' float32 cores outweigh their int8 codes: int8 keeps the built weights, and
    the file is never larger than the built route's."""
    model = _tt_model(12)
    sizes = {tt: export_onnx(model, tmp_path / f"{tt}.onnx", weights="int8", tt=tt).bytes for tt in ("load", "dense")}
    assert sizes["load"] <= sizes["dense"]


@pytest.mark.parametrize("tt", ["load", "cores", "dense"])
def test_every_route_matches_torch(tt, tiny, steps, tmp_path):
    model = tiny("tt_softmax")  # a TT softmax (its built weight read transposed by the product)
    info = export_onnx(model, tmp_path / f"{tt}.onnx", tt=tt)
    ids = np.random.default_rng(1).integers(0, 60, (4, 2))
    for got, want in zip(steps(OnnxRuntime(info.path), ids, 2), steps(TorchRuntime(model), ids, 2)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, bits", [("tt", 4), ("tt", 2), ("tt_softmax", 3)])
def test_nbits_load_stores_the_cores_codes_and_builds_the_weights_when_opened(kind, bits, tiny, steps, tmp_path):
    """With n-bit weights, ``tt="load"`` (the default) stores each TT core's codes once and computes the built
    weights from them with constant inputs only: the decoded artifact's outputs, no float weight in the file."""
    from lm.compression.export import decode, export_bytes

    model = decode(export_bytes(tiny(kind), f"q{bits}")[0])
    info = export_onnx(model, tmp_path / "load.onnx", weights="nbits", bits=bits)
    assert info.tt == "load"
    ids = np.random.default_rng(0).integers(0, 60, (6, 3))
    for got, want in zip(steps(OnnxRuntime(info.path), ids, 3), steps(TorchRuntime(model), ids, 3)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    graph = onnx.load(info.path).graph
    cores = [n for n, p in model.named_parameters() if ".cores." in n]
    assert {f"{n}_nbits" for n in cores} <= {t.name for t in graph.initializer}  # each core's codes, once
    floats = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2]
    assert all(name.endswith(("_nbits_scales", "_nbits_offsets")) for name in floats), floats
    # the cores' dequantization and the builds read only constants: onnxruntime folds them when it opens the file
    constant = {t.name for t in graph.initializer} | {""}
    for n in graph.node:
        if all(i in constant for i in n.input):
            constant.update(n.output)
    build = [o for n in graph.node for o in n.output if ".cores." in o]
    assert build and set(build) <= constant


def test_nbits_routes_keep_the_cores_and_dense_is_refused(tiny, tmp_path):
    from lm.compression.export import decode, export_bytes

    model = decode(export_bytes(tiny("tt"), "q4")[0])
    assert export_onnx(model, tmp_path / "q4.onnx", weights="nbits", bits=4, tt="cores").tt == "cores"
    with pytest.raises(ValueError, match="keeps the TT cores as their codes"):
        export_onnx(model, tmp_path / "bad.onnx", weights="nbits", bits=4, tt="dense")
    with pytest.raises(ValueError, match="tt must be one of"):
        export_onnx(model, tmp_path / "bad.onnx", tt="fused")
