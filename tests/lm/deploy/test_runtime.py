"""lm.deploy.runtime: predict and score on torch and onnxruntime, and the CLI that runs them."""

import re

import numpy as np
import pytest

from lm.deploy.runtime import TorchRuntime, predict, score


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
    (["eval", "{onnx}"], "is an ONNX file: run it with --runtime onnx"),
    (["eval", "{tmp}/missing.onnx", "--runtime", "onnx"], "missing.onnx' is missing"),
])
def test_the_cli_refuses_bad_arguments(argv, message, exported, tmp_path, capsys):
    from lm.__main__ import main

    argv = [a.format(onnx=exported["dense"][1].path, tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_eval_gives_the_exact_perplexity_through_onnxruntime(short_corpus, tmp_path, monkeypatch, capsys):
    """``lm eval --runtime onnx`` of an exported .onnx, or of a model file exported on the fly, scores every target
    of the split once, as ``lm eval`` of the model in torch does, and records its runtime; not on a CUDA device."""
    import json

    import torch

    from lm.__main__ import main
    from lm.checkpoint import save_model
    from lm.config import ModelConfig
    from lm.deploy.onnx_export import export_onnx
    from lm.model import LanguageModel

    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=len(short_corpus.vocab), hidden_size=8, num_layers=2),
                          short_corpus.vocab).eval()
    save_model(model, tmp_path / "model.safetensors")
    onnx = export_onnx(model, tmp_path / "model.onnx").path
    ppl = {}
    for path, runtime in ((tmp_path / "model.safetensors", "torch"), (onnx, "onnx"), (tmp_path, "onnx")):
        out = tmp_path / f"eval_{path.name}_{runtime}.json"
        main(["eval", str(path), "--splits", "test", "--runtime", runtime, "--results", str(out)])
        result = json.loads(out.read_text())
        assert result["config"]["runtime"] == runtime
        ppl[path.name, runtime] = result["test_ppl"]
        assert capsys.readouterr().out == f"test ppl {result['test_ppl']:.2f}\n"
    assert ppl["model.onnx", "onnx"] == pytest.approx(ppl["model.safetensors", "torch"], rel=1e-5)
    assert ppl[tmp_path.name, "onnx"] == ppl["model.onnx", "onnx"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit) as exit:
        main(["eval", str(onnx), "--runtime", "onnx", "--device", "cuda"])
    assert exit.value.code == 2 and "--device: cuda with --runtime onnx, which runs on the CPU" in capsys.readouterr().err


def test_bad_arguments_are_refused(tiny):
    with pytest.raises(ValueError, match="top"):
        predict(TorchRuntime(tiny("dense")), "the", 0)
    with pytest.raises(ValueError, match="no words"):
        score(TorchRuntime(tiny("dense")), "")



def _step_graph(path, vocab: list[str], *, state: bool = True, layers: int | str = 2, state_type: int = 1,
                outputs: tuple[str, ...] = ("logits", "h_out", "c_out"), out: dict[str, tuple[int, int]] | None = None):
    """Write a minimal step model to ``path`` and return ``path``: logits (batch, len(vocab)), a row of a constant
    table per id; the state h, c (``layers``, batch, 3), of ONNX element type ``state_type`` (1: float), passed
    through as h_out, c_out (no state, nor its outputs, when not ``state``), or as the (element type, width, a
    multiple of 3) that ``out`` gives an output; the ``outputs`` in that order, and ``vocab`` in the metadata."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    info = helper.make_tensor_value_info
    table = np.random.default_rng(0).normal(size=(len(vocab), len(vocab))).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["logits"])]
    inputs = [info("ids", TensorProto.INT64, ["batch"])]
    values = {"logits": info("logits", TensorProto.FLOAT, ["batch", len(vocab)])}
    if state:
        for name in ("h", "c"):
            kind, width = (out or {}).get(name + "_out", (state_type, 3))
            nodes.append(helper.make_node("Concat", [name] * (width // 3), [name + "_wide"], axis=2))
            nodes.append(helper.make_node("Cast", [name + "_wide"], [name + "_out"], to=kind))
            inputs.append(info(name, state_type, [layers, "batch", 3]))
            values[name + "_out"] = info(name + "_out", kind, [layers, "batch", width])
    graph = helper.make_graph(nodes, "step", inputs, [values[name] for name in outputs if name in values],
                              [numpy_helper.from_array(table, "table")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(proto, {"vocab": "\n".join(vocab)})
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


@pytest.mark.parametrize("vocab", [lambda words: words[:-1], lambda words: words + ["extra"]],
                         ids=["shorter", "longer"])
def test_an_onnx_vocabulary_must_be_as_wide_as_the_logits(vocab, exported, tmp_path):
    """A vocabulary in the metadata of another size than the logits' width is refused when the file is opened
    (a shorter one raised IndexError in predict and scored text read with other words; a longer one fed
    onnxruntime ids past the table)."""
    onnx = pytest.importorskip("onnx")
    from lm.deploy.runtime import OnnxRuntime

    proto = onnx.load(exported["dense"][1].path)
    meta = {p.key: p.value for p in proto.metadata_props}
    words = vocab(meta["vocab"].split("\n"))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**meta, "vocab": "\n".join(words)})
    path = tmp_path / "crafted.onnx"
    onnx.save(proto, path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: its logits have shape ['batch', 60], "
                                                   f"expected (batch, {len(words)})")):
        OnnxRuntime(path)


@pytest.mark.parametrize("graph, message", [
    ({"state": False}, "the graph has inputs ['ids'], expected ids, h and c"),
    ({"layers": "layers"}, "input 'h' has shape ['layers', 'batch', 3], expected (layers, batch, width)"),
    ({"state_type": 11}, "input 'h' is tensor(double), expected tensor(float)"),
    ({"outputs": ("logits", "h_out")}, "the graph has outputs ['logits', 'h_out'], expected logits, h_out and c_out"),
    ({"out": {"h_out": (11, 3)}}, "output 'h_out' is tensor(double) of shape [2, 'batch', 3], expected input 'h''s "
                                  "tensor(float) of shape [2, 'batch', 3]"),
    ({"out": {"c_out": (1, 6)}}, "output 'c_out' is tensor(float) of shape [2, 'batch', 6], expected input 'c''s "
                                 "tensor(float) of shape [2, 'batch', 3]"),
])
def test_an_onnx_step_model_must_take_and_give_what_the_runtime_feeds_and_reads(graph, message, tmp_path):
    """A graph without the recurrent state, with a state of no fixed size or of another element type, without one
    of the step's outputs, or whose h_out or c_out is not of h's or c's type and shape, is refused when the file is
    opened (they raised KeyError or TypeError, or failed in onnxruntime at the first step, or for the state given
    back, at the second)."""
    from lm.deploy.runtime import OnnxRuntime

    path = _step_graph(tmp_path / "step.onnx", ["<unk>", "<eos>", "the", "a"], **graph)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        OnnxRuntime(path)


def test_an_onnx_step_models_outputs_are_read_by_name(tmp_path):
    """The step's outputs are fetched by name: a graph listing them in another order runs alike (the logits
    were read from its first output)."""
    from lm.deploy.runtime import OnnxRuntime

    vocab = ["<unk>", "<eos>", "the", "a"]
    plain = OnnxRuntime(_step_graph(tmp_path / "plain.onnx", vocab))
    shuffled = OnnxRuntime(_step_graph(tmp_path / "shuffled.onnx", vocab, outputs=("h_out", "c_out", "logits")))
    assert predict(shuffled, "the a", 3) == predict(plain, "the a", 3)


@pytest.mark.parametrize("content", [
    lambda blob: np.random.default_rng(0).bytes(300),
    lambda blob: b"the cat sat on the mat\n",
    lambda blob: blob[: len(blob) // 2],
    lambda blob: b"",
    lambda blob: b"\x08\x0a\x12\x07pytorch\x1a\x0a2.13.0+cpu:\x00",
], ids=["random", "text", "truncated", "empty", "header-only"])
def test_a_corrupt_or_foreign_onnx_file_is_a_clear_error(content, exported, tmp_path, capsys):
    """A file onnxruntime cannot load (not protobuf, a truncated export, a ModelProto without a graph or an opset)
    is a ValueError naming the file, and ``lm predict`` / ``lm score`` stop with a one-line message and exit
    status 2 (onnxruntime's InvalidProtobuf, InvalidArgument or Fail escaped with a traceback)."""
    from lm.__main__ import main
    from lm.deploy.runtime import OnnxRuntime

    path = tmp_path / "model.onnx"
    path.write_bytes(content(exported["dense"][1].path.read_bytes()))
    (tmp_path / "text.txt").write_text("the w1\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: ")):
        OnnxRuntime(path)
    for argv in (["predict", str(path), "the"], ["score", str(path), str(tmp_path / "text.txt")]):
        with pytest.raises(SystemExit) as exit:
            main([*argv, "--runtime", "onnx"])
        said = capsys.readouterr().err.splitlines()
        assert exit.value.code == 2 and said[-1].startswith(f"lm {argv[0]}: error: {path}: ")


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
@pytest.mark.parametrize("content", [lambda blob: b"the cat sat on the mat\n", lambda blob: blob[: len(blob) // 2]],
                         ids=["text", "truncated"])
def test_a_corrupt_or_foreign_model_file_is_a_clear_error(content, runtime, exported, tmp_path, capsys):
    """``lm predict`` / ``lm score`` of a model file that is not one stop with a one-line message naming the file
    and exit status 2, as for such an .onnx file (they exited with status 1, the file opened by the command)."""
    from lm.__main__ import main
    from lm.checkpoint import save_model

    path = tmp_path / "model.safetensors"
    save_model(exported["dense"][0], path)
    path.write_bytes(content(path.read_bytes()))
    (tmp_path / "text.txt").write_text("the w1\n")
    for argv in (["predict", str(path), "the"], ["score", str(path), str(tmp_path / "text.txt")]):
        with pytest.raises(SystemExit) as exit:
            main([*argv, "--runtime", runtime])
        said = capsys.readouterr().err.splitlines()
        assert exit.value.code == 2 and said[-1].startswith(f"lm {argv[0]}: error: {path}: ")


def test_a_missing_onnx_file_is_a_clear_error(tmp_path):
    """``OnnxRuntime`` of a path without a file raises FileNotFoundError naming it, as ``open_runtime`` does
    (onnxruntime's NoSuchFile escaped)."""
    pytest.importorskip("onnxruntime")
    from lm.deploy.runtime import OnnxRuntime, open_runtime

    path = tmp_path / "missing.onnx"
    for call in (lambda: OnnxRuntime(path), lambda: open_runtime(path, "onnx")):
        with pytest.raises(FileNotFoundError, match=re.escape(f"no ONNX file at {path}")):
            call()


@pytest.mark.parametrize("word", ["<eos>", "<unk>"])
def test_a_vocabulary_without_a_sentence_end_or_an_unknown_word_is_a_clear_error(word, tmp_path, capsys):
    """predict and score of a model file or an ONNX file whose vocabulary lacks ``<eos>`` or ``<unk>`` (which they
    read text with) is a ValueError naming the file, on either runtime (they raised "'<eos>' is not in list" or
    "the vocabulary has no '<unk>'", naming no file)."""
    from lm.__main__ import main
    from lm.checkpoint import save_model
    from lm.config import ModelConfig
    from lm.deploy.runtime import OnnxRuntime, open_runtime
    from lm.model import LanguageModel

    vocab = [w for w in ("<unk>", "<eos>", "the", "a", "b") if w != word]
    model, onnx = tmp_path / "model.safetensors", _step_graph(tmp_path / "step.onnx", vocab)
    save_model(LanguageModel(ModelConfig(vocab_size=4, hidden_size=4, num_layers=1), vocab), model)
    (tmp_path / "text.txt").write_text("the a\n")
    message = re.escape(f"its vocabulary has no {word!r}")
    for run, path in ((open_runtime(model), model), (OnnxRuntime(onnx), onnx)):
        for call in (lambda: predict(run, "the"), lambda: score(run, "the a")):
            with pytest.raises(ValueError, match=re.escape(f"{path}: ") + message):
                call()
    with pytest.raises(ValueError, match=re.escape(f"{model}: ") + message):  # not the temporary export's name
        open_runtime(model, "onnx")
    for path, runtime in ((model, "torch"), (onnx, "onnx")):
        for argv in (["predict", str(path), "the"], ["score", str(path), str(tmp_path / "text.txt")]):
            with pytest.raises(SystemExit) as exit:
                main([*argv, "--runtime", runtime])
            assert re.match(re.escape(f"lm {argv[0]}: error: {path}: ") + message, exit.value.code)
