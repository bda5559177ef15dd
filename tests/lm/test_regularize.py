"""Merity et al.'s regularisers and averaged SGD in lm training: masks, weight drop on every map
type, tying, ASGD (fixed and non-monotonically triggered) and its exact resume."""

import copy
import json
import math
from dataclasses import asdict, replace

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

import lm
import lm.train
from lm.checkpoint import load_train_state
from lm.config import OPTIONAL, PRESETS, ModelConfig, TrainConfig, preset
from lm.evaluate import perplexity
from lm.model import LanguageModel
from lm.regularize import Regularization, dense_weight, nt_asgd_triggered
from lm.train import train
from ttlayers import LowRankLinear, TTLinear
from ttlayers.lstm import LSTM, LSTMLayer

VOCAB = [f"w{i}" for i in range(50)]


def model_of(hidden=16, layers=2, **kw) -> LanguageModel:
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=50, hidden_size=hidden, num_layers=layers, **kw), VOCAB)
    model.init_uniform(0.3)
    return model.train()


def capture(model: LanguageModel, where: str, r: Regularization, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(before, after) the dropout at ``where`` in one regularised training forward."""
    seen = {}
    first, second = model.lstm.layers
    hooks = {
        "input": [(model.embedding, "after_out"), (first, "pre")],
        "hidden": [(first, "after_out"), (second, "pre")],
        "output": [(second, "after_out"), (model.decoder, "pre")],
    }[where]
    handles = []
    for (module, kind), key in zip(hooks, ("before", "after")):
        if kind == "pre":
            handles.append(module.register_forward_pre_hook(lambda m, args, key=key: seen.__setitem__(key, args[0])))
        else:
            handles.append(module.register_forward_hook(
                lambda m, args, out, key=key: seen.__setitem__(key, out[0] if isinstance(out, tuple) else out)))
    model(tokens, None, r)
    for h in handles:
        h.remove()
    return seen["before"], seen["after"]


@pytest.mark.parametrize("where", ["input", "hidden", "output"])
def test_locked_dropout_draws_one_mask_per_sequence(where):
    model = model_of()
    tokens = torch.randint(0, 50, (12, 6))
    before, after = capture(model, where, Regularization(**{where: 0.5}), tokens)
    ratio = after / before
    assert set(ratio.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert torch.equal(ratio, ratio[:1].expand_as(ratio))  # the same mask at every time step
    assert not torch.equal(ratio[:, :1].expand_as(ratio), ratio)  # but one per sequence (batch row)
    assert 0.25 < (ratio == 0).double().mean().item() < 0.75


def test_embedding_dropout_drops_whole_words_everywhere_in_the_batch():
    model = model_of()
    tokens = torch.randint(0, 10, (12, 6))  # every word occurs many times
    before, after = capture(model, "input", Regularization(embedding=0.5), tokens)
    ratio = after / before
    assert torch.equal(ratio, ratio[..., :1].expand_as(ratio))  # a whole row of the embedding matrix
    per_word = {w: ratio[..., 0][tokens == w].unique().tolist() for w in tokens.unique().tolist()}
    assert all(len(v) == 1 for v in per_word.values())  # the same for every occurrence of a word
    assert {v[0] for v in per_word.values()} == {0.0, 2.0}


@pytest.mark.parametrize("lstm", [{}, {"lstm": {"type": "lr_lstm", "rank": 4}}], ids=["dense", "projected"])
def test_weight_drop_masks_each_recurrent_weight_once_per_sequence(lstm):
    model = model_of(**lstm)
    tokens = torch.randint(0, 50, (12, 6))
    logits, _, _ = model(tokens, None, Regularization(weight=0.5))
    logits.square().sum().backward()
    for layer in model.lstm.layers:
        zero = (layer.recurrent_map.weight.grad == 0).double().mean().item()
        # one mask for all 12 steps zeroes the gradient of about half of W_hh; a mask per step
        # (or none) would leave almost none at zero
        assert 0.35 < zero < 0.65
        assert (layer.input_map.weight.grad == 0).double().mean().item() < 0.05
    plain_logits = model.eval()(tokens)[0]
    torch.testing.assert_close(model(tokens, None, Regularization(weight=0.5))[0], plain_logits)  # eval: no drop


def with_maps(model: LanguageModel, make) -> LanguageModel:
    """``model`` with every LSTM map replaced by ``make(linear)``."""
    model = copy.deepcopy(model)
    layers = [LSTMLayer(layer.input_size, layer.hidden_size, make(layer.input_map), make(layer.recurrent_map))
              for layer in model.lstm.layers]
    model.lstm = LSTM(model.lstm.input_size, model.lstm.hidden_size, len(layers), layers=layers)
    return model.train()


def as_linear(m: nn.Module) -> nn.Linear:
    out = nn.Linear(m.in_features, m.out_features)
    with torch.no_grad():
        out.weight.copy_(dense_weight(m))
        out.bias.copy_(m.bias)
    return out


@pytest.mark.parametrize("make", [lambda m: LowRankLinear.from_linear(m, 4),
                                  lambda m: TTLinear.from_linear(m, 3, in_shape=(4, 4), out_shape=(8, 8))],
                         ids=["low_rank", "tt"])
def test_weight_drop_masks_the_built_weight_of_factorised_maps(make):
    factorised = with_maps(model_of(), make)
    dense = with_maps(factorised, as_linear)  # the same weights, as nn.Linear maps
    tokens = torch.randint(0, 50, (12, 6))
    r = Regularization(weight=0.5)
    torch.manual_seed(1)
    got, _, _ = factorised(tokens, None, r)
    torch.manual_seed(1)
    expected, _, _ = dense(tokens, None, r)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # the dense model's single mask on W_hh
    assert not torch.allclose(got, factorised(tokens)[0], rtol=1e-3, atol=1e-4)  # and something was dropped
    got.sum().backward()
    assert all(p.grad is not None for p in factorised.lstm.parameters())  # the factors learn through the mask


def test_regularised_forward_is_the_plain_one_when_everything_is_off():
    model = model_of(dropout=0.3)
    tokens = torch.randint(0, 50, (8, 3))
    torch.manual_seed(2)
    plain, _ = model(tokens)
    torch.manual_seed(2)
    regularised, _, penalty = model(tokens, None, Regularization())
    torch.testing.assert_close(regularised, plain)
    assert penalty.item() == 0


def test_activation_penalties():
    model = model_of()
    tokens = torch.randint(0, 50, (8, 3))
    raw = {}
    model.lstm.layers[1].register_forward_hook(lambda m, args, out: raw.__setitem__("h", out[0]))
    _, _, penalty = model(tokens, None, Regularization(ar=2.0, tar=1.0))
    h = raw["h"]
    torch.testing.assert_close(penalty, 2.0 * h.pow(2).mean() + (h[1:] - h[:-1]).pow(2).mean())


def test_nt_asgd_trigger_is_merity_s():
    # the latest score against the best of those more than nonmono evaluations before it
    assert not nt_asgd_triggered([10, 9, 8, 7], 1)
    assert not nt_asgd_triggered([10, 9, 8, 8.5], 1)  # worse than 8, but not than min(10, 9)
    assert nt_asgd_triggered([10, 9, 8, 9.5], 1)
    assert not nt_asgd_triggered([10, 9, 8, 9.5], 2)  # min(10) = 10
    assert not nt_asgd_triggered([5, 11], 1)  # too few evaluations
    with pytest.raises(ValueError, match="nonmono"):
        nt_asgd_triggered([1, 2], 0)


def test_new_fields_stay_out_of_old_configs_dicts():
    # the keys (and values) that configs had before the regularisation fields: cached runs and
    # resumed train states compare these dicts
    before = {"model", "init_scale", "batch_size", "bptt", "epochs", "lr", "lr_decay", "decay_start", "clip", "seed",
              "max_train_tokens"}
    for name in ("tiny", "small", "medium", "large"):
        assert set(PRESETS[name].to_dict()) == before
        assert TrainConfig.from_dict(PRESETS[name].to_dict()) == PRESETS[name]
    awd = PRESETS["medium_awd"].to_dict()
    assert OPTIONAL <= set(awd) and TrainConfig.from_dict(awd) == PRESETS["medium_awd"]
    with pytest.raises(ValueError, match="dropout_hidden"):
        preset("tiny", dropout_hidden=1.0)
    with pytest.raises(ValueError, match="asgd_nonmono"):
        preset("tiny", asgd_nonmono=0)


def test_medium_awd_is_the_regularised_tied_medium_model():
    cfg = PRESETS["medium_awd"]
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.tie_weights) == (650, 2, True)
    r = cfg.regularization()
    assert min(r.input, r.hidden, r.output, r.embedding, r.weight) > 0 and cfg.asgd_nonmono


# -- training ------------------------------------------------------------------------------------------

def tiny(**kw) -> TrainConfig:
    return preset("tiny_awd", hidden_size=16, max_train_tokens=3000, **kw)


def test_asgd_saves_and_evaluates_the_mean_of_every_step_since_the_switch(tmp_path, corpus, monkeypatch):
    cfg = tiny(epochs=2, asgd_start=2, asgd_nonmono=None)
    model = lm.train.build_model(cfg, corpus.vocab)
    iterates = []
    handle = register_optimizer_step_post_hook(
        lambda opt, args, kw: iterates.append([p.detach().clone() for p in model.parameters()]))
    try:
        results = train(cfg, tmp_path, model=model, progress=False)
    finally:
        handle.remove()
    steps = math.ceil((cfg.max_train_tokens // cfg.batch_size - 1) / cfg.bptt)
    assert len(iterates) == 2 * steps
    mean = [torch.stack(ps).mean(0) for ps in zip(*iterates[steps:])]  # the second epoch's steps
    saved = lm.load(tmp_path / "model.safetensors")
    for p, m, q in zip(saved.parameters(), mean, model.parameters()):
        torch.testing.assert_close(p, m)
        torch.testing.assert_close(q, m)  # the caller's model ends averaged too
    assert saved.decoder.weight is saved.embedding.weight  # tying composes
    assert [h["averaged"] for h in results["history"]] == [False, True]
    assert results["history"][-1]["valid_ppl"] == pytest.approx(perplexity(saved, corpus.valid), rel=1e-9)
    state = load_train_state(tmp_path / "train_state.safetensors")
    assert not torch.equal(state["model"]["embedding.weight"], saved.embedding.weight)  # SGD's own weights go on


def test_nt_asgd_starts_averaging_after_the_epoch_that_triggers_it(tmp_path, corpus, monkeypatch):
    seen = []

    def trigger(valid, nonmono):
        seen.append((list(valid), nonmono))
        return len(valid) == 1

    monkeypatch.setattr(lm.train, "nt_asgd_triggered", trigger)
    results = train(tiny(epochs=2, asgd_start=None, asgd_nonmono=3), tmp_path, progress=False)
    assert [h["averaged"] for h in results["history"]] == [False, True]
    assert seen == [([results["history"][0]["valid_ppl"]], 3)]  # asked once, until it said yes


def test_resume_restores_the_average_exactly(tmp_path, corpus):
    cfg = tiny(epochs=2, asgd_start=1, asgd_nonmono=None)
    whole = train(cfg, tmp_path / "whole", progress=False)
    train(replace(cfg, epochs=1), tmp_path / "cut", progress=False)
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed["test_ppl"] == whole["test_ppl"]
    a, b = (load_train_state(tmp_path / d / "train_state.safetensors") for d in ("whole", "cut"))
    assert a["average"].keys() == b["average"].keys()
    assert all(torch.equal(a["average"][k], b["average"][k]) for k in a["average"])
    assert all(torch.equal(lm.load(tmp_path / d / "model.safetensors").state_dict()[k], v)
               for d in ("cut",) for k, v in lm.load(tmp_path / "whole" / "model.safetensors").state_dict().items())


def test_tiny_awd_trains_end_to_end_from_the_command_line(tmp_path, corpus):
    from test_lm_train import run_lm

    out = tmp_path / "awd"
    done = run_lm("train", "--preset", "tiny_awd", "--max-train-tokens", "20000", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["test_ppl"] < 1500 and results["config"]["weight_drop"] == PRESETS["tiny_awd"].weight_drop
    evaluated = run_lm("eval", str(out / "model.safetensors"), "--splits", "test")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((out / "eval.json").read_text())["test_ppl"] == pytest.approx(results["test_ppl"], rel=1e-6)
    assert asdict(lm.load(out / "model.safetensors").config) == asdict(PRESETS["tiny_awd"].model)
