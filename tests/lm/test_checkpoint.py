"""The checkpoint: a model saved with its config and vocabulary and loaded back (``lm.load``), the
training state, and the legacy ``torch.save`` checkpoints."""

from dataclasses import asdict

import pytest
import torch

import lm
from lm.checkpoint import convert_legacy, load_train_state, save_model
from lm.modelfile import ModelFileError


def test_load_contract_round_trip(tmp_path, tiny_lm):
    model = tiny_lm(vocab=50, init=0.3)
    size = save_model(model, tmp_path / "model.safetensors")
    assert size == (tmp_path / "model.safetensors").stat().st_size
    loaded = lm.load(tmp_path / "model.safetensors")
    assert not loaded.training and loaded.vocab == [f"w{i}" for i in range(50)]
    tokens = torch.randint(0, 50, (6, 2))
    torch.testing.assert_close(loaded(tokens)[0], model(tokens)[0])


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        lm.load(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an lm model file: a torch.save"):
        lm.load(tmp_path / "other.pt")


def test_legacy_checkpoint_converts(tmp_path, tiny_lm):
    """A ``torch.save`` checkpoint of the old format becomes the same model in the safetensors one."""
    model = tiny_lm(tie_weights=True)
    torch.save({"config": asdict(model.config), "vocab": model.vocab, "state_dict": model.state_dict()}, tmp_path / "old.pt")
    convert_legacy(tmp_path / "old.pt", tmp_path / "new.safetensors")
    loaded = lm.load(tmp_path / "new.safetensors")
    assert loaded.config == model.config and loaded.vocab == model.vocab
    assert loaded.decoder.weight is loaded.embedding.weight
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(t, expected[k]) and t.dtype == expected[k].dtype for k, t in loaded.state_dict().items())


def test_save_refuses_what_the_loader_would_refuse(tmp_path, tiny_lm):
    # each of these saved, and the file then failed to load
    with pytest.raises(ValueError, match="float32"):
        save_model(tiny_lm().double(), tmp_path / "m")
    for word in ("two\nwords", "x" * 257, 5):
        model = tiny_lm()
        model.vocab = [word] + model.vocab[1:]
        with pytest.raises(ValueError, match="vocabulary word"):
            save_model(model, tmp_path / "m")
    model = tiny_lm(vocab=5000)
    model.vocab = ["a" * 200 + f"{i:05d}" for i in range(5000)]  # compresses far beyond what a reader inflates
    with pytest.raises(ValueError, match="compresses more"):
        save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_dedupe_tells_a_transposed_view_from_its_tensor():
    from lm.checkpoint import dedupe

    w = torch.randn(3, 3)
    assert dedupe({"w": w, "wt": w.t()})[1] == {}
    assert dedupe({"w": w, "tied": w})[1] == {"tied": "w"}


@pytest.mark.parametrize("edit, message", [
    (lambda d: {**d, "vocab": list(range(60))}, "the vocabulary must be a list of strings, got a list holding int 0"),
    (lambda d: {**d, "vocab": " ".join(d["vocab"])}, "the vocabulary must be a list of strings, got str"),
    (lambda d: {**d, "vocab": d["vocab"][:3]}, "the vocabulary has 3 words, the config says 60"),
    (lambda d: {**d, "vocab": ["two\nwords", *d["vocab"][1:]]}, "a vocabulary word must be a string"),
    (lambda d: {**d, "config": [60, 8]}, "the model config is missing or not a mapping (list)"),
    (lambda d: {**d, "state_dict": list(d["state_dict"].values())},
     "the state_dict must be a mapping of parameter names to tensors, got list"),
    (lambda d: {**d, "state_dict": {k: 0.5 for k in d["state_dict"]}},
     "the state_dict must be a mapping of parameter names to tensors, got a dict with the entry 'embedding.weight': "
     "float"),
    (lambda d: {**d, "state_dict": 7}, "the state_dict must be a mapping of parameter names to tensors, got int"),
])
def test_convert_legacy_names_the_file_and_what_is_wrong(tmp_path, tiny_lm, edit, message):
    """A malformed legacy checkpoint is a ModelFileError naming it (a TypeError, or a ValueError naming no file, before)."""
    model = tiny_lm()
    torch.save(edit({"config": asdict(model.config), "vocab": model.vocab, "state_dict": model.state_dict()}),
               tmp_path / "old.pt")
    with pytest.raises(ModelFileError) as err:
        convert_legacy(tmp_path / "old.pt", tmp_path / "new.safetensors")
    assert str(err.value).startswith(f"{tmp_path / 'old.pt'}: ") and message in str(err.value)
    assert not (tmp_path / "new.safetensors").exists()


def test_convert_legacy_checks_a_training_state_as_its_loader_does(tmp_path, tiny_lm):
    """A legacy training state converts; one that ``load_train_state`` would refuse, or that a model file cannot
    hold, is a ModelFileError naming it (converted and then failed to load, or a TypeError, before)."""
    old, new = tmp_path / "old.pt", tmp_path / "new.safetensors"
    state = {"config": {}, "model": tiny_lm().state_dict(), "optimizer": {}, "rng": torch.get_rng_state(), "epoch": 1,
             "history": [], "elapsed": 1.0}
    torch.save(state, old)
    convert_legacy(old, new)
    assert load_train_state(new)["epoch"] == 1
    new.unlink()
    for edit, message in [({"epoch": "1"}, "training state 'epoch' is missing or not a int"),
                          ({"model": {"w": 1}}, "training state 'model' is not a state dict of tensors"),
                          ({"history": [{1, 2}]}, "the training state cannot be stored: a training state holds "
                                                  "tensors, containers and numbers, not set")]:
        torch.save({**state, **edit}, old)
        with pytest.raises(ModelFileError) as err:
            convert_legacy(old, new)
        assert str(err.value).startswith(f"{old}: ") and message in str(err.value)
    assert not new.exists()
