"""lm.benchmarks.latency_floor: the bytes a step reads, counted by hand, and the benchmark end to end on tiny."""

import json

import pytest

from lm.benchmarks import latency_floor
from lm.config import PRESETS
from lm.model import LanguageModel


def model(name: str) -> LanguageModel:
    return LanguageModel(PRESETS[name].model, [f"w{i}" for i in range(PRESETS[name].model.vocab_size)])


def test_a_step_reads_the_lstm_the_softmax_and_one_embedding_row():
    # tiny: 64 units, one layer, untied: gates (256, 64) twice with their biases, softmax (10000, 64) + bias, a row
    matrices, vectors = 2 * 256 * 64 + 10000 * 64 + 64, 2 * 256 + 10000
    assert latency_floor.step_bytes(model("tiny")) == {"float32": 4 * (matrices + vectors),
                                                       "int8": matrices + 4 * vectors}
    # medium_awd: tied, so the table is read whole, once, by the softmax (no row besides)
    matrices, vectors = 4 * 2600 * 650 + 10000 * 650, 4 * 2600 + 10000
    assert latency_floor.step_bytes(model("medium_awd")) == {"float32": 4 * (matrices + vectors),
                                                             "int8": matrices + 4 * vectors}


def test_the_benchmark_writes_every_storage_of_every_preset(tmp_path):
    pytest.importorskip("onnxruntime")
    payload = latency_floor.main(["--presets", "tiny", "--tokens", "3", "--repeats", "1", "--out", str(tmp_path / "f")])
    (row,) = payload["rows"]
    assert json.loads((tmp_path / "f.json").read_text())["rows"] == [row]
    for storage, reference in (("float32", "eager_ms"), ("int8", "int8_ms")):
        assert row[f"{storage}_floor_ms"] > 0
        assert row[f"{storage}_best_ratio"] == pytest.approx(row[f"{storage}_floor_ms"] / row[reference])
    table = (tmp_path / "f.md").read_text().splitlines()
    assert [line.split(" | ")[:2] for line in table if line.startswith("| tiny")] == [["| tiny", "float32"],
                                                                                    ["| tiny", "int8"]]
