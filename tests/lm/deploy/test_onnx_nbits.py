"""lm.deploy.onnx_nbits: a 2-, 3- or 4-bit artifact in ONNX with its weights as their codes, packed 4 (or 2)
bits a number (onnxruntime's MatMulNBits, packed lookups), through ``lm export --weights nbits``."""

import re

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from lm.deploy.onnx_export import export_onnx, read_metadata  # noqa: E402  (needs onnx)
from lm.deploy.runtime import OnnxRuntime, TorchRuntime  # noqa: E402


@pytest.mark.parametrize("kind, bits, container", [("lr_tied", 4, None), ("lr_tied", 2, 2), ("lr_tied", 3, None),
                                                   ("tt", 4, None), ("dense", 2, None)])
def test_nbits_export_runs_the_artifacts_own_weights(kind, bits, container, tiny, steps, tmp_path, capsys):
    """A q2/q3/q4 artifact exports with its weights as their codes (MatMulNBits, packed lookups; 4 bits a code
    unless told 2), and onnxruntime computes the model decoded from the artifact (float32 rounding only)."""
    from lm.__main__ import main
    from lm.checkpoint import dedupe
    from lm.compression.export import export, load_artifact

    artifact = export(tiny(kind), tmp_path / "artifact.safetensors", quant=f"q{bits}")
    main(["export", str(artifact.path), "--weights", "nbits", *(["--container", str(container)] if container else [])])
    path = tmp_path / f"artifact.q{bits}.onnx"
    packed_in = container or 4
    assert f"{bits}-bit weights in {packed_in}-bit codes" in capsys.readouterr().out
    assert (read_metadata(path)["bits"], read_metadata(path)["container"]) == (str(bits), str(packed_in))
    decoded = load_artifact(artifact.path)
    ids = np.random.default_rng(0).integers(0, 60, (6, 3))
    for got, want in zip(steps(OnnxRuntime(path), ids, 3), steps(TorchRuntime(decoded), ids, 3)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    graph = onnx.load(path).graph
    products = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert products and all(onnx.helper.get_attribute_value(a) == packed_in
                            for n in products for a in n.attribute if a.name == "bits")
    # every weight once, packed in its container (TT cores too, built when the file is opened); no float weight
    # matrix left (floats: biases, row offsets, block scales)
    packed = [t for t in graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.dims) == 3]
    weights = [t for t in dedupe(decoded.state_dict())[0].values() if t.dim() >= 2]
    assert len(packed) == len(weights)
    floats = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2]
    assert all(name.endswith(("_nbits_scales", "_nbits_offsets")) for name in floats), floats


def test_nbits_export_refuses_weights_off_the_grid_and_containers_too_narrow(tiny, tmp_path, capsys):
    from lm.__main__ import main
    from lm.compression.export import export, load_artifact

    with pytest.raises(ValueError, match="not on a 4-bit grid"):
        export_onnx(tiny("lr_tied"), tmp_path / "x.onnx", weights="nbits", bits=4)  # a float model
    with pytest.raises(ValueError, match="bits .* and container go with weights='nbits'"):
        export_onnx(tiny("lr_tied"), tmp_path / "x.onnx", bits=4)
    with pytest.raises(ValueError, match="bits .* and container go with weights='nbits'"):
        export_onnx(tiny("lr_tied"), tmp_path / "x.onnx", container=4)
    with pytest.raises(ValueError, match="weights must be one of"):
        export_onnx(tiny("lr_tied"), tmp_path / "x.onnx", weights="int4")
    with pytest.raises(ValueError, match="activations goes with weights='nbits'"):
        export_onnx(tiny("lr_tied"), tmp_path / "x.onnx", weights="int8", activations="int8")
    q3 = load_artifact(export(tiny("lr_tied"), tmp_path / "q3.safetensors", quant="q3").path)
    with pytest.raises(ValueError, match="container must be one of \\(2, 4\\) .* hold the 3-bit codes, got 2"):
        export_onnx(q3, tmp_path / "q3.onnx", weights="nbits", bits=3, container=2)
    with pytest.raises(ValueError, match="bits must be one of \\(2, 3, 4\\)"):
        export_onnx(q3, tmp_path / "q3.onnx", weights="nbits", bits=8)
    with pytest.raises(ValueError, match="activations must be one of \\('float32', 'int8'\\), got 'int4'"):
        export_onnx(q3, tmp_path / "q3.onnx", weights="nbits", bits=3, activations="int4")
    for argv, message in ((["--weights", "nbits", "--container", "2"], "--container 2: .* holds 3-bit codes"),
                          (["--container", "4"], "--container and --activations go with --weights nbits"),
                          (["--activations", "int8"], "--container and --activations go with --weights nbits")):
        with pytest.raises(SystemExit):
            main(["export", str(tmp_path / "q3.safetensors"), *argv])
        assert re.search(message, capsys.readouterr().err)


# 2-bit codes in 4-bit containers: in 2-bit ones onnxruntime 1.32 keeps float products for inner dimensions
# as small as these (below 64), so int8 there changes nothing to see
@pytest.mark.parametrize("kind, bits, container", [("lr_tied", 4, None), ("lr_tied", 2, None), ("tt", 3, None)])
def test_int8_activations_quantize_the_products_inputs_and_nothing_else(kind, bits, container, tiny, steps, tmp_path,
                                                                        capsys):
    """``--activations int8`` sets every MatMulNBits' accuracy_level to 4 (int8 inputs, per block) and changes
    nothing else in the graph; its logits stay within the inputs' int8 rounding of the float-activation export's."""
    from lm.__main__ import main
    from lm.compression.export import export

    artifact = export(tiny(kind), tmp_path / "artifact.safetensors", quant=f"q{bits}")
    args = ["export", str(artifact.path), "--weights", "nbits", *(["--container", str(container)] if container else [])]
    main(args + ["--out", str(tmp_path / "float.onnx")])
    main(args + ["--activations", "int8", "--out", str(tmp_path / "int8.onnx")])
    assert "float32 activations" in capsys.readouterr().out.splitlines()[0]
    assert read_metadata(tmp_path / "int8.onnx")["activations"] == "int8"
    assert read_metadata(tmp_path / "float.onnx")["activations"] == "float32"

    def level(node):
        return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "accuracy_level"), 0)

    plain, quantized = (onnx.load(tmp_path / f"{name}.onnx").graph for name in ("float", "int8"))
    assert [n.op_type for n in plain.node] == [n.op_type for n in quantized.node]
    assert {level(n) for n in plain.node if n.op_type == "MatMulNBits"} == {0}
    assert {level(n) for n in quantized.node if n.op_type == "MatMulNBits"} == {4}
    ids = np.random.default_rng(0).integers(0, 60, (6, 3))
    exact = steps(OnnxRuntime(tmp_path / "float.onnx"), ids, 3)
    approximate = steps(OnnxRuntime(tmp_path / "int8.onnx"), ids, 3)
    for got, want in zip(approximate, exact):
        np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())
    assert any(not np.allclose(got, want, rtol=1e-6, atol=1e-7) for got, want in zip(approximate, exact))


@pytest.mark.parametrize("crafted", [
    pytest.param(lambda table: ["embedding.weight"], id="table-a-list"),
    pytest.param(lambda table: "q4", id="table-a-string"),
    pytest.param(lambda table: {**table, "embedding.weight": "q4"}, id="entry-a-string"),
    pytest.param(lambda table: {**table, "embedding.weight": {**table["embedding.weight"], "codec": ["q4"]}},
                 id="codec-a-list"),
    pytest.param(lambda table: {**table, "embedding.weight": {**table["embedding.weight"], "codec": {"q": 4}}},
                 id="codec-a-dict"),
])
def test_artifact_bits_refuses_a_crafted_tensor_table(crafted, tiny, tmp_path, capsys):
    """``artifact_bits`` checks an artifact's table as the loader does: a table that is not a mapping, an entry
    that is not one, a codec that is not a string are a ``ModelFileError`` naming the file (they raised
    AttributeError or TypeError, or were skipped), and ``lm export --weights nbits`` says so without a traceback."""
    from lm import modelfile
    from lm.__main__ import main
    from lm.compression.export import export
    from lm.deploy.onnx_export import artifact_bits

    path = export(tiny("lr_tied"), tmp_path / "q4.safetensors", quant="q4").path
    assert artifact_bits(path) == 4
    f = modelfile.read(path)
    modelfile.write(path, "artifact", {**f.meta, "tensors": crafted(f.meta["tensors"])}, f.tensors)
    with pytest.raises(modelfile.ModelFileError, match=re.escape(str(path))):
        artifact_bits(path)
    with pytest.raises(SystemExit) as exit:
        main(["export", str(path), "--weights", "nbits"])
    assert exit.value.code == 2 and f"--weights nbits: {path}: " in capsys.readouterr().err
