"""Shipping the study's front: the manifest, the files and their checks, end to end on a tiny
model trained here (the models shipped in models/ are checked in tests/project/test_models.py)."""

import json

import pytest

from lm.checkpoint import ARTIFACT_FILE, load
from lm.compression.export import export
from lm.config import preset
from lm.modelfile import ModelFileError
from lm.study.ship import NOT_ON_DISK, models_table, ship, verify, write_readme
from lm.train import train


def test_shipping_round_trip_on_a_tiny_model(tmp_path, corpus, short_corpus):  # trained on short_corpus
    cfg = preset("tiny", max_train_tokens=2000, epochs=1)
    train(cfg, tmp_path / "train", progress=False)
    model = load(tmp_path / "train")
    runs = tmp_path / "runs"
    info = export(model, runs / "q8" / ARTIFACT_FILE, "q8")
    row = {"size_bytes": info.bytes, "size_mb": info.bytes / 1e6, "valid_ppl": 900.0, "test_ppl": 800.0}
    front = {"sources": [{"preset": "small", "commit": "abc1234"}],
             "rows": [{**row, "name": "small:q8"}, {**row, "name": "small:lr_all_ft_q8", "size_mb": 0.1, "test_ppl": 900.0},
                      {**row, "name": "small:dense", "size_mb": 6.0, "test_ppl": 1.0}]}  # > 5 MB: not shipped
    manifest = ship(front, {"small": runs}, tmp_path / "models", corpus)
    assert json.loads((tmp_path / "models" / "manifest.json").read_text()) == manifest
    shipped, missing = {e["name"]: e for e in manifest["models"]}["small:q8"], manifest["models"][0]
    assert [e["name"] for e in manifest["models"]] == ["small:lr_all_ft_q8", "small:q8"]
    assert missing["file"] is None and missing["note"] == NOT_ON_DISK
    assert [r["name"] for r in missing["recipe"]] == ["lr_all_ft_q8", "lr_all_ft"]
    assert shipped["file"] == "small_q8.safetensors" and shipped["commit"] == "abc1234"
    assert shipped["size_bytes"] == info.bytes and shipped["test_ppl"] == 800.0
    verify(shipped, tmp_path / "models", corpus)
    # the README's table: every entry, shipped or not, and a command that runs the first shipped file
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN shipped_models -->\nold\n<!-- END shipped_models -->\nafter\n")
    write_readme(manifest, readme)
    table = models_table(manifest)
    assert readme.read_text() == f"intro\n<!-- BEGIN shipped_models -->\n{table}\n<!-- END shipped_models -->\nafter\n"
    assert table.splitlines()[2].startswith(
        f"| small:lr_all_ft_q8 | {NOT_ON_DISK} | {info.bytes / 1e6:.3f} | 900.00 | 900.00 |")
    assert table.splitlines()[3].startswith("| small:q8 | `models/small_q8.safetensors` | ")
    assert 'python -m lm predict models/small_q8.safetensors "the stock market"' in table
    # a wrong perplexity, or a damaged file, fails the check
    with pytest.raises(AssertionError, match="perplexity"):
        verify({**shipped, "check": {**shipped["check"], "ppl": shipped["check"]["ppl"] * 1.01}},
               tmp_path / "models", corpus)
    path = tmp_path / "models" / shipped["file"]
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="sha256"):
        verify(shipped, tmp_path / "models", corpus)
    with pytest.raises(ModelFileError, match="checksum"):
        load(path)


def test_a_rerun_ships_with_its_own_figures(tmp_path, corpus, short_corpus):  # trained on short_corpus
    """A front model produced again (another machine, another run) differs from the study's row:
    the manifest gives the shipped file's own perplexities and commit, the study's beside them."""
    cfg = preset("tiny", max_train_tokens=2000, epochs=1)
    train(cfg, tmp_path / "train", progress=False)
    runs = tmp_path / "runs"
    info = export(load(tmp_path / "train"), runs / "q8" / ARTIFACT_FILE, "q8")
    (runs / "q8" / "result.json").write_text(json.dumps({"valid_ppl": 901.5, "test_ppl": 801.5, "commit": "def5678"}))
    row = {"name": "small:q8", "size_bytes": info.bytes, "size_mb": info.bytes / 1e6, "valid_ppl": 900.0, "test_ppl": 800.0}
    manifest = ship({"sources": [{"preset": "small", "commit": "abc1234"}], "rows": [row]}, {"small": runs},
                    tmp_path / "models", corpus)
    entry = manifest["models"][0]
    assert (entry["valid_ppl"], entry["test_ppl"], entry["commit"]) == (901.5, 801.5, "def5678")
    assert (entry["study_valid_ppl"], entry["study_test_ppl"], entry["study_commit"]) == (900.0, 800.0, "abc1234")
    # the same figures as the study's: nothing added
    (runs / "q8" / "result.json").write_text(json.dumps({"valid_ppl": 900.0, "test_ppl": 800.0}))
    entry = ship({"sources": [{"preset": "small", "commit": "abc1234"}], "rows": [row]}, {"small": runs},
                 tmp_path / "models", corpus)["models"][0]
    assert entry["commit"] == "abc1234" and "study_test_ppl" not in entry


def test_a_new_machine_keeps_what_was_shipped(tmp_path, corpus, short_corpus):  # trained on short_corpus
    """Without the run directories (a new machine has models/ but not runs/), shipping again keeps
    each front model's shipped file and entry; a model that left the front leaves models/."""
    cfg = preset("tiny", max_train_tokens=2000, epochs=1)
    train(cfg, tmp_path / "train", progress=False)
    runs, models = tmp_path / "runs", tmp_path / "models"
    info = export(load(tmp_path / "train"), runs / "q8" / ARTIFACT_FILE, "q8")
    row = {"name": "small:q8", "size_bytes": info.bytes, "size_mb": info.bytes / 1e6, "valid_ppl": 900.0, "test_ppl": 800.0}
    front = {"sources": [{"preset": "small", "commit": "abc1234"}], "rows": [row]}
    first = ship(front, {"small": runs}, models, corpus)["models"][0]
    assert ship(front, {}, models, corpus)["models"] == [first]
    verify(first, models, corpus)
    # the study re-ran with other figures: the file keeps its own, the study's stand beside them
    rerun = {**front, "rows": [{**row, "test_ppl": 790.0}]}
    entry = ship(rerun, {}, models, corpus)["models"][0]
    assert (entry["file"], entry["test_ppl"], entry["study_test_ppl"]) == (first["file"], 800.0, 790.0)
    # a damaged file is not kept
    (models / first["file"]).write_bytes(b"damaged")
    assert ship(front, {}, models, corpus)["models"][0]["note"] == NOT_ON_DISK
    # a model that leaves the front leaves models/
    ship(front, {"small": runs}, models, corpus)
    smaller = {"name": "small:lr_all_ft_q8", "size_bytes": 10, "size_mb": 1e-5, "valid_ppl": 800.0, "test_ppl": 700.0}
    assert [e["name"] for e in ship({**front, "rows": [row, smaller]}, {}, models, corpus)["models"]] == ["small:lr_all_ft_q8"]
    assert not list(models.glob("*.safetensors"))


def test_without_ptb_nothing_is_copied(tmp_path, monkeypatch):
    """The check perplexity needs PTB: without it, ship fails before it copies any file into models/."""
    import lm.study.ship as ship_module
    from lm.data import DataError

    runs = tmp_path / "runs" / "q8"
    runs.mkdir(parents=True)
    (runs / ARTIFACT_FILE).write_bytes(b"artifact")

    def no_ptb(*args, **kwargs):
        raise DataError("no PTB here")

    monkeypatch.setattr(ship_module.Corpus, "load", no_ptb)
    row = {"name": "small:q8", "size_bytes": 8, "size_mb": 8e-6, "valid_ppl": 900.0, "test_ppl": 800.0}
    with pytest.raises(DataError, match="no PTB"):
        ship({"sources": [{"preset": "small", "commit": "abc1234"}], "rows": [row]}, {"small": tmp_path / "runs"},
             tmp_path / "models")
    assert not list((tmp_path / "models").iterdir())
