import io

import pytest
import torch
from torch import nn

from ttlayers import LSTM, LowRankLinear, TTEmbedding, TTLinear, compress
from ttlayers.compress import count_parameters


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 50, hidden: int = 16, tie: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, 2)
        self.decoder = nn.Linear(hidden, vocab)
        if tie:
            self.decoder.weight = self.embedding.weight

    def forward(self, tokens):
        out, _ = self.lstm(self.embedding(tokens))
        return self.decoder(out)


def make(**kwargs) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(**kwargs).double()


@pytest.mark.filterwarnings("ignore:the exact TT-matrix")  # exact copies are the point here
def test_full_rank_tt_is_exact_and_replaces_every_layer():
    model = make()
    tokens = torch.randint(0, 50, (7, 3))
    expected = model(tokens)
    before = count_parameters(model)
    report = compress(model, "tt")
    assert isinstance(model.embedding, TTEmbedding) and isinstance(model.decoder, TTLinear)
    assert isinstance(model.lstm, LSTM)
    assert all(isinstance(m, TTLinear) for layer in model.lstm.layers for m in (layer.input_map, layer.recurrent_map))
    torch.testing.assert_close(model(tokens), expected, atol=1e-9, rtol=1e-7)
    assert report.params_before == before and report.params_after == count_parameters(model)
    assert {r.name for r in report.layers} == {"embedding", "decoder"} | {
        f"lstm.layers.{k}.{m}" for k in range(2) for m in ("input_map", "recurrent_map")}
    assert all(r.rel_error < 1e-9 for r in report.layers)
    assert "total parameters" in str(report)


@pytest.mark.parametrize("ratio", [2.0, 8.0])
def test_ratio_target_per_layer(ratio):
    model = make(vocab=256, hidden=64)
    report = compress(model, "tt", ratio=ratio)
    for row in report.layers:
        layer = model.get_submodule(row.name)
        dense = layer.dense_weight().numel()
        weights = sum(c.numel() for c in layer.cores)
        assert dense / weights >= ratio
    assert report.params_after < report.params_before


def test_low_rank_method_with_per_layer_ranks_and_skip():
    model = make()
    report = compress(model, "low_rank", rank=4, ranks={"decoder": 2, "lstm.layers.1": 3}, skip=["lstm.layers.0.input_map"])
    assert isinstance(model.embedding, nn.Embedding)  # low_rank leaves embeddings alone
    assert model.decoder.rank == 2 and isinstance(model.decoder, LowRankLinear)
    assert model.lstm.layers[1].input_map.rank == 3 and model.lstm.layers[1].recurrent_map.rank == 3
    assert model.lstm.layers[0].recurrent_map.rank == 4
    assert type(model.lstm.layers[0].input_map) is nn.Linear
    assert {r.name for r in report.layers} == {"decoder", "lstm.layers.0.recurrent_map", "lstm.layers.1.input_map",
                                               "lstm.layers.1.recurrent_map"}


def test_rel_eps_bounds_every_layer():
    model = make()
    report = compress(model, "tt", rel_eps=0.3)
    assert all(r.rel_error <= 0.3 + 1e-9 for r in report.layers)


def test_compressed_model_state_dict_round_trip():
    model = make()
    compress(model, "tt", rank=3)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = make()
    compress(other, "tt", rank=3)
    other.load_state_dict(torch.load(buffer))
    tokens = torch.randint(0, 50, (4, 2))
    torch.testing.assert_close(other(tokens), model(tokens))


def test_tied_weights_warn():
    model = make(tie=True)
    with pytest.warns(UserWarning, match="share a weight"):
        compress(model, "tt", rank=4)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="method"):
        compress(make(), "cp")
    with pytest.raises(ValueError, match="either ratio or rank"):
        compress(make(), "tt", rank=2, ratio=4.0)
    with pytest.raises(ValueError, match="rel_eps applies"):
        compress(make(), "low_rank", rel_eps=0.1)
    with pytest.raises(ValueError, match="needs a rank or a ratio"):
        compress(make(), "low_rank")
    with pytest.raises(ValueError, match="submodules"):
        compress(nn.Linear(4, 4))


def test_replacements_keep_the_mode_and_the_freezing_of_what_they_replace():
    model = make().eval()
    model.decoder.requires_grad_(False)
    compress(model, "low_rank", rank=3)
    assert not any(m.training for m in model.modules())  # an eval model stays deterministic (the LSTM's dropout)
    assert not any(p.requires_grad for p in model.decoder.parameters())
    assert all(p.requires_grad for p in model.lstm.parameters())


def test_a_layer_registered_twice_is_factored_once_and_replaced_at_both_names():
    shared = nn.Linear(16, 16, dtype=torch.float64)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    x = torch.randn(3, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    report = compress(model, "tt", rank=64)  # full rank: exact
    assert type(model[0]) is TTLinear and model[2] is model[0]
    assert len(report.layers) == 1 and report.params_after == count_parameters(model)
    torch.testing.assert_close(model(x), expected)


def test_a_layer_that_cannot_be_factored_is_named_and_nothing_is_replaced():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16).half())
    with pytest.raises(ValueError, match="layer '1': matrix must be float32 or float64"):
        compress(model, "tt", rank=2)
    assert [type(m) for m in model] == [nn.Linear, nn.Linear]
    lstms = nn.Sequential(nn.LSTM(4, 8), nn.LSTM(8, 8, bidirectional=True))
    with pytest.raises(ValueError, match="layer '1': from_torch supports unidirectional"):
        compress(lstms, "tt", rank=2)
    assert [type(m) for m in lstms] == [nn.LSTM, nn.LSTM]
