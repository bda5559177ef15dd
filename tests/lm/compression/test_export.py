import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.compression.export import artifact_size, decode, decode_tensor, encode_tensor, export, export_bytes, load_artifact
from lm.compression.prune import finalize, prune_model
from lm.compression.quantize import dequantize, fake_quantize_, int8_dynamic, quantize_uniform
from lm.config import ModelConfig
from lm.model import LanguageModel
from ttlayers.lstm import LSTM

VOCAB = [f"w{i}" for i in range(60)]


def model(hidden=8, layers=2, **kw) -> LanguageModel:
    torch.manual_seed(0)
    m = LanguageModel(ModelConfig(vocab_size=60, hidden_size=hidden, num_layers=layers, **kw), VOCAB)
    m.init_uniform(0.2)
    return m.eval()


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 7), per_channel=st.booleans(), seed=st.integers(0, 100))
def test_quantize_uniform_error_is_half_a_step(rows, cols, per_channel, seed):
    t = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    codes, lo, step = quantize_uniform(t, per_channel)
    assert codes.dtype == torch.uint8 and codes.shape == t.shape
    err = (dequantize(codes, lo, step) - t).abs()
    bound = (step[:, None] if per_channel else step) / 2 + 1e-6
    assert (err <= bound).all()
    # 256 equal intervals between the extremes: both ends are hit exactly
    assert codes.min() == 0 and (codes.max() == 255 or t.max() == t.min() or (per_channel and cols == 1))


def test_quantize_constant_and_bad_input():
    codes, lo, step = quantize_uniform(torch.full((3, 2), 0.5))
    assert torch.equal(dequantize(codes, lo, step), torch.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="floating-point"):
        quantize_uniform(torch.ones(3, dtype=torch.long))


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), density=st.floats(0.0, 1.0),
       quant=st.sampled_from([None, "q8", "q8c"]), seed=st.integers(0, 100))
def test_encode_decode_roundtrip(shape, density, quant, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    entry, parts = encode_tensor(t, quant)
    back = decode_tensor(entry, parts)
    assert back.shape == t.shape
    assert torch.equal(back == 0, t == 0) or not entry["sparse"]
    if quant is None:
        assert torch.equal(back, t)
    else:
        span = (t.max() - t.min()).item() if t.numel() else 0.0
        assert (back - t).abs().max() <= span / 255 / 2 + 1e-6
    dense_bytes = t.numel() * (4 if quant is None else 1)
    assert sum(p.numel() * p.element_size() for p in parts.values()) <= dense_bytes + 8 * (t.shape[0] if quant == "q8c" and t.dim() > 1 else 1)


def test_artifact_roundtrip_and_sizes():
    m = model()
    tokens = torch.randint(0, 60, (6, 2))
    data, info = export_bytes(m)
    back = decode(data)
    assert back.vocab == VOCAB
    torch.testing.assert_close(back(tokens)[0], m(tokens)[0], rtol=0, atol=0)
    n = sum(p.numel() for p in m.parameters())
    assert 4 * n < info.bytes < 4 * n + 4000  # float32 values plus header and vocabulary
    q8 = artifact_size(m, "q8")
    assert n < q8 < n + 4000
    assert artifact_size(m, "q8c") > q8  # a lo and a step per row


def test_pruned_artifact_is_sparse(tmp_path):
    m = model(hidden=16)
    prune_model(m, 0.9, ("decoder", "embedding"))
    with pytest.raises(ValueError, match="finalize"):
        export_bytes(m)
    finalize(m)
    info = export(m, tmp_path / "m.safetensors")
    assert info.encodings["decoder.weight"] == "sparse f32"
    assert info.tensor_bytes["decoder.weight"] < 0.55 * 4 * m.decoder.weight.numel()
    back = load_artifact(tmp_path / "m.safetensors")
    tokens = torch.randint(0, 60, (5, 1))
    torch.testing.assert_close(back(tokens)[0], m(tokens)[0], rtol=0, atol=0)


def test_quantized_artifact_decodes_to_fake_quantized_model():
    m = model()
    back = decode(export_bytes(m, "q8")[0])
    fake_quantize_(m)
    tokens = torch.randint(0, 60, (5, 2))
    torch.testing.assert_close(back(tokens)[0], m(tokens)[0])


def test_tied_weights_stored_once():
    m = model(tie_weights=True)
    untied = model()
    assert artifact_size(m) < artifact_size(untied) - 4 * 60 * 8 + 100
    back = decode(export_bytes(m)[0])
    assert back.decoder.weight is back.embedding.weight


def test_int8_dynamic_runs_and_is_close():
    m = model(hidden=16)
    q = int8_dynamic(m)
    tokens = torch.randint(0, 60, (5, 2))
    assert (q(tokens)[0] - m(tokens)[0]).abs().max() < 0.05
    assert not any(isinstance(x, torch.nn.Linear) and type(x) is torch.nn.Linear for x in q.modules())


def test_int8_dynamic_keeps_a_projected_lstm_fused():
    m = model(hidden=16)
    m.lstm = LSTM(16, 16, 2, proj_size=4)
    m.decoder = torch.nn.Linear(4, 60)
    q = int8_dynamic(m)
    assert all(layer.is_dense for layer in q.lstm.layers)  # the fused torch.lstm call still applies
    assert type(q.decoder) is torch.ao.nn.quantized.dynamic.Linear
    tokens = torch.randint(0, 60, (5, 2))
    assert (q(tokens)[0] - m(tokens)[0]).abs().max() < 0.05
