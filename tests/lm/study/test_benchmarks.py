"""The training benchmarks run end to end on tiny_awd with PTB cut short (``short_corpus``): the
speed of a preset's steps, and the students compressed from a teacher checkpoint."""

import json
import math

import pytest
import torch

from lm.benchmarks import students, train_speed
from lm.checkpoint import save_model
from lm.config import preset
from lm.train import build_model


def test_train_steps_trains_as_lm_train_steps(short_corpus):
    cfg = preset("tiny_awd", hidden_size=16)
    model = build_model(cfg, short_corpus.vocab)
    before = [p.detach().clone() for p in model.parameters()]
    data = train_speed.batchify(short_corpus.train[: 2 * cfg.bptt * cfg.batch_size + cfg.batch_size], cfg.batch_size)
    seconds = train_speed.train_steps(model, cfg, data)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every weight trained
    assert train_speed.epoch_tokens(cfg, short_corpus) == (4000 // cfg.batch_size - 1) * cfg.batch_size


def test_the_students_benchmark_scores_and_times_every_student_of_the_study(short_corpus, tmp_path):
    teacher = build_model(preset("tiny_awd"), short_corpus.vocab)  # the study's student shapes fit its 64 units
    save_model(teacher, tmp_path / "model.safetensors")
    out = tmp_path / "bench.json"
    payload = students.main(["--preset", "tiny_awd", "--checkpoint", str(tmp_path / "model.safetensors"),
                             "--steps", "1", "--valid-tokens", "200", "--out", str(out)])
    names = [r["model"] for r in payload["rows"]]
    assert names[0] == "teacher" and names[1:] == [m.name for m, _ in students.student_methods("tiny_awd")]
    assert any(n.endswith("_qat2") for n in names) and json.loads(out.read_text())["rows"] == payload["rows"]
    assert all(math.isfinite(r["valid_ppl_start"]) and r["ms_per_step"] > 0 for r in payload["rows"])
    assert payload["students_hours"] == sum(r["hours"] for r in payload["rows"][1:]) and payload["commit"]


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
