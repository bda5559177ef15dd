"""The language model: its forward contract, state, dropout and weight tying."""

import pytest
import torch

from lm.model import count_parameters


def test_forward_contract(tiny_lm):
    model = tiny_lm(vocab=50, init=0.3)
    logits, (h, c) = model(torch.randint(0, 50, (7, 3)))
    assert logits.shape == (7, 3, 50)
    assert h.shape == c.shape == (2, 3, 8)
    with pytest.raises(ValueError, match="seq_len, batch"):
        model(torch.zeros(7, dtype=torch.long))


def test_state_carries_across_calls(tiny_lm):
    model = tiny_lm(vocab=50, init=0.3)
    tokens = torch.randint(0, 50, (10, 2))
    whole, _ = model(tokens)
    first, state = model(tokens[:4])
    second, _ = model(tokens[4:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)


def test_dropout_is_on_non_recurrent_connections_only(tiny_lm):
    model = tiny_lm(vocab=50, init=0.3, dropout=0.5)
    assert model.lstm.dropout == 0.5 and model.drop.p == 0.5
    tokens = torch.randint(0, 50, (5, 2))
    model.eval()
    torch.testing.assert_close(model(tokens)[0], model(tokens)[0])  # no dropout at eval
    model.train()
    assert not torch.allclose(model(tokens)[0], model(tokens)[0])


def test_weight_tying_shares_the_matrix(tiny_lm):
    model = tiny_lm(vocab=50, init=0.3, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert count_parameters(model) == count_parameters(tiny_lm(vocab=50, init=0.3)) - 50 * 8
