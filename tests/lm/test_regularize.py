"""Merity et al.'s regularisers: masks, weight drop on every map type, the activation penalties,
and the NT-ASGD trigger (averaged SGD itself is trained in tests/lm/test_train.py)."""

import copy

import pytest
import torch
from torch import nn

from lm.model import LanguageModel
from lm.regularize import (Regularization, dense_weight, embedding_dropout, locked_dropout, nt_asgd_triggered,
                           weight_dropped_layer)
from ttlayers import LowRankLinear, TTLinear
from ttlayers.lstm import LSTM, LSTMLayer


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
def test_locked_dropout_draws_one_mask_per_sequence(where, tiny_lm):
    model = tiny_lm(vocab=50, hidden=16, init=0.3).train()
    tokens = torch.randint(0, 50, (12, 6))
    before, after = capture(model, where, Regularization(**{where: 0.5}), tokens)
    ratio = after / before
    assert set(ratio.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert torch.equal(ratio, ratio[:1].expand_as(ratio))  # the same mask at every time step
    assert not torch.equal(ratio[:, :1].expand_as(ratio), ratio)  # but one per sequence (batch row)
    assert 0.25 < (ratio == 0).double().mean().item() < 0.75


def test_embedding_dropout_drops_whole_words_everywhere_in_the_batch(tiny_lm):
    model = tiny_lm(vocab=50, hidden=16, init=0.3).train()
    tokens = torch.randint(0, 10, (12, 6))  # every word occurs many times
    before, after = capture(model, "input", Regularization(embedding=0.5), tokens)
    ratio = after / before
    assert torch.equal(ratio, ratio[..., :1].expand_as(ratio))  # a whole row of the embedding matrix
    per_word = {w: ratio[..., 0][tokens == w].unique().tolist() for w in tokens.unique().tolist()}
    assert all(len(v) == 1 for v in per_word.values())  # the same for every occurrence of a word
    assert {v[0] for v in per_word.values()} == {0.0, 2.0}


@pytest.mark.parametrize("lstm", [{}, {"lstm": {"type": "lr_lstm", "rank": 4}}], ids=["dense", "projected"])
def test_weight_drop_masks_each_recurrent_weight_once_per_sequence(lstm, tiny_lm):
    model = tiny_lm(vocab=50, hidden=16, init=0.3, **lstm).train()
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


def test_weight_drop_keeps_each_recurrent_weight_with_probability_1_minus_p_scaled_by_its_inverse(tiny_lm,
                                                                                               monkeypatch):
    model = tiny_lm(vocab=50, hidden=32, init=0.3).train()
    seen = []
    fused = torch.lstm

    def recording(x, state, weights, *args):
        seen.append(weights[1].detach())  # W_hh, as the fused kernel gets it
        return fused(x, state, weights, *args)

    monkeypatch.setattr(torch, "lstm", recording)
    model(torch.randint(0, 50, (5, 3)), None, Regularization(weight=0.3))
    for layer, w in zip(model.lstm.layers, seen, strict=True):
        ratio = w / layer.recurrent_map.weight.detach()
        kept = ratio != 0
        torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 1 / 0.7))
        assert 0.25 < 1 - kept.double().mean().item() < 0.35  # 4096 weights, about 30% dropped


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
def test_weight_drop_masks_the_built_weight_of_factorised_maps(make, tiny_lm):
    factorised = with_maps(tiny_lm(vocab=50, hidden=16, init=0.3).train(), make)
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


def test_regularised_forward_is_the_plain_one_when_everything_is_off(tiny_lm):
    model = tiny_lm(vocab=50, hidden=16, init=0.3, dropout=0.3).train()
    tokens = torch.randint(0, 50, (8, 3))
    torch.manual_seed(2)
    plain, _ = model(tokens)
    torch.manual_seed(2)
    regularised, _, penalty = model(tokens, None, Regularization())
    torch.testing.assert_close(regularised, plain)
    assert penalty.item() == 0


def test_activation_penalties(tiny_lm):
    model = tiny_lm(vocab=50, hidden=16, init=0.3).train()
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


@pytest.mark.parametrize("p", [1.0, -0.1, float("nan")])
def test_the_regularisers_refuse_a_probability_outside_0_1(p, tiny_lm):
    """p = 1 would scale the kept entries by 1/0 (NaN outputs); a negative p would fail inside bernoulli_."""
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"locked_dropout takes a dropout probability in \[0, 1\)"):
        locked_dropout(x, p)
    with pytest.raises(ValueError, match="embedding_dropout takes a dropout probability"):
        embedding_dropout(x, torch.zeros(4, 2, dtype=torch.long), 5, p)
    layer = tiny_lm(vocab=50, hidden=3).lstm.layers[0]
    with pytest.raises(ValueError, match="weight_dropped_layer takes a dropout probability"):
        weight_dropped_layer(layer, x, (torch.zeros(2, 3), torch.zeros(2, 3)), p)
    with pytest.raises(ValueError, match=r"Regularization.ar must be a finite number >= 0, got nan"):
        Regularization(ar=float("nan"))
