"""Per-token latency: the step loop carries the state, the eager and runtime timers feed the same
token ids, and ``compare`` returns one row per model with the columns it promises (the onnxruntime
columns are timed beside them, and the report shows them)."""

import pytest
import torch
from torch import nn

from lm.compression.surgery import compress_model
from lm.config import ModelConfig
from lm.model import LanguageModel
from lm.study.latency import compare, runtime_latency, token_latency


class Recorder(nn.Module):
    """A stand-in model that records its inputs and checks that each call gets the last state."""

    def __init__(self, vocab_size: int = 30):
        super().__init__()
        self.config = type("Config", (), {"vocab_size": vocab_size})()
        self.ids, self.states = [], []

    def forward(self, ids, state=None):
        assert ids.shape == (1, 1) and state == (len(self.ids) or None)
        self.ids.append(int(ids))
        return torch.zeros(1, 1, self.config.vocab_size), len(self.ids)


class Runtime:
    def __init__(self):
        self.ids = []

    def initial_state(self, batch):
        assert batch == 1
        return 0

    def step(self, ids, state):
        assert ids.shape == (1,) and state == len(self.ids)
        self.ids.append(int(ids[0]))
        return None, state + 1


def test_token_latency_steps_warmup_plus_tokens_times_in_eval_mode_with_the_runtime_s_ids():
    model = Recorder().train()
    seconds = token_latency(model, tokens=7, warmup=3)
    assert seconds > 0 and not model.training and len(model.ids) == 10
    run = Runtime()
    assert runtime_latency(run, 30, tokens=7, warmup=3) > 0
    assert run.ids == model.ids and all(0 <= i < 30 for i in run.ids)


def test_compare_gives_every_model_its_eager_and_int8_times_and_restores_the_threads(tiny_lm):
    threads = torch.get_num_threads()
    models = {"dense": tiny_lm(vocab=40, hidden=16), "tied": tiny_lm(vocab=40, hidden=16, tie_weights=True)}
    rows = compare(models, tokens=3, repeats=2, threads=1)
    assert list(rows) == ["dense", "tied"]
    for row in rows.values():
        assert set(row) == {"eager_ms", "int8_ms"}
        assert all(isinstance(v, float) and 0 < v < 1e4 for v in row.values())
    assert torch.get_num_threads() == threads


def test_compare_restores_the_threads_when_a_model_fails():
    class Broken(Recorder):
        def forward(self, ids, state=None):
            raise RuntimeError("broken")

    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="broken"):
        compare({"broken": Broken()}, tokens=1, repeats=1, threads=threads + 1)
    assert torch.get_num_threads() == threads


def test_latency_compare_times_onnxruntime_beside_torch_and_the_report_shows_it():
    pytest.importorskip("onnxruntime")
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


def test_compare_exports_the_tt_layers_of_the_models_it_is_told_by_that_route():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    vocab = ["<unk>", "<eos>"] + [f"w{i}" for i in range(58)]
    model = LanguageModel(ModelConfig(vocab_size=60, hidden_size=64, num_layers=1, tie_weights=False), vocab)
    model = compress_model(model.eval(), lstm={"type": "tt_lstm", "rank": 2}).eval()
    t = compare({"load": model, "dense": model}, tokens=2, repeats=1, onnx=True, tt={"dense": "dense"})
    # the default route stores the TT cores, the dense one the built weights (64 x 256 twice)
    assert t["dense"]["onnx_bytes"] - t["load"]["onnx_bytes"] > 2 * 64 * 256 * 4 * 0.8


def test_retime_times_every_row_again_on_its_rebuilt_architecture():
    pytest.importorskip("onnxruntime")
    from dataclasses import asdict

    from lm.study.latency import COLUMNS, retime

    torch.manual_seed(0)
    dense = LanguageModel(ModelConfig(vocab_size=60, hidden_size=12, num_layers=2, tie_weights=False))
    tt = compress_model(dense, embedding={"type": "tt", "rank": 3}, lstm={"type": "tt_lstm", "rank": 3},
                        decoder={"type": "low_rank", "rank": 4})
    rows = [{"name": "dense", "config": asdict(dense.config), "test_ppl": 50.0, "eager_ms": -1.0, "ort_nbits_ms": -1.0},
            {"name": "tt", "config": asdict(tt.config), "test_ppl": 60.0}]
    timed = retime(rows, tokens=2)
    assert timed["on"].startswith("each row's architecture")
    for r in rows:  # every column measured in this run, stale ones gone, the rest of the row kept
        assert {k for k in r if k in COLUMNS} == {"eager_ms", "int8_ms", "ort_ms", "ort_int8_ms", "onnx_bytes",
                                                   "onnx_int8_bytes"}
        assert all(r[k] > 0 for k in COLUMNS if k in r)
    assert rows[0]["test_ppl"] == 50.0 and rows[1]["onnx_bytes"] != rows[0]["onnx_bytes"]  # each its own architecture


def test_nbits_width_reads_a_rows_encodings():
    from lm.study.latency import nbits_width

    def row(*codecs, **config):
        return {"encodings": {f"w{i}": c for i, c in enumerate(codecs)}, "config": config}

    assert nbits_width(row("q2", "q2", "f32")) == 2 and nbits_width(row("q4", "f32")) == 4  # biases stay float
    assert nbits_width(row("q3", "f32")) == 3  # in 4-bit containers
    assert nbits_width(row("q8", "f32")) is None and nbits_width(row("f32")) is None and nbits_width({}) is None
    assert nbits_width(row("q2", "q4")) is None  # two widths: no single export
    assert nbits_width(row("q4", embedding={"type": "groupreduce"})) is None  # not exported n-bit
    assert nbits_width(row("q4", embedding={"type": "dense"}, decoder={"type": "low_rank"})) == 4


@pytest.mark.slow  # three exports of a model (float32, int8, n-bit): 15-40 s
def test_retime_times_a_2_or_4_bit_row_packed_on_its_weights_put_on_their_grids(tmp_path):
    pytest.importorskip("onnxruntime")
    from dataclasses import asdict

    from lm.compression.export import export
    from lm.study.latency import retime

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=60, hidden_size=16, num_layers=1, tie_weights=True)).eval()
    row = {"name": "q4", "config": asdict(model.config), "encodings": export(model, tmp_path / "a", "q4").encodings}
    retime([row], tokens=2)  # fresh weights: not on a grid until put there, or the n-bit export refuses them
    assert row["onnx_nbits_bytes"] > 0 and row["ort_nbits_ms"] > 0 and row["ort_nbits_int8act_ms"] > 0


def test_the_report_shows_the_n_bit_columns_where_a_row_has_them():
    from lm.study.report import markdown

    def row(name, **columns):
        return {"name": name, "label": name, "family": "f", "description": "d", "size_mb": 0.5, "test_ppl": 50.0,
                "valid_ppl": 50.0, "parameters": 1, "nonzero": 1, "onnx_int8_bytes": 600_000, **columns}

    q4 = row("q4", ort_nbits_ms=0.125, onnx_nbits_bytes=550_000, ort_nbits_int8act_ms=0.0625, test_ppl_int8act=50.25)
    q8 = row("q8")
    page = markdown({"rows": [q4, q8], "preset": "tiny", "commit": "abc", "date": "today", "seed": 1, "eval": "exact",
                     "plot": "p.png", "targets": []})
    assert ("| ONNX int8 MB | ms/token ORT n-bit | ONNX n-bit MB | ms/token ORT n-bit int8-act "
            "| test PPL ORT n-bit int8-act |") in page
    assert "ORT n-bit;" in page and "ORT n-bit int8-act." in page
    assert next(line for line in page.splitlines() if line.startswith("| q4 |")).endswith(
        "| 0.600 | 0.125 | 0.550 | 0.062 | 50.25 |")
    assert next(line for line in page.splitlines() if line.startswith("| q8 |")).endswith("| 0.600 | - | - | - | - |")
    assert "n-bit" not in markdown({"rows": [q8], "preset": "tiny", "commit": "abc", "date": "today", "seed": 1,
                                    "eval": "exact", "plot": "p.png", "targets": []})
