"""lm.benchmarks.allocator on tiny presets with PTB cut short (``short_corpus``)."""

import json

import pytest

from lm.benchmarks import allocator
from lm.compression import qat


@pytest.mark.parametrize("step", ["tiny", "tiny_awd:lr_tied_kd", "tiny_awd:lr_tied_kd_qat2"])
def test_a_step_is_measured_in_faults_cpu_and_wall_time(step, short_corpus):
    measured = allocator.measure_step(step, steps=2)
    assert set(measured) == {"faults", "cpu_ms", "wall_ms"}
    assert measured["faults"] >= 0 and measured["cpu_ms"] > 0 and measured["wall_ms"] > 0


def test_an_unknown_method_is_refused(short_corpus):
    with pytest.raises(ValueError, match="no_such_method"):
        allocator.measure_step("tiny_awd:no_such_method", steps=1)


def test_a_training_split_too_short_for_the_steps_is_refused(short_corpus):
    with pytest.raises(ValueError, match="fewer than 6 of warm-up and 20 timed"):
        allocator.measure_step("tiny", steps=20)


def test_the_settings_alternate_and_the_report_shows_each(short_corpus, tmp_path, monkeypatch):
    order = []

    def measure(step, setting, steps, data_dir, threads):
        order.append((step, threads, setting))
        return {"faults": 10.0 if setting == "default" else 1.0, "cpu_ms": 2.0 * threads,
                "wall_ms": 3.0 if setting == "default" else 1.5}

    monkeypatch.setattr(allocator, "in_process", measure)
    payload = allocator.main(["--steps-of", "tiny", "tiny_awd", "--steps", "1", "--repeats", "2", "--threads", "1", "2",
                              "--out", str(tmp_path / "bench")])
    # each repeat measures both settings of every step and thread count, the first setting switching from repeat to
    # repeat
    first = [(s, t, setting) for s in ("tiny", "tiny_awd") for t in (1, 2) for setting in ("default", "retained")]
    assert order == first + [(s, t, setting) for s, t, setting in
                             [(s, t, x) for s in ("tiny", "tiny_awd") for t in (1, 2) for x in ("retained", "default")]]
    rows = {(r["step"], r["threads"], r["setting"]): r for r in payload["rows"]}
    assert len(rows) == 8 and rows["tiny", 2, "retained"]["wall_vs_default"] == 0.5
    assert rows["tiny", 1, "default"]["wall_vs_default"] == 1 and rows["tiny", 2, "default"]["cpu_ms"] == 4.0
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == payload["rows"]
    assert "| tiny | 2 | retained | 1 | 4.0 | 1.5 | 0.50 |" in (tmp_path / "bench.md").read_text()


def test_a_child_prints_its_measurement(short_corpus, capsys):
    assert allocator.main(["--child", "tiny", "default", "--steps", "1"]) is None
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) == {"faults", "cpu_ms", "wall_ms"}


def test_bad_counts_are_refused(capsys):
    with pytest.raises(SystemExit):
        allocator.main(["--steps", "0"])
    assert "--steps, --repeats and --threads must be >= 1" in capsys.readouterr().err


def test_a_qat_methods_step_trains_its_student_in_qat(short_corpus, monkeypatch):
    trained = []
    real = allocator.train_steps
    monkeypatch.setattr(allocator, "train_steps", lambda model, *a, **k: trained.append(model) or real(model, *a, **k))
    allocator.measure_step("tiny_awd:lr_tied_kd_qat2", steps=1)
    assert trained and all(qat.is_qat(m) for m in trained)
