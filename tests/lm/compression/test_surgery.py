"""Compression surgery: a trained model's layers replaced by compressed ones holding its weights."""

import pytest
import torch
from torch import nn

import lm
from lm.checkpoint import save_model
from lm.compression.export import decode, export_bytes
from lm.compression.quantize import int8_dynamic
from lm.compression.surgery import compress_model, set_dropout
from lm.model import count_parameters

COUNTS = torch.arange(120, 0, -1) ** 2
GR = {"type": "groupreduce", "groups": 3, "ratio": 3}
CASES = {
    "low_rank": dict(embedding={"type": "low_rank", "rank": 16}, decoder={"type": "low_rank", "rank": 16}),
    "groupreduce": dict(embedding=GR, decoder=GR),
    "tt": dict(embedding={"type": "tt", "rank": 64}, decoder={"type": "tt", "rank": 64}),
    "lr_lstm": dict(lstm={"type": "lr_lstm", "rank": 15}),
    "lr_lstm_gr": dict(lstm={"type": "lr_lstm", "rank": 6}, embedding=GR, decoder=GR),
    "tt_lstm": dict(lstm={"type": "tt_lstm", "rank": 64}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compressed_models_rebuild_from_config(case, tmp_path, tiny_lm):
    m = tiny_lm(vocab=120, hidden=16, init=0.3)
    c = compress_model(m, counts=COUNTS, **CASES[case])
    assert c.config.embedding["type"] != "dense" or c.config.lstm["type"] != "dense"
    tokens = torch.randint(0, 120, (7, 2))
    out = c(tokens)[0]
    torch.testing.assert_close(decode(export_bytes(c)[0])(tokens)[0], out, rtol=0, atol=0)
    save_model(c, tmp_path / "c.safetensors")
    torch.testing.assert_close(lm.load(tmp_path / "c.safetensors")(tokens)[0], out, rtol=0, atol=0)
    assert (int8_dynamic(c)(tokens)[0] - out).abs().max() < 0.1  # int8 execution runs on every architecture
    c.train()
    c(torch.randperm(120).view(60, 2))[0].sum().backward()  # every word, so every GroupReduce block
    assert all(p.grad is not None for p in c.parameters())


def test_full_rank_compressions_are_exact(tiny_lm):
    m = tiny_lm(vocab=120, hidden=16, init=0.3)
    tokens = torch.randint(0, 120, (6, 3))
    ref = m(tokens)[0]
    full = {"low_rank": dict(embedding={"type": "low_rank", "rank": 16}, decoder={"type": "low_rank", "rank": 16}),
            "tt": CASES["tt"], "tt_lstm": CASES["tt_lstm"]}
    for kw in full.values():
        torch.testing.assert_close(compress_model(m, counts=COUNTS, **kw)(tokens)[0], ref, atol=1e-4, rtol=1e-4)


def test_lr_lstm_shares_one_projection_per_layer(tiny_lm):
    c = compress_model(tiny_lm(vocab=120, hidden=16, init=0.3), lstm={"type": "lr_lstm", "rank": 5})
    assert c.lstm.output_size == 5 and c.decoder.in_features == 5
    assert all(layer.projection.weight.shape == (5, 16) for layer in c.lstm.layers)
    assert c.lstm.layers[1].input_map.in_features == 5


def test_bad_specs(tiny_lm):
    m = tiny_lm(vocab=120, hidden=16, init=0.3)
    with pytest.raises(ValueError, match="unknown embedding compression"):
        compress_model(m, embedding={"type": "bogus"})
    with pytest.raises(ValueError, match="counts"):
        compress_model(m, decoder=GR)
    c = compress_model(m, decoder={"type": "low_rank", "rank": 4})
    with pytest.raises(ValueError, match="must be dense"):
        compress_model(c, decoder={"type": "low_rank", "rank": 2})
    with pytest.raises(ValueError, match="dropout"):
        set_dropout(m, 1.0)
    assert isinstance(set_dropout(m, 0.3).drop, nn.Dropout) and m.drop.p == 0.3 and m.lstm.dropout == 0.3


def _rank_limited(tiny_lm, rank: int, **config):
    """A model whose embedding table and every matrix that reads a hidden state (recurrent maps, the second
    layer's input map, and so the tied decoder) see only one ``rank``-dimensional subspace: the LR-LSTM of
    that rank and the table narrowed to it are then exact."""
    m = tiny_lm(vocab=120, hidden=16, init=0.3, **config)
    torch.manual_seed(1)
    q = torch.linalg.qr(torch.randn(16, rank))[0]  # (16, rank), orthonormal columns
    with torch.no_grad():
        for w in (m.embedding.weight, m.decoder.weight, m.lstm.layers[1].input_map.weight,
                  *(layer.recurrent_map.weight for layer in m.lstm.layers)):
            w.copy_(w @ q @ q.T)
    return m


def test_tied_lr_lstm_keeps_the_tie_through_the_shared_projection(tiny_lm):
    m = _rank_limited(tiny_lm, 5, tie_weights=True)
    tokens = torch.randint(0, 120, (9, 3))
    c = compress_model(m, lstm={"type": "lr_lstm", "rank": 5}, embedding_size=5)
    assert c.config.tie_weights and c.config.embedding_size == 5 and c.decoder.weight is c.embedding.weight
    assert c.embedding.weight.shape == (120, 5) and c.lstm.layers[0].input_map.in_features == 5
    # the table is the decoder's E U_L^T, which the first layer reads back through U_L: exact here
    torch.testing.assert_close(c(tokens)[0], m(tokens)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decode(export_bytes(c)[0])(tokens)[0], c(tokens)[0], rtol=0, atol=0)
    assert count_parameters(c) < count_parameters(m)
    # on any model, the tied table is the untied LR-LSTM's decoder (E U_L^T, U_L from [E; V_L])
    full = tiny_lm(vocab=120, hidden=16, init=0.3, tie_weights=True)
    torch.testing.assert_close(compress_model(full, lstm={"type": "lr_lstm", "rank": 5}, embedding_size=5).embedding.weight,
                               compress_model(full, lstm={"type": "lr_lstm", "rank": 5}).decoder.weight)
    c.train()
    c(torch.randperm(120).view(60, 2))[0].sum().backward()
    assert c.embedding.weight.grad is not None and c.embedding.weight.grad.abs().sum() > 0


def test_narrowed_embedding_is_read_back_by_the_first_layer(tiny_lm):
    for tied in (False, True):
        m = _rank_limited(tiny_lm, 6, tie_weights=tied)
        tokens = torch.randint(0, 120, (9, 3))
        for kw in ({}, {"lstm": {"type": "tt_lstm", "rank": 64}}, {"decoder": {"type": "low_rank", "rank": 16}}):
            c = compress_model(m, embedding_size=6, **kw)
            assert not c.config.tie_weights and c.embedding.weight.shape == (120, 6)
            assert c.lstm.input_size == c.lstm.layers[0].input_size == 6
            torch.testing.assert_close(c(tokens)[0], m(tokens)[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(decode(export_bytes(c)[0])(tokens)[0], c(tokens)[0], rtol=0, atol=0)
    # a rank-7 table narrowed to 6 is not exact: the first layer then reads the projected vectors
    c = compress_model(_rank_limited(tiny_lm, 7), embedding_size=6)
    assert not torch.allclose(c(tokens)[0], _rank_limited(tiny_lm, 7)(tokens)[0], atol=1e-3)


def test_a_tied_model_comes_out_untied_only_when_its_table_is_changed(tiny_lm):
    m = tiny_lm(vocab=120, hidden=16, init=0.3, tie_weights=True)
    tokens = torch.randint(0, 120, (5, 2))
    tt = compress_model(m, lstm={"type": "tt_lstm", "rank": 64})
    assert tt.config.tie_weights and tt.decoder.weight is tt.embedding.weight
    gr = compress_model(m, counts=COUNTS, embedding=GR, decoder=GR)
    assert not gr.config.tie_weights and gr(tokens)[0].shape == (5, 2, 120)
    lr = compress_model(m, lstm={"type": "lr_lstm", "rank": 5})  # no embedding_size: a 16-wide table, untied
    assert not lr.config.tie_weights and lr.embedding.weight.shape == (120, 16) and lr.decoder.in_features == 5
    torch.testing.assert_close(lr.embedding.weight, m.embedding.weight)


def test_bad_embedding_sizes(tiny_lm):
    m = tiny_lm(vocab=120, hidden=16, init=0.3)
    for bad in (16, 0, 2.5, True):
        with pytest.raises(ValueError, match="embedding_size must be"):
            compress_model(m, embedding_size=bad)
    tt = compress_model(m, embedding={"type": "tt", "rank": 4})
    with pytest.raises(ValueError, match="narrows a dense embedding"):
        compress_model(tt, embedding_size=4)
    tied = tiny_lm(vocab=120, hidden=16, init=0.3, tie_weights=True)
    for source, kw in ((m, {}), (tied, {"embedding_size": 4}), (tied, {"embedding_size": 5, "decoder": GR})):
        with pytest.raises(ValueError, match="tie_weights=True keeps a tied model tied"):
            compress_model(source, counts=COUNTS, lstm={"type": "lr_lstm", "rank": 5}, tie_weights=True, **kw)
    untied = compress_model(tied, tie_weights=False)
    assert not untied.config.tie_weights and untied.decoder.weight is not untied.embedding.weight
