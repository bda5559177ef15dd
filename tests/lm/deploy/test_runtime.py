"""lm.deploy.runtime: predict and score on torch and onnxruntime, and the CLI that runs them."""

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
])
def test_the_cli_refuses_bad_arguments(argv, message, exported, tmp_path, capsys):
    from lm.__main__ import main

    argv = [a.format(onnx=exported["dense"][1].path, tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_bad_arguments_are_refused(tiny):
    with pytest.raises(ValueError, match="top"):
        predict(TorchRuntime(tiny("dense")), "the", 0)
    with pytest.raises(ValueError, match="no words"):
        score(TorchRuntime(tiny("dense")), "")
