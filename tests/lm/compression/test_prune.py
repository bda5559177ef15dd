import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.compression.prune import finalize, finalized_copy, gradual_amounts, prune_model, sparsity


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_removes_smallest_and_retraining_keeps_zeros(scope, tiny_lm):
    m = tiny_lm(vocab=40, init=0.3)
    before = m.decoder.weight.detach().clone()
    prune_model(m, 0.9, ("decoder", "lstm"), scope=scope)
    assert sparsity(m, ("decoder", "lstm")) == pytest.approx(0.9, abs=0.01)
    if scope == "layer":
        kept = before.abs()[m.decoder.weight != 0]
        assert kept.min() >= before.abs()[m.decoder.weight == 0].max()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m.train()
    for _ in range(3):
        logits, _ = m(torch.randint(0, 40, (5, 3)))
        opt.zero_grad()
        logits.logsumexp(-1).mean().backward()
        opt.step()
    w_ih = m.lstm.layers[0].input_map
    assert w_ih.weight_orig.grad is not None  # the fused kernel trains the masked LSTM weights
    finalize(m)
    assert "decoder.weight_mask" not in m.state_dict()
    assert sparsity(m, ("decoder", "lstm")) == pytest.approx(0.9, abs=0.01)


def test_repeated_pruning_and_bad_input(tiny_lm):
    m = tiny_lm(vocab=40, init=0.3)
    for amount in gradual_amounts(0.8, 4):
        prune_model(m, amount, ("embedding",))
    assert sparsity(m, ("embedding",)) == pytest.approx(0.8, abs=0.01)
    with pytest.raises(ValueError, match="amount"):
        prune_model(m, 1.0)
    with pytest.raises(ValueError, match="unknown part"):
        prune_model(m, 0.5, ("softmax",))


@settings(max_examples=25, deadline=None)
@given(final=st.floats(0.05, 0.99), steps=st.integers(1, 12))
def test_gradual_amounts_reach_final_sparsity(final, steps):
    alive = 1.0
    for a in gradual_amounts(final, steps):
        assert 0.0 <= a < 1.0
        alive *= 1 - a
    assert 1 - alive == pytest.approx(final)


def test_finalized_copy_leaves_the_masks(tiny_lm):
    m = tiny_lm(vocab=40, init=0.3)
    prune_model(m, 0.5, ("decoder", "lstm"))
    m(torch.randint(0, 40, (3, 2)))[0].sum().backward()  # weights now carry autograd history
    c = finalized_copy(m)
    assert "decoder.weight_mask" in m.state_dict() and "decoder.weight_mask" not in c.state_dict()
    assert sparsity(c, ("decoder",)) == pytest.approx(0.5, abs=0.02)
