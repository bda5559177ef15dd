"""The models shipped in models/ load, match their manifest, and evaluate to its perplexities
(the shipping tool itself: tests/lm/study/test_ship.py)."""

import json
from pathlib import Path

import pytest

from lm.checkpoint import load
from lm.evaluate import perplexity
from lm.study.ship import MODELS, NOT_ON_DISK, front_models, models_table, verify

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = json.loads((MODELS / "manifest.json").read_text())


def test_the_manifest_lists_the_front():
    front = json.loads((ROOT / "results" / "study_front.json").read_text())
    assert [e["name"] for e in MANIFEST["models"]] == [r["name"] for r in front_models(front)]
    for e in MANIFEST["models"]:
        assert e["file"] or e["note"] == NOT_ON_DISK


def test_the_readme_lists_the_shipped_models():
    # `lm ship` rewrites it; a manifest edited or shipped elsewhere leaves it behind
    assert f"<!-- BEGIN shipped_models -->\n{models_table(MANIFEST)}\n<!-- END shipped_models -->" in (
        ROOT / "README.md").read_text()


@pytest.mark.parametrize("entry", MANIFEST["models"], ids=[e["name"] for e in MANIFEST["models"]])
def test_shipped_model_matches_its_manifest(entry, corpus):
    if entry["file"] is None:
        pytest.skip(f"{entry['name']}: {entry['note']}")
    verify(entry, MODELS, corpus)


@pytest.mark.slow
@pytest.mark.parametrize("entry", MANIFEST["models"], ids=[e["name"] for e in MANIFEST["models"]])
def test_shipped_model_gives_the_reports_perplexities(entry, corpus):
    if entry["file"] is None:
        pytest.skip(f"{entry['name']}: {entry['note']}")
    model = load(MODELS / entry["file"])
    assert perplexity(model, corpus.test) == pytest.approx(entry["test_ppl"], rel=1e-6)
    assert perplexity(model, corpus.valid) == pytest.approx(entry["valid_ppl"], rel=1e-6)


SHIPPED = [e for e in MANIFEST["models"] if e["file"]]


@pytest.mark.parametrize("entry", SHIPPED, ids=[e["name"] for e in SHIPPED])
def test_shipped_model_runs_the_same_in_torch_and_onnxruntime(entry, corpus, tmp_path, capsys):
    """``lm export``, ``lm predict`` and ``lm score`` on a shipped model: onnxruntime (float32) gives
    torch's suggestions and perplexity; its int8 export runs and stays close."""
    pytest.importorskip("onnxruntime")
    from lm.__main__ import main

    path = MODELS / entry["file"]
    onnx = {w: tmp_path / f"model.{w}.onnx" for w in ("float32", "int8")}
    for weights, out in onnx.items():
        main(["export", str(path), "--weights", weights, "--out", str(out)])
    text = tmp_path / "text.txt"
    words = [corpus.vocab[i] for i in corpus.test[:300].tolist()]
    text.write_text(" ".join(words).replace(" <eos> ", "\n").replace("<eos>", "") + "\n")

    def run(*argv):
        capsys.readouterr()
        main(list(argv))
        return capsys.readouterr().out.split()

    eager = run("predict", str(path), "the stock market", "--top", "5")
    assert run("predict", str(onnx["float32"]), "the stock market", "--top", "5", "--runtime", "onnx")[::2] == eager[::2]
    want = float(run("score", str(path), str(text))[-1])
    assert float(run("score", str(onnx["float32"]), str(text), "--runtime", "onnx")[-1]) == pytest.approx(want, rel=1e-4)
    assert float(run("score", str(onnx["int8"]), str(text), "--runtime", "onnx")[-1]) == pytest.approx(want, rel=0.05)
