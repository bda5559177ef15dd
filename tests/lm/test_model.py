import math

import pytest
import torch
from torch import nn

import lm
from lm.checkpoint import save_model
from lm.config import ModelConfig, preset
from lm.evaluate import perplexity, token_losses
from lm.model import LanguageModel, count_parameters

VOCAB = [f"w{i}" for i in range(50)]


def small_model(**kw) -> LanguageModel:
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=50, hidden_size=8, num_layers=2, **kw), VOCAB)
    model.init_uniform(0.3)
    return model


def test_forward_contract():
    model = small_model()
    logits, (h, c) = model(torch.randint(0, 50, (7, 3)))
    assert logits.shape == (7, 3, 50)
    assert h.shape == c.shape == (2, 3, 8)
    with pytest.raises(ValueError, match="seq_len, batch"):
        model(torch.zeros(7, dtype=torch.long))


def test_state_carries_across_calls():
    model = small_model().eval()
    tokens = torch.randint(0, 50, (10, 2))
    whole, _ = model(tokens)
    first, state = model(tokens[:4])
    second, _ = model(tokens[4:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)


def test_dropout_is_on_non_recurrent_connections_only():
    model = small_model(dropout=0.5)
    assert model.lstm.dropout == 0.5 and model.drop.p == 0.5
    tokens = torch.randint(0, 50, (5, 2))
    model.eval()
    torch.testing.assert_close(model(tokens)[0], model(tokens)[0])  # no dropout at eval
    model.train()
    assert not torch.allclose(model(tokens)[0], model(tokens)[0])


def test_exact_perplexity_counts_every_token_once():
    model = small_model().eval()
    stream = torch.randint(0, 50, (103,))
    logits, _ = model(stream[:-1].view(-1, 1))
    expected = math.exp(nn.functional.cross_entropy(logits.view(-1, 50), stream[1:]).item())
    for chunk in (1, 7, 128):
        assert perplexity(model, stream, chunk=chunk) == pytest.approx(expected, rel=1e-5)
    # token by token: the loss of each target, in stream order, whatever the chunking
    each = nn.functional.cross_entropy(logits.view(-1, 50), stream[1:], reduction="none").double()
    for chunk in (1, 7, 128):
        torch.testing.assert_close(token_losses(model, stream, chunk=chunk), each, rtol=1e-5, atol=1e-5)


def test_weight_tying_shares_the_matrix():
    model = small_model(tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert count_parameters(model) == count_parameters(small_model()) - 50 * 8


def test_load_contract_round_trip(tmp_path):
    model = small_model()
    size = save_model(model, tmp_path / "model.safetensors")
    assert size == (tmp_path / "model.safetensors").stat().st_size
    loaded = lm.load(tmp_path / "model.safetensors")
    assert not loaded.training and loaded.vocab == VOCAB
    tokens = torch.randint(0, 50, (6, 2))
    torch.testing.assert_close(loaded(tokens)[0], model.eval()(tokens)[0])


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        lm.load(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an lm model file: a torch.save"):
        lm.load(tmp_path / "other.pt")


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
