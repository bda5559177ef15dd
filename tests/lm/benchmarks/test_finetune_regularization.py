"""lm.benchmarks.finetune_regularization end to end on tiny_awd with PTB cut short (``short_corpus``)."""

import json
import math

import pytest

from lm.benchmarks import finetune_regularization
from lm.checkpoint import save_model
from lm.config import preset
from lm.study.methods import load_finetune
from lm.train import build_model


def test_each_regularisation_distils_the_same_student_and_is_scored(short_corpus, tmp_path):
    teacher = build_model(preset("tiny_awd"), short_corpus.vocab)
    save_model(teacher, tmp_path / "model.safetensors")
    out = tmp_path / "bench.json"
    payload = finetune_regularization.main(["--preset", "tiny_awd", "--checkpoint", str(tmp_path / "model.safetensors"),
                                            "--steps", "3", "--lrs", "0.5", "--valid-tokens", "300", "--out", str(out)])
    rows = {r["regularization"]: r for r in payload["rows"]}
    assert list(rows) == ["preset", "finetune", "none"] and json.loads(out.read_text())["rows"] == payload["rows"]
    cfg = preset("tiny_awd")
    assert rows["preset"]["strengths"]["weight"] == cfg.weight_drop == 0.5
    assert rows["finetune"]["strengths"] == vars(load_finetune("tiny_awd").regularization)
    assert set(rows["none"]["strengths"].values()) == {0.0} and rows["none"]["weight_decay"] == cfg.weight_decay
    assert all(math.isfinite(r["valid_ppl"]) for r in rows.values()) and math.isfinite(payload["start_valid_ppl"])
    assert len({r["valid_ppl"] for r in rows.values()}) == 3  # the regularisation changed the training


def test_a_method_that_does_not_distil_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        finetune_regularization.main(["--preset", "tiny_awd", "--checkpoint", "x", "--method", "q8"])
    assert "not a method of the tiny_awd study that compresses and distils" in capsys.readouterr().err
