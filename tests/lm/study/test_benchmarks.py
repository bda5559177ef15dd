"""The training benchmarks run end to end on tiny_awd with PTB cut short (``short_corpus``): the
speed of a preset's steps, and the students compressed from a teacher checkpoint."""

import json
import math

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
