"""ONNX export of the streaming step, float32 and int8, and the runtimes that run it (lm.onnx_export, lm.runtime)."""

import numpy as np
import pytest
import torch

from lm.compression.surgery import compress_model
from lm.config import ModelConfig
from lm.inference import inference_form
from lm.model import LanguageModel
from lm.runtime import OnnxRuntime, TorchRuntime, predict, score

ort = pytest.importorskip("onnxruntime")
from lm.onnx_export import export_onnx, read_metadata  # noqa: E402  (needs onnx, installed with onnxruntime)

VOCAB = ["<unk>", "<eos>", "the"] + [f"w{i}" for i in range(57)]
GR = {"type": "groupreduce", "groups": 3, "ratio": 2, "alpha": 0.5}
# every map type of the study in three models: dense (softmax tied to the embedding); TT embedding,
# TT-LSTM, low-rank softmax; GroupReduce embedding and softmax around an LR-LSTM
SPECS = {
    "dense": {},
    "tt": {"embedding": {"type": "tt", "rank": 3}, "lstm": {"type": "tt_lstm", "rank": 3},
           "decoder": {"type": "low_rank", "rank": 4}},
    "lr": {"embedding": GR, "lstm": {"type": "lr_lstm", "rank": 4}, "decoder": GR},
}

MORE = {"tt_softmax": {"decoder": {"type": "tt", "rank": 3}}}  # TT softmax: cheap without export


def tiny(kind: str) -> LanguageModel:
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=60, hidden_size=12, num_layers=2, tie_weights=kind == "dense"), VOCAB)
    model.init_uniform(0.3)
    counts = torch.arange(60, 0, -1).float()
    return compress_model(model.eval(), **{**SPECS, **MORE}[kind], counts=counts).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """kind -> (model, its float32 ONNX export): exported once for the module (an export takes seconds)."""
    out = tmp_path_factory.mktemp("onnx")
    return {kind: (tiny(kind), export_onnx(tiny(kind), out / f"{kind}.onnx")) for kind in SPECS}


def steps(run, ids: np.ndarray, batch: int) -> list[np.ndarray]:
    """Logits of every step of ``ids`` (steps, batch), the state carried."""
    state, out = run.initial_state(batch), []
    for t in ids:
        logits, state = run.step(t, state)
        out.append(logits)
    return out


@pytest.mark.parametrize("kind", list(SPECS) + list(MORE))
def test_inference_form_computes_the_same_model(kind):
    model = tiny(kind)
    tokens = torch.randint(0, 60, (5, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = model(tokens)
        for tt in ("cores", "dense"):
            got, _ = inference_form(model, tt)(tokens)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(SPECS))
def test_onnx_step_matches_torch_at_several_batch_sizes(kind, exported):
    model, info = exported[kind]
    assert info.bytes == info.path.stat().st_size and not info.int8
    onnx_run, torch_run = OnnxRuntime(info.path), TorchRuntime(model)
    for batch in (1, 4):
        ids = np.random.default_rng(batch).integers(0, 60, (6, batch))
        for got, want in zip(steps(onnx_run, ids, batch), steps(torch_run, ids, batch)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert read_metadata(info.path)["vocab"].split("\n") == VOCAB
    # no constant is transposed at run time (the tied softmax reads a stored transposed copy)
    import onnx

    graph = onnx.load(info.path).graph
    constants = {t.name for t in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in constants]


def test_int8_export_runs_int8_products_close_to_float(exported, tmp_path, capsys):
    import onnx

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
    assert read_metadata(path)["vocab"].split("\n") == VOCAB


def test_predict_and_score_agree_between_runtimes(exported, tmp_path, capsys):
    from lm.__main__ import main
    from lm.checkpoint import save_model

    model, info = exported["dense"]
    save_model(model, tmp_path / "model.safetensors")
    text = tmp_path / "text.txt"
    text.write_text("the w1 w2 qqq\nw5 the\n")
    answers = {}
    for runtime, path in (("torch", tmp_path / "model.safetensors"), ("onnx", info.path)):
        main(["predict", str(path), "The w3", "--top", "3", "--runtime", runtime])
        main(["score", str(path), str(text), "--runtime", runtime])
        answers[runtime] = capsys.readouterr().out
    assert answers["torch"] == answers["onnx"]
    main(["predict", str(tmp_path), "The w3", "--top", "3", "--runtime", "onnx"])  # a run directory, exported on the fly
    assert capsys.readouterr().out == answers["torch"].split("tokens")[0]
    run = TorchRuntime(model)
    assert len(predict(run, "the", 3)) == 3 and all(w != "<unk>" for w, _ in predict(run, "the", 59))
    result = score(run, text.read_text())
    assert result["tokens"] == 8 and len(result["nll"]) == 8


@pytest.mark.parametrize("argv, message", [
    (["predict", "{onnx}", "the", "--top", "0"], "--top: expected a whole number >= 1"),
    (["predict", "{onnx}", "the"], "is an ONNX file: run it with --runtime onnx"),
    (["predict", "{tmp}/missing.onnx", "the", "--runtime", "onnx"], "missing.onnx' is missing"),
    (["score", "{onnx}", "{tmp}/nothing.txt", "--runtime", "onnx"], "nothing.txt' is missing; expected a file"),
    (["export", "{onnx}", "--format", "tflite"], "invalid choice: 'tflite'"),
    (["export", "{onnx}", "--tt", "fused"], "invalid choice: 'fused'"),
])
def test_the_cli_refuses_bad_arguments(argv, message, exported, tmp_path, capsys):
    from lm.__main__ import main

    argv = [a.format(onnx=exported["dense"][1].path, tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="top"):
        predict(TorchRuntime(tiny("dense")), "the", 0)
    with pytest.raises(ValueError, match="tt must be"):
        inference_form(tiny("dense"), "fused")
    with pytest.raises(ValueError, match="no words"):
        score(TorchRuntime(tiny("dense")), "")


def test_latency_compare_times_onnxruntime_beside_torch_and_the_report_shows_it():
    from lm.study.latency import compare
    from lm.study.report import markdown

    t = compare({"tt": tiny("tt")}, tokens=3, repeats=1, onnx=True)["tt"]
    assert all(t[k] > 0 for k in ("eager_ms", "int8_ms", "ort_ms", "ort_int8_ms", "onnx_bytes", "onnx_int8_bytes"))
    row = {"name": "tt", "label": "tt", "family": "TT", "description": "d", "size_mb": 0.01, "test_ppl": 50.0,
           "valid_ppl": 50.0, "parameters": 1, "nonzero": 1, **t}
    page = markdown({"rows": [row], "preset": "tiny", "commit": "abc", "date": "today", "seed": 1, "eval": "exact",
                     "plot": "p.png", "targets": []})
    assert "ms/token ORT int8 | ONNX int8 MB |" in page
    assert f"| {t['ort_ms']:.3f} | {t['ort_int8_ms']:.3f} | {t['onnx_int8_bytes'] / 1e6:.3f} |" in page


def test_tt_weights_built_keep_a_model_torch_int8_runs():
    from lm.compression.quantize import int8_dynamic

    model = tiny("tt")
    built = inference_form(model, "dense", unroll=False)
    tokens = torch.randint(0, 60, (4, 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(built(tokens)[0], model(tokens)[0], rtol=1e-5, atol=1e-5)
        assert int8_dynamic(built)(tokens)[0].shape == (4, 2, 60)
