"""lm.study.latency: onnxruntime timed beside eager torch and torch.ao, and the report's columns."""

import pytest
import torch

from lm.compression.surgery import compress_model
from lm.config import ModelConfig
from lm.model import LanguageModel


def test_latency_compare_times_onnxruntime_beside_torch_and_the_report_shows_it():
    pytest.importorskip("onnxruntime")
    from lm.study.latency import compare
    from lm.study.report import markdown

    torch.manual_seed(0)
    vocab = ["<unk>", "<eos>"] + [f"w{i}" for i in range(58)]  # the runtime reads words
    model = LanguageModel(ModelConfig(vocab_size=60, hidden_size=12, num_layers=2, tie_weights=False), vocab)
    model = compress_model(model.eval(), embedding={"type": "tt", "rank": 3}, lstm={"type": "tt_lstm", "rank": 3},
                           decoder={"type": "low_rank", "rank": 4}).eval()
    t = compare({"tt": model}, tokens=3, repeats=1, onnx=True)["tt"]
    assert all(t[k] > 0 for k in ("eager_ms", "int8_ms", "ort_ms", "ort_int8_ms", "onnx_bytes", "onnx_int8_bytes"))
    row = {"name": "tt", "label": "tt", "family": "TT", "description": "d", "size_mb": 0.01, "test_ppl": 50.0,
           "valid_ppl": 50.0, "parameters": 1, "nonzero": 1, **t}
    page = markdown({"rows": [row], "preset": "tiny", "commit": "abc", "date": "today", "seed": 1, "eval": "exact",
                     "plot": "p.png", "targets": []})
    assert "ms/token ORT int8 | ONNX int8 MB |" in page
    assert f"| {t['ort_ms']:.3f} | {t['ort_int8_ms']:.3f} | {t['onnx_int8_bytes'] / 1e6:.3f} |" in page
