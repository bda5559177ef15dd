"""Model and training configs: the presets, and the checks made on every field."""

import pytest

from lm.config import OPTIONAL, PRESETS, TrainConfig, preset
from lm.model import LanguageModel, count_parameters


def test_presets_follow_zaremba():
    small, medium, large = preset("small"), preset("medium"), preset("large")
    assert (small.model.hidden_size, medium.model.hidden_size, large.model.hidden_size) == (200, 650, 1500)
    assert (small.init_scale, medium.init_scale, large.init_scale) == (0.1, 0.05, 0.04)
    assert (small.epochs, medium.epochs, large.epochs) == (13, 39, 55)
    assert (small.model.dropout, medium.model.dropout, large.model.dropout) == (0.0, 0.5, 0.65)
    assert (small.bptt, medium.bptt, small.batch_size, large.clip) == (20, 35, 20, 10.0)
    assert [small.lr_at(e) for e in range(6)] == [1, 1, 1, 1, 0.5, 0.25]
    assert medium.lr_at(6) == pytest.approx(0.8)
    assert not small.model.tie_weights
    assert count_parameters(LanguageModel(small.model)) == 4_653_200  # 18.6 MB in float32, as in the paper
    with pytest.raises(ValueError, match="unknown option"):
        preset("small", hiden_size=3)


def test_new_fields_stay_out_of_old_configs_dicts():
    # the keys (and values) that configs had before the regularisation fields: cached runs and
    # resumed train states compare these dicts
    before = {"model", "init_scale", "batch_size", "bptt", "epochs", "lr", "lr_decay", "decay_start", "clip", "seed",
              "max_train_tokens"}
    for name in ("tiny", "small", "medium", "large"):
        assert set(PRESETS[name].to_dict()) == before
        assert TrainConfig.from_dict(PRESETS[name].to_dict()) == PRESETS[name]
    awd = PRESETS["medium_awd"].to_dict()
    assert OPTIONAL - {"min_gain"} <= set(awd) and TrainConfig.from_dict(awd) == PRESETS["medium_awd"]
    assert "min_gain" not in awd  # added after the medium_awd teacher was saved: its train state still resumes
    assert preset("tiny", min_gain=0.01).to_dict()["min_gain"] == 0.01
    with pytest.raises(ValueError, match="dropout_hidden"):
        preset("tiny", dropout_hidden=1.0)
    with pytest.raises(ValueError, match="asgd_nonmono"):
        preset("tiny", asgd_nonmono=0)


def test_medium_awd_is_the_regularised_tied_medium_model():
    cfg = PRESETS["medium_awd"]
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.tie_weights) == (650, 2, True)
    r = cfg.regularization()
    assert min(r.input, r.hidden, r.output, r.embedding, r.weight) > 0 and cfg.asgd_nonmono


def test_regularization_maps_every_field_to_its_own_regulariser():
    cfg = preset("tiny", dropout_input=0.1, dropout_hidden=0.2, dropout_output=0.3, dropout_embedding=0.4,
                 weight_drop=0.5, ar=6.0, tar=7.0)
    r = cfg.regularization()
    assert (r.input, r.hidden, r.output, r.embedding, r.weight, r.ar, r.tar) == (0.1, 0.2, 0.3, 0.4, 0.5, 6.0, 7.0)
    assert preset("tiny").regularization() is None  # all off: the model's plain forward


@pytest.mark.parametrize("field, value, message", [
    ("dropout_input", 1.0, r"dropout_input is a dropout probability in \[0, 1\), got 1.0"),
    ("dropout_hidden", -0.1, r"dropout_hidden is a dropout probability in \[0, 1\), got -0.1"),
    ("dropout_output", 1.5, "dropout_output is a dropout probability"),
    ("dropout_embedding", 1.0, "dropout_embedding is a dropout probability"),
    ("weight_drop", -1e-9, "weight_drop is a dropout probability"),
    ("ar", -1.0, "ar must be a finite number >= 0, got -1.0"),
    ("ar", float("nan"), "ar must be a finite number >= 0, got nan"),
    ("tar", -0.5, "tar must be a finite number >= 0, got -0.5"),
    ("tar", float("inf"), "tar must be a finite number >= 0, got inf"),
    ("weight_decay", -1e-6, "weight_decay must be a finite number >= 0"),
    ("weight_decay", float("inf"), "weight_decay must be a finite number >= 0"),
    ("dropout_input", float("nan"), "dropout_input is a dropout probability"),
    ("asgd_start", 0, "asgd_start must be None or an int >= 1, got 0"),
    ("asgd_start", 2.0, "asgd_start must be None or an int >= 1, got 2.0"),
    ("asgd_nonmono", -3, "asgd_nonmono must be None or an int >= 1, got -3"),
    ("min_gain", 1.0, r"min_gain must be None or a number in \[0, 1\), got 1.0"),
    ("min_gain", -0.01, "min_gain must be None or a number in"),
    ("min_gain", True, "min_gain must be None or a number in"),
])
def test_a_bad_field_names_itself_and_what_is_allowed(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=message):  # and through a preset's overrides
        preset("tiny", **{field: value})


@pytest.mark.parametrize("field, value", [("dropout_hidden", 0.0), ("dropout_hidden", 0.999), ("ar", 0.0),
                                          ("asgd_start", 1), ("asgd_nonmono", None),
                                          ("min_gain", 0.0), ("min_gain", 0.999), ("min_gain", None)])
def test_the_edges_of_the_allowed_ranges_are_accepted(field, value):
    assert getattr(TrainConfig(**{field: value}), field) == value


def test_an_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match=r"unknown preset 'smal'; choose one of \[.*'small'.*'tiny'.*\]"):
        preset("smal")


def test_overrides_go_to_the_model_or_the_recipe_and_leave_the_preset_alone():
    cfg = preset("small", hidden_size=32, tie_weights=True, epochs=2, lr=0.5)
    assert (cfg.model.hidden_size, cfg.model.tie_weights, cfg.epochs, cfg.lr) == (32, True, 2, 0.5)
    assert (cfg.model.num_layers, cfg.bptt) == (PRESETS["small"].model.num_layers, PRESETS["small"].bptt)
    assert (PRESETS["small"].model.hidden_size, PRESETS["small"].epochs) == (200, 13)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_survives_to_dict_and_from_dict(name):
    assert TrainConfig.from_dict(PRESETS[name].to_dict()) == PRESETS[name]

