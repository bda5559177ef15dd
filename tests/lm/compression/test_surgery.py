"""Compression surgery: a trained model's layers replaced by compressed ones holding its weights."""

import pytest
import torch
from torch import nn

import lm
from lm.checkpoint import save_model
from lm.compression.export import decode, export_bytes
from lm.compression.quantize import int8_dynamic
from lm.compression.surgery import compress_model, set_dropout

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
