"""The artifact: tensors encoded (sparse, q8, q8c) and decoded, whole models exported and rebuilt."""

import copy
import re

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lm import modelfile
from lm.compression.export import artifact_size, decode, decode_tensor, encode_tensor, export, export_bytes, load_artifact
from lm.compression.prune import finalize, prune_model
from lm.compression.quantize import fake_quantize_
from lm.modelfile import ModelFileError
from tests.lm.compression.test_lowbit import SCALES, mixed_rows  # rows at every float16 regime


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


def test_artifact_roundtrip_and_sizes(tiny_lm):
    m = tiny_lm()
    tokens = torch.randint(0, 60, (6, 2))
    data, info = export_bytes(m)
    back = decode(data)
    assert back.vocab == m.vocab == [f"w{i}" for i in range(60)]
    torch.testing.assert_close(back(tokens)[0], m(tokens)[0], rtol=0, atol=0)
    n = sum(p.numel() for p in m.parameters())
    assert 4 * n < info.bytes < 4 * n + 4000  # float32 values plus header and vocabulary
    q8 = artifact_size(m, "q8")
    assert n < q8 < n + 4000
    assert artifact_size(m, "q8c") > q8  # a lo and a step per row


def test_pruned_artifact_is_sparse(tmp_path, tiny_lm):
    m = tiny_lm(hidden=16)
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


def test_quantized_artifact_decodes_to_fake_quantized_model(tiny_lm):
    m = tiny_lm()
    back = decode(export_bytes(m, "q8")[0])
    fake_quantize_(m)
    tokens = torch.randint(0, 60, (5, 2))
    torch.testing.assert_close(back(tokens)[0], m(tokens)[0])


def test_tied_weights_stored_once(tiny_lm):
    m = tiny_lm(tie_weights=True)
    untied = tiny_lm()
    assert artifact_size(m) < artifact_size(untied) - 4 * 60 * 8 + 100
    back = decode(export_bytes(m)[0])
    assert back.decoder.weight is back.embedding.weight


@pytest.mark.parametrize("quant", ["q8", "q8c", "q4", "q2"])
def test_a_scale_that_is_not_finite_or_out_of_order_is_refused(quant):
    torch.manual_seed(0)
    entry, parts = encode_tensor(torch.randn(6, 10), quant, allow_sparse=False, axis=0)
    good = parts[":scale"]
    torch.testing.assert_close(decode_tensor(entry, parts), decode_tensor(entry, {**parts}))
    for bad_value in (float("nan"), float("inf")):
        scale = good.clone()
        scale[0, 0] = bad_value
        with pytest.raises(ModelFileError, match="not finite"):
            decode_tensor(entry, {**parts, ":scale": scale}, "w")
    # the second row is a step (q8, q8c) or a row's high end (2-4 bits): negative, or below the low end
    scale = good.clone()
    scale[1] = -scale[1].abs() - 1 if quant.startswith("q8") else scale[0] - 1
    with pytest.raises(ModelFileError, match="negative step|exceeds"):
        decode_tensor(entry, {**parts, ":scale": scale}, "w")


@settings(max_examples=80, deadline=None)
@example(shape=[1, 3, 1], axis=0, scale=1e-5, steps=13, quant="q4", seed=33)  # each failed before
@example(shape=[2, 1, 2], axis=0, scale=3e-8, steps=15, quant="q2", seed=48)
@example(shape=[3, 1, 3], axis=0, scale=1e-7, steps=16, quant="q3", seed=30)
@example(shape=[2, 2, 1], axis=2, scale=1.0, steps=8, quant="q3", seed=25)
@given(shape=st.lists(st.sampled_from([1, 1, 2, 3, 16]), min_size=1, max_size=4), axis=st.integers(0, 3),
       scale=st.sampled_from(SCALES), steps=st.integers(1, 16), quant=st.sampled_from(["q2", "q3", "q4"]),
       seed=st.integers(0, 1000))
def test_low_bit_requantization_of_a_decoded_tensor_stores_it_again_bit_for_bit(shape, axis, scale, steps, quant, seed):
    # a row whose range spans a few float16 steps (tiny, or near-constant) missed its end levels: its decoded
    # values requantized to another range, other codes and other weights
    axis %= len(shape)
    entry, parts = encode_tensor(mixed_rows(shape, axis, scale, steps, seed), quant, axis=axis)
    decoded = decode_tensor(entry, parts)
    again, again_parts = encode_tensor(decoded, quant, axis=axis)
    assert again == entry and again_parts.keys() == parts.keys()
    for suffix, part in parts.items():
        assert torch.equal(again_parts[suffix], part), suffix
    assert torch.equal(decode_tensor(again, again_parts), decoded)


@pytest.mark.parametrize("quant", ["q2", "q4"])
def test_a_low_bit_artifact_of_its_own_decoded_model_is_the_same_bytes(quant, tiny_lm):
    # weights at every scale of SCALES, each with constant and near-constant rows: the second export differed
    m = tiny_lm(hidden=16)
    with torch.no_grad():
        for i, p in enumerate(p for p in m.parameters() if p.dim() >= 2):
            p.mul_(SCALES[i % len(SCALES)])
            p[:2].fill_(0.25 * SCALES[i % len(SCALES)])  # a constant row
            p[2:4].mul_(0.05).add_(3 * SCALES[i % len(SCALES)])  # two near-constant rows
    data = export_bytes(m, quant)[0]
    assert export_bytes(decode(data), quant)[0] == data


W = "lstm.layers.0.input_map.weight"


def _artifact(quant: str | None, tiny_lm, edit) -> bytes:
    """A ``tiny_lm`` artifact at ``quant`` (its decoder pruned: stored sparse), its table and tensors edited by
    ``edit(table, tensors)`` and written again, validly signed."""
    m = tiny_lm()
    prune_model(m, 0.9, ("decoder",))
    f = modelfile.loads(export_bytes(finalize(m), quant)[0])
    meta, tensors = copy.deepcopy(f.meta), dict(f.tensors)
    edit(meta["tensors"], tensors)
    return modelfile.dumps(f.kind, meta, tensors)


def _set(tensors: dict, key: str, value) -> None:
    tensors[key] = value(tensors[key]) if callable(value) else value


@pytest.mark.parametrize("quant, edit, message", [
    (None, lambda e, t: t.pop("decoder.bias"), "tensor 'decoder.bias' is missing"),
    (None, lambda e, t: _set(t, "decoder.bias", lambda b: b.half()),
     "tensor 'decoder.bias' is torch.float16 (60,), expected torch.float32 (60,)"),
    ("q8", lambda e, t: t.pop(W + ":scale"), f"tensor '{W}' (part ':scale') is missing"),
    ("q8", lambda e, t: _set(t, W + ":scale", lambda s: s * torch.tensor([[1.0], [-1.0]])),
     f"tensor '{W}' (part ':scale'): a scale that is not finite, or a negative step"),
    ("q4", lambda e, t: _set(t, W + ":codes", lambda c: c.view(torch.int8)),
     f"tensor '{W}' (part ':codes') is torch.int8 (128,), expected torch.uint8 (128,)"),
    ("q4", lambda e, t: _set(t, W + ":scale", lambda s: s.fill_(float("nan"))),
     f"tensor '{W}' (part ':scale'): a row range that is not finite"),
    ("q4", lambda e, t: e[W].update(axis=2), f"tensor '{W}': encoding 'q4' needs a dense tensor and a row axis"),
    ("q4", lambda e, t: e[W].update(codec="q5"), f"tensor '{W}': unknown encoding 'q5'"),
    (None, lambda e, t: e["decoder.weight"].update(nnz=e["decoder.weight"]["nnz"] + 1),
     "tensor 'decoder.weight' (part ':mask'): the sparse mask of"),
    (None, lambda e, t: t.pop("decoder.weight:values"), "tensor 'decoder.weight' (part ':values') is missing"),
    ("q8", lambda e, t: t.pop("decoder.weight:codes"), "tensor 'decoder.weight' (part ':codes') is missing"),
    # a part that some encoding writes, but not the entry's: each was ignored
    ("q8", lambda e, t: _set(t, W + ":mask", torch.full((4,), 255, dtype=torch.uint8)),
     f"tensor '{W}' (part ':mask'): '{W}:mask' is not read by its encoding (q8)"),
    ("q4", lambda e, t: _set(t, W + ":values", torch.zeros(3)),
     f"tensor '{W}' (part ':values'): '{W}:values' is not read by its encoding (q4)"),
    (None, lambda e, t: _set(t, W + ":scale", torch.ones(2, 1)),
     f"tensor '{W}' (part ':scale'): '{W}:scale' is not read by its encoding (f32)"),
    (None, lambda e, t: _set(t, "decoder.weight", torch.zeros(60, 16)),
     "tensor 'decoder.weight' (part ''): 'decoder.weight' is not read by its encoding (sparse f32)"),
    ("q8", lambda e, t: _set(t, "decoder.weight:values", torch.zeros(3)),
     "tensor 'decoder.weight' (part ':values'): 'decoder.weight:values' is not read by its encoding (sparse q8)"),
])
def test_a_decode_error_names_the_tensor_and_its_part(quant, edit, message, tiny_lm):
    # each named the part's suffix alone (tensor ':scale', tensor ''), or no tensor at all
    with pytest.raises(ModelFileError, match=re.escape(f"crafted: {message}")):
        decode(_artifact(quant, tiny_lm, edit), "crafted")
