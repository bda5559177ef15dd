"""lm.deploy.onnx_export: the streaming step in ONNX, float32 and int8, and ``lm export``."""

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from lm.deploy.onnx_export import export_onnx, read_metadata  # noqa: E402  (needs onnx)
from lm.deploy.runtime import OnnxRuntime, TorchRuntime  # noqa: E402


@pytest.mark.parametrize("kind", ["dense", "tt", "lr"])
def test_onnx_step_matches_torch_at_several_batch_sizes(kind, exported, steps):
    model, info = exported[kind]
    assert info.bytes == info.path.stat().st_size and not info.int8
    onnx_run, torch_run = OnnxRuntime(info.path), TorchRuntime(model)
    for batch in (1, 4):
        ids = np.random.default_rng(batch).integers(0, 60, (6, batch))
        for got, want in zip(steps(onnx_run, ids, batch), steps(torch_run, ids, batch)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert read_metadata(info.path)["vocab"].split("\n") == model.vocab
    assert not [n.name for n in onnx.load(info.path).graph.node if n.metadata_props]  # no exporter provenance shipped


@pytest.mark.parametrize("kind", ["lr_tied", "dense"])
def test_float32_export_stores_a_tied_table_once_and_transposes_it_at_load(kind, tiny, steps, tmp_path):
    from onnx import numpy_helper

    from lm.checkpoint import dedupe

    model = tiny(kind)
    path = export_onnx(model, tmp_path / "model.onnx").path
    graph = onnx.load(path).graph
    vocab, width = model.decoder.weight.shape
    assert len([t for t in graph.initializer if sorted(t.dims) == sorted((vocab, width))]) == 1
    # every weight matrix is in the file once: its float32 matrices are the model's distinct weights
    weights = [t for t in dedupe(model.state_dict())[0].values() if t.dim() == 2]
    assert sum(numpy_helper.to_array(t).size for t in graph.initializer if len(t.dims) == 2) == \
        sum(t.numel() for t in weights)
    # the softmax's transposed table is built when onnxruntime opens the file (constant folding): no constant is
    # transposed at run time, and the session's product reads a constant of its own
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session = onnx.load(tmp_path / "optimized.onnx").graph
    assert "Transpose" not in {n.op_type for n in session.node}
    assert sorted(tuple(t.dims) for t in session.initializer if sorted(t.dims) == sorted((vocab, width))) == [
        (width, vocab), (vocab, width)]
    ids = np.random.default_rng(0).integers(0, 60, (6, 3))
    for got, want in zip(steps(OnnxRuntime(path), ids, 3), steps(TorchRuntime(model), ids, 3)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_each_lstm_layer_is_one_product_a_step(exported):
    """The dense model's two layers: their input and recurrent maps fused (GateProduct), so three products with
    constant weights a step: a gate product per layer and the softmax (its tied table transposed at load)."""
    graph = onnx.load(exported["dense"][1].path).graph
    constants = {t.name for t in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Transpose" and n.input[0] in constants}
    products = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants]
    assert len(products) == 3


def test_int8_export_runs_int8_products_close_to_float(exported, steps, tmp_path, capsys):
    from lm.__main__ import main
    from lm.compression.export import export

    model, plain = exported["tt"]
    export(model, tmp_path / "artifact.safetensors")  # a compact artifact exports as a checkpoint does
    main(["export", str(tmp_path), "--format", "onnx", "--int8"])  # a run directory holding it
    path = tmp_path / "artifact.int8.onnx"
    assert str(path) in capsys.readouterr().out
    graph = onnx.load(path).graph
    ops = {n.op_type for n in graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"} and "Gemm" not in ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    ids = np.random.default_rng(0).integers(0, 60, (6, 2))
    for got, want in zip(steps(OnnxRuntime(path), ids, 2), steps(OnnxRuntime(plain.path), ids, 2)):
        np.testing.assert_allclose(got, want, atol=0.1 * np.abs(want).max())
    assert read_metadata(path)["vocab"].split("\n") == model.vocab


@pytest.mark.parametrize("argv, message", [
    (["export", "{onnx}", "--format", "tflite"], "invalid choice: 'tflite'"),
    (["export", "{onnx}", "--tt", "fused"], "invalid choice: 'fused'"),
    (["export", "{onnx}", "--weights", "int4"], "invalid choice: 'int4'"),
    (["export", "{onnx}", "--weights", "nbits", "--int8"], "not allowed with argument"),
    (["export", "{checkpoint}", "--weights", "nbits"], "holds no 2-, 3- or 4-bit weights"),
    (["export", "{q4}", "--weights", "nbits", "--tt", "dense"], "keeps the TT cores as their codes: --tt load or cores"),
])
def test_the_cli_refuses_bad_arguments(argv, message, exported, tmp_path, capsys):
    from lm.__main__ import main
    from lm.checkpoint import save_model
    from lm.compression.export import export

    model = exported["dense"][0]
    save_model(model, tmp_path / "model.safetensors")
    export(model, tmp_path / "q4.safetensors", quant="q4")
    argv = [a.format(onnx=exported["dense"][1].path, tmp=tmp_path, checkpoint=tmp_path / "model.safetensors",
                     q4=tmp_path / "q4.safetensors") for a in argv]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["lr_tied", "dense"])
def test_int8_export_stores_a_tied_table_once(kind, tiny, steps, tmp_path):
    from onnx import numpy_helper

    from lm.checkpoint import dedupe

    model = tiny(kind)
    path = export_onnx(model, tmp_path / "model.int8.onnx", weights="int8").path
    graph = onnx.load(path).graph
    vocab, width = model.decoder.weight.shape
    tables = [t.name for t in graph.initializer if sorted(t.dims) == sorted((vocab, width))]
    assert len(tables) == 1, tables
    # every weight matrix is in the file once, as int8: the file's int8 bytes are the model's distinct weights
    weights = [t for t in dedupe(model.state_dict())[0].values() if t.dim() == 2]
    int8_bytes = sum(numpy_helper.to_array(t).size for t in graph.initializer
                     if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2)  # not the zero points
    assert int8_bytes == sum(t.numel() for t in weights)
    assert not [t for t in graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.dims) == 2]
    # the lookup reads the softmax's codes: the graph computes the float model within int8's rounding, run by
    # ONNX's reference evaluator and by onnxruntime with its int8 products exact (0.3% of the largest logit
    # here). By default, on a CPU without VNNI (AVX2), onnxruntime's products saturate on these random weights
    # spread over the whole int8 range: up to 19% off (trained models: nothing measurable). A lookup of the
    # wrong codes is off by the logits' whole range.
    from onnx.reference import ReferenceEvaluator

    reference = ReferenceEvaluator(onnx.load(path))

    class Reference:
        initial_state = OnnxRuntime(path).initial_state

        def step(self, ids, state):
            logits, h, c = reference.run(None, {"ids": ids, "h": state[0], "c": state[1]})
            return logits, (h, c)

    ids = np.random.default_rng(0).integers(0, 60, (6, 3))
    want = steps(TorchRuntime(model), ids, 3)
    for run in (Reference(), OnnxRuntime(path, avoid_saturation=True)):
        for got, expected in zip(steps(run, ids, 3), want):
            np.testing.assert_allclose(got, expected, atol=0.02 * np.abs(expected).max())
    for got, expected in zip(steps(OnnxRuntime(path), ids, 3), want):
        np.testing.assert_allclose(got, expected, atol=0.25 * np.abs(expected).max())


def test_the_int8_flag_of_the_last_release_still_exports_int8(tiny, tmp_path):
    with pytest.warns(DeprecationWarning, match="use weights='int8'"):
        info = export_onnx(tiny("lr_tied"), tmp_path / "x.onnx", int8=True)
    assert info.weights == "int8" and info.int8 and read_metadata(info.path)["int8"] == "true"
