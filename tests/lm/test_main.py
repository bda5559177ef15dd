"""Every bad command-line input stops with a message that says what is allowed.

``BAD_INPUTS`` is the table docs/lm.md shows (between the ``cli_errors`` markers); the
test checks that they agree, and ``python -m tests.lm.test_main`` rewrites the docs' copy.
Placeholders: EMPTY is an empty directory, FILE a file that is no model, MODEL a checkpoint.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lm.__main__ import main, parser
from lm.checkpoint import load, save_model
from lm.compression.export import export
from lm.config import ModelConfig
from lm.model import LanguageModel

DOCS = Path(__file__).resolve().parents[2] / "docs" / "lm.md"

BAD_INPUTS = [
    ("train --epochs 0", "argument --epochs: expected a whole number >= 1, got '0'"),
    ("train --epochs -1", "argument --epochs: expected a whole number >= 1, got '-1'"),
    ("train --max-train-tokens 0", "argument --max-train-tokens: expected a whole number >= 2, got '0'"),
    ("train --max-train-tokens -5", "argument --max-train-tokens: expected a whole number >= 2, got '-5'"),
    ("train --max-train-tokens 5", "max_train_tokens 5 is too few for batch_size 20: at least 40 (two tokens per stream)"),
    ("train --seed -3", "argument --seed: expected a whole number >= 0 and <= 4294967295, got '-3'"),
    ("train --resume --out EMPTY", "--resume: nothing to resume, EMPTY/train_state.safetensors does not exist "
                                   "(train without --resume to start)"),
    ("train --set batch_size=0", "argument --set: batch_size must be a whole number >= 1, got '0'"),
    ("train --set bptt=0", "argument --set: bptt must be a whole number >= 1, got '0'"),
    ("train --set hidden_size=-4", "argument --set: hidden_size must be a whole number >= 1, got '-4'"),
    ("train --set hidden_size=abc", "argument --set: hidden_size must be a whole number >= 1, got 'abc'"),
    ("train --set hidden_size=2.5", "argument --set: hidden_size must be a whole number >= 1, got '2.5'"),
    ("train --set dropout=1.5", "argument --set: dropout must be a probability in [0, 1), got '1.5'"),
    ("train --set min_gain=1", "argument --set: min_gain must be a number in [0, 1), or None, got '1'"),
    ("train --set lr=nan", "argument --set: lr must be a finite number > 0, got 'nan'"),
    ("train --set lr=-1", "argument --set: lr must be a finite number > 0, got '-1'"),
    ("train --set lr_decay=0", "argument --set: lr_decay must be a number in (0, 1], got '0'"),
    ("train --set clip=inf", "argument --set: clip must be a finite number > 0, got 'inf'"),
    ("train --set tie_weights=maybe", "argument --set: tie_weights must be a bool, got 'maybe'"),
    ("train --set lstm=tt", "argument --set: lstm must be a layer spec like {'type': 'dense'}"),
    ("train --set colour=red", "argument --set: expected KEY=VALUE with KEY one of"),
    ("train --device cuda", "argument --device: 'cuda': CUDA is not available on this machine"),
    ("train --device tpu", "argument --device: expected cpu, cuda or cuda:INDEX, got 'tpu'"),
    ("train --out FILE", "argument --out: 'FILE' is a file; expected a directory"),
    ("train --results EMPTY", "argument --results: 'EMPTY' is a directory; expected a file path"),
    ("train --data-dir FILE", "argument --data-dir: 'FILE' is a file; expected a directory"),
    ("train --preset huge", "argument --preset: invalid choice: 'huge'"),
    ("eval EMPTY", "EMPTY: is a directory without a model file (model.safetensors or artifact.safetensors)"),
    ("eval EMPTY/missing.safetensors", "no model file at EMPTY/missing.safetensors"),
    ("info FILE", "FILE: truncated or corrupted header"),
    ("compress MODEL --budget-mb nan", "argument --budget-mb: expected a finite number > 0, got 'nan'"),
    ("compress MODEL --budget-mb inf", "argument --budget-mb: expected a finite number > 0, got 'inf'"),
    ("compress MODEL --budget-mb 0", "argument --budget-mb: expected a finite number > 0, got '0'"),
    ("compress MODEL --budget-mb -2", "argument --budget-mb: expected a finite number > 0, got '-2'"),
    ("compress MODEL --budget-mb 1 --search-tokens 1", "argument --search-tokens: expected a whole number >= 2, got '1'"),
    ("study --methods nosuch", "argument --methods: invalid choice: 'nosuch'"),
    ("study --finetune-lr 0", "argument --finetune-lr: expected a finite number > 0, got '0'"),
    ("study --finetune-epochs 0", "argument --finetune-epochs: expected a whole number >= 1, got '0'"),
    ("study --latency-tokens 0", "argument --latency-tokens: expected a whole number >= 1, got '0'"),
    ("study --jobs 0", "argument --jobs: expected a whole number >= 1, got '0'"),
    ("study --retime", "argument --retime: only with --report-only (a study run times its models anyway)"),
    ("study --report-only --no-report", "argument --no-report: not with --report-only, which writes only the report"),
    ("study --checkpoint EMPTY", "argument --checkpoint: EMPTY: is a directory without a model file"),
    ("convert FILE new.safetensors", "the following arguments are required: --legacy"),
]


def render() -> str:
    escape = lambda text: text.replace("|", "\\|")
    rows = [f"| `lm {argv}` | {escape(message)} |" for argv, message in BAD_INPUTS]
    return "\n".join(["| command | message (after `lm <command>: error:`) |", "|---|---|", *rows])


def docs_table() -> str:
    text = DOCS.read_text()
    return text[text.index("<!-- BEGIN cli_errors -->\n") + 26 : text.index("\n<!-- END cli_errors -->")]


@pytest.fixture
def places(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_bytes(b"not a model, not even close" * 10)
    torch.manual_seed(0)
    save_model(LanguageModel(ModelConfig(vocab_size=10, hidden_size=4, num_layers=1)), tmp_path / "model.safetensors")
    return {"EMPTY": str(tmp_path / "empty"), "FILE": str(tmp_path / "file"), "MODEL": str(tmp_path / "model.safetensors")}


@pytest.mark.parametrize("argv, message", BAD_INPUTS)
def test_bad_input_is_a_clear_error(argv, message, places, capsys):
    if "--device cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fill = lambda text: re.sub("EMPTY|FILE|MODEL", lambda m: places[m.group()], text)
    with pytest.raises(SystemExit) as done:
        main(fill(argv).split())
    said = capsys.readouterr().err + (done.value.code if isinstance(done.value.code, str) else "")
    assert done.value.code != 0 and fill(message) in said
    assert f"lm {argv.split()[0]}: error: " in said


def test_docs_show_the_table():
    assert docs_table() == render(), "docs/lm.md's cli_errors table is stale: run python -m tests.lm.test_main"


def test_every_option_has_help_and_the_methods_are_listed(capsys):
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"lm {name} {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    out = capsys.readouterr().out
    assert "tt_paper_ft_q8" in out and "(default: 100)" in out and "(default: small)" in out


def test_info_opens_a_run_directory_and_an_artifact(places, capsys):
    main(["info", str(Path(places["MODEL"]).parent)])
    assert '"kind": "checkpoint"' in capsys.readouterr().out
    artifact = Path(places["EMPTY"]) / "compact.bin"  # by content, whatever the name
    export(load(places["MODEL"]), artifact, "q8")
    main(["info", str(artifact)])
    out = capsys.readouterr().out
    assert '"kind": "artifact"' in out and f'"file_bytes": {artifact.stat().st_size}' in out


def test_a_command_given_an_onnx_file_says_how_to_run_it(places, capsys):
    """``lm info`` of an ONNX file, or ``lm eval`` or ``lm predict`` of one without its suffix, points to
    ``--runtime onnx`` (it said "truncated or corrupted header")."""
    onnx = b"\x08\x0a\x12\x07pytorch\x1a\x0a2.13.0+cpu:\x00"  # the start of a ModelProto
    for name, argv in (("exported", ["eval"]), ("model.onnx", ["info"]), ("exported", ["predict", "the"])):
        path = Path(places["EMPTY"]) / name
        path.write_bytes(onnx)
        with pytest.raises(SystemExit) as done:
            main([argv[0], str(path), *argv[1:]])
        said = done.value.code if isinstance(done.value.code, str) else capsys.readouterr().err.splitlines()[-1]
        assert said.startswith(f"lm {argv[0]}: error: {path}: not an lm model file: an ONNX file")
        assert "`--runtime onnx`" in said


# every command that reads a model file: its arguments, FILE standing for the file (a name it is given, or the file a
# directory holds where the command looks: RUN/train_state.safetensors, RUNS/q8/artifact.safetensors), TMP for tmp_path
READERS = {
    "eval": "eval FILE", "info": "info FILE", "export": "export FILE --out TMP/out.onnx",
    "compress": "compress FILE --budget-mb 1 --out TMP/out",
    "study": "study --checkpoint FILE --methods dense --run-dir TMP/study --report-dir TMP/report",
    "predict": "predict FILE the", "score": "score FILE TMP/text.txt", "curve": "curve FILE",
    "convert": "convert --legacy FILE TMP/new.safetensors", "train": "train --resume --out TMP/run",
    "ship": "ship --front TMP/front.json --run-dir small=TMP/runs --out TMP/models",
}
WHERE = {"train": "run/train_state.safetensors", "ship": "runs/q8/artifact.safetensors"}
NOT_MODELS = {
    "text": lambda model: b"the cat sat on the mat\n",
    "truncated": lambda model: model[: len(model) // 2],
    "foreign": lambda model: safetensors.torch.save({"w": torch.zeros(3)}),  # safetensors without lm's header
}


@pytest.mark.parametrize("content", NOT_MODELS)
@pytest.mark.parametrize("command", READERS)
def test_every_command_given_a_file_that_is_no_model_says_which(command, content, places, tmp_path, monkeypatch,
                                                               capsys):
    """A corrupt or foreign model file is bad input to every command that reads one, whenever it reads it: one line
    on stderr, ``lm <command>: error: <file>: <what is wrong>``, and exit status 2 (eval, info, export, compress,
    study, curve, convert, train --resume and ship exited with status 1; predict and score added a usage line)."""
    if command == "export":
        pytest.importorskip("onnxruntime")
    from lm.data import Corpus

    monkeypatch.setattr(Corpus, "load", classmethod(lambda cls, data_dir=None: "PTB"))  # ship reads it first
    path = tmp_path / WHERE.get(command, "x.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(NOT_MODELS[content](Path(places["MODEL"]).read_bytes()))
    (tmp_path / "text.txt").write_text("the cat\n")
    row = {"name": "small:q8", "size_bytes": 8, "size_mb": 8e-6, "valid_ppl": 900.0, "test_ppl": 800.0}
    (tmp_path / "front.json").write_text(json.dumps({"sources": [{"preset": "small", "commit": "abc1234"}],
                                                     "rows": [row]}))
    argv = READERS[command].replace("FILE", str(path)).replace("TMP", str(tmp_path)).split()
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2, err
    assert err.startswith(f"lm {command}: error: {path}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("models/*")), "ship copied a file that is no model"


if __name__ == "__main__":
    text = DOCS.read_text()
    head, rest = text.split("<!-- BEGIN cli_errors -->\n")
    DOCS.write_text(head + "<!-- BEGIN cli_errors -->\n" + render() + rest[rest.index("\n<!-- END cli_errors -->"):])
    sys.exit(0)
