"""The study's methods as data: every shipped method keeps its cache key, and bad files say what is wrong."""

import json
import tomllib
from pathlib import Path

import pytest

from lm import study as study_package
from lm.config import preset
from lm.study.methods import (CONFIG_DIR, Distill, GroupReduceSpec, LRLSTMSpec, Method, Prune, Shape, load_finetune,
                        load_methods, read_methods)
from lm.study import Study, StudyConfig

ROOT = Path(__file__).resolve().parents[3]
# every method's recipe (the study's cache key) and fields, as lm.study computed them when the methods were Python code
FROZEN = json.loads((Path(__file__).parent / "fixtures" / "study_recipes.json").read_text())


@pytest.mark.parametrize("preset", sorted(FROZEN["recipe"]))
def test_every_method_keeps_its_cache_key_byte_for_byte(preset):
    study = object.__new__(Study)  # recipe() reads only the config and the fine-tuning recipe
    study.config, study.finetune = StudyConfig(preset=preset), load_finetune(preset).to_dict()  # as Study() sets them
    methods = load_methods(preset)
    assert [m.name for m in methods] == list(FROZEN["recipe"][preset])
    for m in methods:
        assert json.dumps(study.recipe(m)) == FROZEN["recipe"][preset][m.name]
    by_name = {m.name: m for m in methods}
    for name, frozen in FROZEN["method"][preset].items():  # lm ship's manifest records these
        assert json.dumps(by_name[name].to_dict()) == frozen


def test_the_fine_tuning_recipes_keep_their_values_and_their_old_name_for_a_release():
    with pytest.warns(DeprecationWarning, match="load_finetune"):
        old = study_package.FINETUNE
    for name, recipes in FROZEN["recipe"].items():
        frozen = json.loads(recipes["dense_ft"])["finetune"]
        assert json.dumps(old[name]) == json.dumps(load_finetune(name).to_dict()) == json.dumps(frozen)


def test_methods_for_keeps_its_name_for_a_release():
    with pytest.warns(DeprecationWarning, match="load_methods"):
        old = study_package.methods_for(preset("medium"))
    assert old == load_methods("medium")
    for name in ("medium_awd", "tiny_awd"):  # the same hidden size as medium's and tiny's, another model
        with pytest.warns(DeprecationWarning):
            assert study_package.methods_for(preset(name)) == load_methods(name)


def test_the_config_files_are_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lm.study"]
    shipped = {p for g in globs for p in (ROOT / "lm" / "study").glob(g)}
    assert set(CONFIG_DIR.glob("*.toml")) <= shipped and len(shipped) >= 4
    assert {CONFIG_DIR.parent / "targets.toml", CONFIG_DIR.parent / "published.toml"} <= shipped  # the report's data


def test_specs_are_typed_and_only_schedule_cuts_carry_notes():
    methods = {m.name: m for m in load_methods("medium")}
    lr_all = methods["lr_all_ft"]
    assert lr_all.compress["lstm"] == LRLSTMSpec(rank=128)
    assert lr_all.compress["embedding"] == GroupReduceSpec(groups=6, ratio=8, alpha=0.5)
    assert lr_all.layer_specs()["lstm"] == {"type": "lr_lstm", "rank": 128}
    assert methods["lr_tied_scratch"].epochs == 30 and "CPU time" in methods["lr_tied_scratch"].note
    assert all(m.note for m in methods.values() if m.epochs or m.lr)  # every cut or changed rate says why
    awd = load_methods("medium_awd")
    assert all(m.note for m in awd if m.epochs or m.lr)


def test_a_compressed_method_may_narrow_its_table_and_set_its_own_epochs():
    m = Method("s", "LR-LSTM", "the teacher compressed", compress={"lstm": LRLSTMSpec(rank=8)}, train="finetune",
               shape=Shape(embedding_size=8, tie_weights=True), epochs=6)
    assert m.compress_kwargs() == {"lstm": {"type": "lr_lstm", "rank": 8}, "embedding_size": 8, "tie_weights": True}
    scratch = Method("s", "LR-LSTM", "from scratch", compress={"lstm": LRLSTMSpec(rank=8)}, train="scratch",
                     shape=Shape(embedding_size=8))
    assert scratch.compress_kwargs() == {"lstm": {"type": "lr_lstm", "rank": 8}}  # its shape is set after compressing


GOOD = """
[[methods]]
name = "dense"
family = "dense"
description = "the dense model"

[[methods]]
name = "lr"
family = "LR-LSTM"
description = "an LR-LSTM"
train = "finetune"
compress.lstm = { type = "lr_lstm", rank = 4 }
"""


@pytest.mark.parametrize("edit, message", [
    (("rank = 4", "rank = 4, ranks = [4]"), "method 'lr': field 'compress.lstm': unknown key 'ranks'"),
    (("rank = 4", 'rank = "4"'), "method 'lr': field 'compress.lstm': field 'rank': expected int, got str '4'"),
    (("rank = 4", "rank = 4.0"), "field 'rank': expected int, got float"),
    (('type = "lr_lstm", rank = 4', 'type = "lr_lstm"'), "method 'lr': field 'compress.lstm': missing field 'rank'"),
    (('type = "lr_lstm"', 'type = "tt"'), "field 'compress.lstm': field 'type' must be one of ['lr_lstm', 'tt_lstm']"),
    (("compress.lstm", "compress.softmax"), "field 'compress': unknown key 'softmax'"),
    (('family = "LR-LSTM"\n', ""), "method 'lr': missing field 'family'"),
    (('train = "finetune"', 'train = "finetune"\nepoch = 3'), "method 'lr': unknown key 'epoch'"),
    (('train = "finetune"', 'train = "finetune"\nlr = true'), "method 'lr': field 'lr': expected"),
    (('train = "finetune"', 'train = "finetune"\nepochs = 0'), "method 'lr': epochs sets the length"),
    (('name = "lr"', 'name = "dense"'), "method 'dense': a second method of that name"),
    (('description = "the dense model"', 'description = "the dense model"\nbase = "later"'),
     "method 'dense': field 'base': 'later' is no method defined above it"),
    (('name = "lr"', 'name = "lr'), "not valid TOML"),
    (('train = "finetune"', 'train = "finetune"\ndistill = { alpha = 0.5, temperature = 2.0, teacher = "self" }'),
     "method 'lr': field 'distill': teacher must be one of [None, 'dense'], got 'self'"),
])
def test_a_bad_file_names_the_file_the_method_and_the_field(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(*edit))
    with pytest.raises(ValueError, match=r"bad\.toml") as e:
        read_methods(path)
    assert message in str(e.value)


def test_the_good_file_reads_and_an_unknown_preset_lists_those_with_methods(tmp_path):
    (tmp_path / "good.toml").write_text(GOOD)
    assert [m.name for m in read_methods(tmp_path / "good.toml")] == ["dense", "lr"]
    with pytest.raises(ValueError, match=r"no study methods for preset 'huge'; .*'small'"):
        load_methods("huge")


@pytest.mark.parametrize("fields, message", [
    ({"train": "scratch", "distill": Distill(0.5, 2.0)}, "distillation needs train='finetune'"),
    ({"base": "dense_ft", "train": "scratch"}, "cannot compress"),
    ({"base": "dense_ft", "prune": Prune(0.5, ["decoder"])}, "cannot compress"),
    ({"train": "finetune", "shape": Shape(embedding_size=8)}, "from-scratch or compressed models"),
    ({"train": "fine-tune"}, "train must be"),
    ({"lr": 0.5}, "lr sets the rate of a training run"),
    ({"train": "scratch", "lr": 0.0}, "must be > 0"),
    ({"epochs": 3}, "epochs sets the length of a training run"),
    ({"train": "scratch", "epochs": 0}, "must be >= 1"),
    ({"train": "finetune", "qat_bits": 2}, "qat_bits fine-tunes"),
    ({"quant": "q2", "qat_bits": 2}, "qat_bits fine-tunes"),
    ({"train": "finetune", "quant": "q4", "qat_bits": 2}, "quant='q2'"),
    ({"train": "finetune", "quant": "q2", "qat_bits": 2, "prune": Prune(0.5, ["decoder"])}, "no pruning"),
    ({"train": "finetune", "qat_every": 8}, "qat_every sets how often"),
    ({"train": "finetune", "quant": "q2", "qat_bits": 2, "qat_every": 0}, "must be >= 1"),
    ({"quant": "q5"}, "quant must be one of"),
    ({"train": "finetune", "quant": "q5", "qat_bits": 5}, "quant must be one of"),  # refused before any training
])
def test_methods_refuse_parts_the_study_would_ignore(fields, message):
    with pytest.raises(ValueError, match=message):
        Method("bad", "dense", "a recipe with a part that would be ignored", **fields)
    for name in ("tiny", "small", "medium", "large"):
        assert len(load_methods(name)) == len(FROZEN["recipe"][name])  # every shipped method passes the checks


def test_a_finetune_regularization_replaces_the_presets_strengths_and_names_every_one(tmp_path):
    from types import SimpleNamespace

    from lm.regularize import Regularization
    from lm.study.methods import read_finetune
    from lm.study.pipeline import finetune_config

    light = load_finetune("medium_awd").regularization
    assert light == Regularization(input=0.1, hidden=0.1, output=0.1, embedding=0.0, weight=0.1, ar=2.0, tar=1.0)
    base = preset("medium_awd")
    model = SimpleNamespace(config=base.model)
    tuned = finetune_config(base, model, 0.5, 3, light)
    assert (tuned.dropout_input, tuned.dropout_hidden, tuned.dropout_output, tuned.dropout_embedding, tuned.weight_drop,
            tuned.ar, tuned.tar) == (0.1, 0.1, 0.1, 0.0, 0.1, 2.0, 1.0)
    assert (tuned.weight_decay, tuned.epochs, tuned.lr) == (base.weight_decay, 3, 0.5)
    assert base.asgd_start and base.asgd_nonmono and tuned.asgd_start is None and tuned.asgd_nonmono is None  # plain SGD
    kept = finetune_config(base, model, 0.5, 3)  # no regularization: the preset's own
    assert (kept.dropout_input, kept.weight_drop) == (base.dropout_input, base.weight_drop) == (0.4, 0.5)
    assert load_finetune("medium_awd").to_dict()["regularization"]["weight"] == 0.1
    assert "regularization" not in load_finetune("medium").to_dict()  # the older recipes keep their cache keys
    assert "min_gain" not in load_finetune("medium").to_dict()
    assert finetune_config(base, model, 0.5, 6, light, 0.005).min_gain == 0.005
    head = "[finetune]\nepochs = 1\nlr = 0.5\ndropout = 0.0\n"
    every = "input = 0.1, hidden = 0.1, output = 0.1, embedding = 0.0, weight = 0.1, ar = 2.0"
    path = tmp_path / "study.toml"
    for body, message in [
        (f"regularization = {{ {every} }}", r"field 'regularization': missing field 'tar' \(give every"),
        (f"regularization = {{ {every}, tar = 1.0, drop = 0.1 }}", "field 'regularization': unknown key 'drop'"),
        (f"regularization = {{ {every.replace('input = 0.1', 'input = 1.5')}, tar = 1.0 }}",
         r"field 'regularization': Regularization\.input is a dropout probability in \[0, 1\)"),
        ('regularization = "light"', "field 'regularization': expected"),
        ("min_gain = 1.5", r"min_gain must be None or a number in \[0, 1\), got 1.5"),
        ('min_gain = "1%"', "field 'min_gain': expected"),
    ]:
        path.write_text(head + body + "\n")
        with pytest.raises(ValueError, match=r"study\.toml: \[finetune\]: " + message):
            read_finetune(path)
    for wrong, message in [("epochs = 0", r"epochs must be an int >= 1, got 0"),
                           ("lr = -0.5", r"lr must be a finite number > 0, got -0.5"),
                           ("lr = nan", r"lr must be a finite number > 0, got nan"),
                           ("dropout = 1.5", r"dropout must be a probability in \[0, 1\), got 1.5")]:
        key = wrong.split(" =")[0]
        path.write_text("\n".join(wrong if line.startswith(key + " =") else line for line in head.splitlines()) + "\n")
        with pytest.raises(ValueError, match=r"study\.toml: \[finetune\]: " + message):
            read_finetune(path)
