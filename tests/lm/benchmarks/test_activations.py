"""lm.benchmarks.activations end to end on a tiny_awd model with PTB cut short (``short_corpus``)."""

import json

import pytest

from lm.config import preset
from lm.train import build_model


def test_the_activations_benchmark_scores_float_and_int8_inputs_on_the_same_codes(short_corpus, tmp_path):
    pytest.importorskip("onnxruntime")
    from lm.benchmarks import activations
    from lm.compression.export import export

    model = build_model(preset("tiny_awd", hidden_size=32), short_corpus.vocab).eval()
    q4 = export(model, tmp_path / "q4.safetensors", quant="q4").path
    q8 = export(model, tmp_path / "q8.safetensors", quant="q8").path
    with pytest.raises(ValueError, match="holds no 2-, 3- or 4-bit weights: pass --requantize"):
        activations.main([str(q8), "--tokens", "40", "--out", str(tmp_path / "x")])
    payload = activations.main([str(q4), "--tokens", "40", "--repeats", "1", "--latency-tokens", "3",
                                "--out", str(tmp_path / "act")])
    (r,) = payload["rows"]
    assert (r["bits"], r["requantized"], payload["config"]["tokens"]) == (4, False, 40)
    # ORT on float inputs computes the exported model; int8 inputs approximate it
    assert r["float32_ppl"] == pytest.approx(r["torch_ppl"], rel=1e-4)
    assert r["int8_ppl"] == pytest.approx(r["float32_ppl"], rel=0.05) and r["int8_ms"] > 0
    assert json.loads((tmp_path / "act.json").read_text())["rows"] == payload["rows"]
    requantized, bits, flagged = activations.low_bit_model(str(q8), 3)  # an 8-bit model put on 3-bit grids
    assert (bits, flagged) == (3, True)
    for w in requantized.state_dict().values():
        if w.dim() == 2:  # at most 8 values per row
            assert max(len(row.unique()) for row in w) <= 8
