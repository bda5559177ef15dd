"""lm.deploy.onnx_nbits: a 2- or 4-bit artifact in ONNX with its weights at their width
(onnxruntime's MatMulNBits, packed lookups), through ``lm export --weights nbits``."""

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from lm.deploy.onnx_export import export_onnx, read_metadata  # noqa: E402  (needs onnx)
from lm.deploy.runtime import OnnxRuntime, TorchRuntime  # noqa: E402


@pytest.mark.parametrize("kind, bits", [("lr_tied", 4), ("lr_tied", 2), ("tt", 4), ("dense", 2)])
def test_nbits_export_runs_the_artifacts_own_weights(kind, bits, tiny, steps, tmp_path, capsys):
    """A q2/q4 artifact exports with its weights at their width (MatMulNBits, packed lookups), and onnxruntime
    computes the model decoded from the artifact (float32 rounding only)."""
    from lm.__main__ import main
    from lm.checkpoint import dedupe
    from lm.compression.export import export, load_artifact

    artifact = export(tiny(kind), tmp_path / "artifact.safetensors", quant=f"q{bits}")
    main(["export", str(artifact.path), "--weights", "nbits"])
    path = tmp_path / f"artifact.q{bits}.onnx"
    assert f"{path}: " in capsys.readouterr().out and read_metadata(path)["bits"] == str(bits)
    decoded = load_artifact(artifact.path)
    ids = np.random.default_rng(0).integers(0, 60, (6, 3))
    for got, want in zip(steps(OnnxRuntime(path), ids, 3), steps(TorchRuntime(decoded), ids, 3)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    graph = onnx.load(path).graph
    assert "MatMulNBits" in {n.op_type for n in graph.node}
    # every weight once, packed at its width; no float weight matrix left (floats: biases, offsets, block scales)
    packed = [t for t in graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.dims) == 3]
    weights = [t for t in dedupe(decoded.state_dict())[0].values() if t.dim() >= 2]
    assert len(packed) == len(weights)
    floats = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2]
    assert all(name.endswith("_nbits_scales") for name in floats), floats


def test_nbits_export_refuses_weights_off_the_grid_and_falls_back_to_int8_at_3_bits(tiny, tmp_path):
    from lm.compression.export import export, load_artifact

    with pytest.raises(ValueError, match="not on a 4-bit grid"):
        export_onnx(tiny("lr_tied"), tmp_path / "x.onnx", weights="nbits", bits=4)  # a float model
    with pytest.raises(ValueError, match="bits .* goes with weights='nbits'"):
        export_onnx(tiny("lr_tied"), tmp_path / "x.onnx", bits=4)
    with pytest.raises(ValueError, match="weights must be one of"):
        export_onnx(tiny("lr_tied"), tmp_path / "x.onnx", weights="int4")
    q3 = load_artifact(export(tiny("lr_tied"), tmp_path / "q3.safetensors", quant="q3").path)
    with pytest.warns(UserWarning, match="no 3-bit weights"):
        info = export_onnx(q3, tmp_path / "q3.onnx", weights="nbits", bits=3)
    assert info.weights == "int8" and info.bits is None and read_metadata(info.path)["weights"] == "int8"
