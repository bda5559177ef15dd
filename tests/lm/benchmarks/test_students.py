"""lm.benchmarks.students end to end on tiny_awd with PTB cut short (``short_corpus``)."""

import json
import math

from lm.benchmarks import students
from lm.checkpoint import save_model
from lm.config import preset
from lm.train import build_model


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
