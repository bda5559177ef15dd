"""The compression study, end to end on a shrunken tiny preset.

PTB's streams are cut to a few thousand tokens (the ``short_corpus`` fixture) so that the many
training runs' evaluations stay cheap; everything else is the real pipeline, run through the
command line.
"""

import json
import math
import os
import re
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lm.study import pipeline
from lm.study import runner as study
from lm.__main__ import main
from lm.compression.export import artifact_size, load_artifact
from lm.compression.surgery import compress_model
from lm.compression.lowbit import dequantize_rows, quantize_rows
from lm.compression.qat import is_qat, row_axes
from lm.study.report import MB, pareto_front
from lm.config import preset
from lm.distill import Distillation
from lm.model import LanguageModel
from lm.study.methods import load_finetune, load_methods


# one method of every kind of code path: storage only, pruning (LSTM too, gradual), a base chain,
# GroupReduce, LR-LSTM (also distilled), TT layers fine-tuned and trained from scratch
SOME = ["q8", "prune_dec90", "prune_all90_gradual_ft", "groupreduce_ft_q8", "lr_all_ft", "lr_lstm_ft_kd",
        "tt_embdec_ft", "tt_lstm_scratch"]


def run_tiny_study(tmp_path, methods):
    args = ["study", "--preset", "tiny", "--set", "hidden_size=24", "--set", "epochs=1", "--scratch-epochs", "1",
            "--latency-tokens", "5", "--run-dir", str(tmp_path / "runs"), "--report-dir", str(tmp_path / "report"),
            "--quiet", "--no-onnx"]  # the onnxruntime columns: tests/test_onnx_export.py
    main(args + (["--methods", *methods] if methods else []))
    payload = json.loads((tmp_path / "report" / "study_tiny.json").read_text())
    return args, payload, {r["name"]: r for r in payload["rows"]}


@pytest.mark.slow
def test_tiny_study_every_method(tmp_path, short_corpus):
    _, payload, rows = run_tiny_study(tmp_path, None)
    # a smoke test of every code path: ten SGD steps on a 24-unit model judge no method's quality (distilling
    # lr_all_ft from this near-uniform teacher, 2,400 PPL, ends above the uniform 10,000), the real study does
    assert len(rows) == len(load_methods("tiny")) and all(1 < r["test_ppl"] < math.inf for r in rows.values())


def test_tiny_study_end_to_end_and_cached(tmp_path, short_corpus):
    args, payload, rows = run_tiny_study(tmp_path, SOME)
    assert set(rows) == {"dense", "groupreduce_ft", *SOME}
    assert payload["commit"] and payload["seed"] is not None and payload["config"]["study"]["preset"] == "tiny"
    for name, r in rows.items():
        artifact = tmp_path / "runs" / name / "artifact.safetensors"
        assert r["size_bytes"] == artifact.stat().st_size and r["size_mb"] == r["size_bytes"] / MB
        assert 1 < r["test_ppl"] < 10_000 and r["eager_ms"] > 0 and r["int8_ms"] > 0
    dense = rows["dense"]
    assert rows["q8"]["size_bytes"] < 0.27 * dense["size_bytes"]
    assert rows["prune_dec90"]["nonzero"] < dense["nonzero"] and rows["prune_all90_gradual_ft"]["nonzero"] < 0.2 * dense["nonzero"]
    assert rows["prune_dec90"]["size_bytes"] < dense["size_bytes"]
    assert abs(rows["q8"]["test_ppl"] - dense["test_ppl"]) < 0.05 * dense["test_ppl"]
    assert pareto_front(payload["rows"])[0]["size_mb"] == min(r["size_mb"] for r in payload["rows"])
    page = (tmp_path / "report" / "study_tiny.md").read_text()
    assert "117.66" in page and "| q8 |" in page and "## Targets" in page
    assert (tmp_path / "report" / "study_tiny.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "report" / "study_front.md").exists()  # the tiny preset is no model of the paper's
    # each row keeps the history of the training behind it, and the page its curves
    epochs = load_finetune("tiny").epochs
    assert [h["epoch"] for h in rows["prune_all90_gradual_ft"]["history"]["epochs"]] == list(range(1, epochs + 1))
    assert rows["dense"]["history"]["run"] == "dense" and len(rows["dense"]["history"]["epochs"]) == 1
    assert rows["tt_lstm_scratch"]["history"]["run"] == "scratch" and rows["lr_all_ft"]["history"]["run"] == "finetune"
    assert "history" not in rows["q8"] and "history" not in rows["prune_dec90"]  # stored, not trained
    assert "## Training curves" in page and "| prune_all90_gradual_ft | finetune | " in page
    assert (tmp_path / "report" / "study_tiny_curves.png").read_bytes()[:4] == b"\x89PNG"
    recipe = json.loads((tmp_path / "runs" / "lr_lstm_ft_kd" / "result.json").read_text())["recipe"]
    assert recipe["method"]["distill"] == {"alpha": 0.5, "temperature": 2.0}
    assert "distill" not in json.loads((tmp_path / "runs" / "lr_all_ft" / "result.json").read_text())["recipe"]["method"]
    # a second run reuses every finished method
    stamps = {n: (tmp_path / "runs" / n / "result.json").stat().st_mtime_ns for n in rows}
    main(args + ["--methods", "q8", "lr_all_ft"])
    assert all((tmp_path / "runs" / n / "result.json").stat().st_mtime_ns == t for n, t in stamps.items())


def test_scratch_only_study_needs_no_dense_model(tmp_path, short_corpus, monkeypatch):
    teachers = []
    monkeypatch.setattr(study, "Distillation", lambda teacher, **kw: teachers.append(teacher) or Distillation(teacher, **kw))
    _, payload, rows = run_tiny_study(tmp_path, ["lr_paper_scratch_q8", "lr_paper_kd"])  # bases trained from scratch
    assert set(rows) == {"lr_paper_scratch", "lr_paper_scratch_q8", "lr_paper_kd"}
    assert not (tmp_path / "runs" / "dense").exists()
    # lr_paper_kd fine-tunes its base with the base as the teacher
    base = load_artifact(tmp_path / "runs" / "lr_paper_scratch" / "artifact.safetensors").state_dict()
    assert len(teachers) == 1 and all(torch.equal(v, base[k]) for k, v in teachers[0].state_dict().items())
    tuned = load_artifact(tmp_path / "runs" / "lr_paper_kd" / "artifact.safetensors").state_dict()
    assert not torch.equal(tuned["embedding.weight"], base["embedding.weight"])
    assert rows["lr_paper_scratch_q8"]["size_bytes"] < rows["lr_paper_scratch"]["size_bytes"] / 3
    model = load_artifact(tmp_path / "runs" / "lr_paper_scratch" / "artifact.safetensors")
    r = model.lstm.proj_size
    # the paper's LR-LSTM: an r-dim embedding feeds the first layer, the softmax reads the r-dim projection
    assert model.config.embedding_size == r and model.embedding.weight.shape == (model.config.vocab_size, r)
    assert model.lstm.layers[0].input_map.weight.shape == (4 * model.config.hidden_size, r)
    assert model.decoder.in_features == r


def test_tt_paper_scratch_has_the_lr_paper_shape_and_its_own_learning_rate(tmp_path, short_corpus):
    _, payload, rows = run_tiny_study(tmp_path, ["tt_paper_scratch_q8", "tt_paper_ft"])
    assert set(rows) == {"tt_paper_scratch", "tt_paper_scratch_q8", "tt_paper_ft"}
    methods = {m.name: m for m in load_methods("tiny")}
    for name, default in [("tt_paper_scratch", preset("tiny").lr), ("tt_paper_ft", load_finetune("tiny").lr)]:
        history = json.loads((tmp_path / "runs" / name / "train" / "results.json").read_text())["history"]
        assert methods[name].lr != default and history[0]["lr"] == methods[name].lr
    method = methods["tt_paper_scratch"]
    model = load_artifact(tmp_path / "runs" / "tt_paper_scratch" / "artifact.safetensors")
    r, hidden = model.config.embedding_size, model.config.hidden_size
    # the TT maps were tensorised for the r-dim embedding, not for the hidden size the preset's embedding has
    assert model.embedding.weight.shape == (model.config.vocab_size, r) and r != hidden
    assert model.lstm.layers[0].input_map.in_features == r
    assert model.decoder.rank == method.compress["decoder"].rank
    out, _ = model(torch.zeros(3, 2, dtype=torch.long))
    assert out.shape == (3, 2, model.config.vocab_size)


def test_lr_tied_scratch_shares_one_table_between_embedding_and_softmax(tmp_path, short_corpus):
    _, payload, rows = run_tiny_study(tmp_path, ["lr_tied_scratch_q8", "lr_tied_ft_q8", "lr_paper_scratch"])
    for name in ("lr_tied_scratch", "lr_tied_ft", "lr_tied_ft_q8"):  # fine-tuning and 8 bits keep the tie
        model = load_artifact(tmp_path / "runs" / name / "artifact.safetensors")
        assert model.config.tie_weights and model.decoder.weight is model.embedding.weight
    model = load_artifact(tmp_path / "runs" / "lr_tied_scratch" / "artifact.safetensors")
    r, vocab = model.config.embedding_size, model.config.vocab_size
    assert model.embedding.weight.shape == (vocab, r) and model.decoder.in_features == model.lstm.proj_size == r
    # the table counted and stored once: one vocab x r table fewer than the untied paper model
    assert rows["lr_paper_scratch"]["parameters"] - rows["lr_tied_scratch"]["parameters"] == vocab * r
    assert rows["lr_tied_scratch"]["size_bytes"] < rows["lr_paper_scratch"]["size_bytes"] - 4 * vocab * r + 1000
    # about 3 of every parameter's 4 bytes saved in 8 bits, the shared table included
    saved = rows["lr_tied_scratch"]["size_bytes"] - rows["lr_tied_scratch_q8"]["size_bytes"]
    assert saved > 2.9 * rows["lr_tied_scratch"]["parameters"]


def test_medium_tt_paper_scratch_stops_after_the_first_epoch_below_one_percent_of_its_lr():
    cfg = preset("medium")
    methods = {m.name: m for m in load_methods("medium")}
    tt = methods["tt_paper_scratch"]
    rates = [replace(cfg, lr=tt.lr).lr_at(epoch) for epoch in range(cfg.epochs)]
    assert tt.epochs == next(epoch + 1 for epoch, lr in enumerate(rates) if lr < tt.lr / 100) < cfg.epochs
    assert methods["lr_tied_scratch"].epochs < cfg.epochs  # cut for the CPU budget (docs/study.md)
    assert all(m.epochs is None for m in methods.values() if m.name not in ("tt_paper_scratch", "lr_tied_scratch"))
    assert all(m.epochs is None for m in load_methods("small"))  # the small study keeps its recipes


def test_a_methods_epochs_set_the_length_of_its_training(tmp_path, short_corpus, monkeypatch):
    shipped = study.load_methods
    monkeypatch.setattr(study, "load_methods", lambda preset: [
        replace(m, epochs=1) if m.name == "lr_lstm_scratch" else m for m in shipped(preset)])
    main(["study", "--preset", "tiny", "--set", "hidden_size=24", "--set", "epochs=2", "--latency-tokens", "5",
          "--run-dir", str(tmp_path / "runs"), "--report-dir", str(tmp_path / "report"), "--quiet",
          "--methods", "lr_lstm_scratch"])
    trained = json.loads((tmp_path / "runs" / "lr_lstm_scratch" / "train" / "results.json").read_text())
    assert trained["config"]["epochs"] == 1 and len(trained["history"]) == 1  # the preset says 2


def test_save_every_reaches_every_training_run(tmp_path, short_corpus, monkeypatch):
    seen = []

    def spy(real):
        def train(*args, **kwargs):
            seen.append(kwargs.get("save_every"))
            return real(*args, **kwargs)
        return train

    monkeypatch.setattr(study, "train", spy(study.train))
    monkeypatch.setattr(pipeline, "train", spy(pipeline.train))
    main(["study", "--preset", "tiny", "--set", "hidden_size=24", "--set", "epochs=1", "--latency-tokens", "5",
          "--run-dir", str(tmp_path / "runs"), "--report-dir", str(tmp_path / "report"), "--quiet", "--no-onnx",
          "--save-every", "0.5", "--methods", "lr_lstm_ft", "lr_lstm_scratch"])
    assert seen == [0.5, 0.5, 0.5]  # the dense model, the fine-tune and the from-scratch run


def test_device_reaches_every_training_run_and_every_score(tmp_path, short_corpus, monkeypatch):
    trained, scored = [], []

    def spy_train(real):
        def train(*args, **kwargs):
            trained.append(kwargs.get("device"))
            return real(*args, **kwargs)
        return train

    def spy_perplexity(model, stream, *args, **kwargs):
        scored.append(next(model.parameters()).device.type)
        return real_perplexity(model, stream, *args, **kwargs)

    real_perplexity = pipeline.perplexity
    monkeypatch.setattr(study, "train", spy_train(study.train))
    monkeypatch.setattr(pipeline, "train", spy_train(pipeline.train))
    monkeypatch.setattr(pipeline, "perplexity", spy_perplexity)
    main(["study", "--preset", "tiny", "--set", "hidden_size=24", "--set", "epochs=1", "--latency-tokens", "5",
          "--run-dir", str(tmp_path / "runs"), "--report-dir", str(tmp_path / "report"), "--quiet", "--no-onnx",
          "--device", "cpu", "--methods", "lr_lstm_ft", "lr_lstm_scratch"])
    assert trained == ["cpu", "cpu", "cpu"]  # the dense model, the fine-tune and the from-scratch run
    assert scored == ["cpu"] * 6  # valid and test of each row


def test_no_report_runs_the_methods_and_a_later_run_reports_them(tmp_path, short_corpus, capsys):
    args = ["study", "--preset", "tiny", "--set", "hidden_size=24", "--set", "epochs=1", "--latency-tokens", "5",
            "--run-dir", str(tmp_path / "runs"), "--report-dir", str(tmp_path / "report"), "--quiet", "--no-onnx",
            "--methods", "q8", "lr_lstm_ft"]
    main(args + ["--no-report"])
    assert "no report" in capsys.readouterr().out and not (tmp_path / "report").exists()
    done = {p.parent.name for p in (tmp_path / "runs").glob("*/result.json")}
    assert done == {"dense", "q8", "lr_lstm_ft"}
    stamps = {n: (tmp_path / "runs" / n / "result.json").stat().st_mtime_ns for n in done}
    main(args)  # on another machine, say: every row cached, timed and reported
    rows = {r["name"] for r in json.loads((tmp_path / "report" / "study_tiny.json").read_text())["rows"]}
    assert rows == done
    assert stamps == {n: (tmp_path / "runs" / n / "result.json").stat().st_mtime_ns for n in done}


DEVICE = os.environ.get("TTLAYERS_TEST_DEVICE", "cuda")  # as tests/project/test_cuda.py


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA")
def test_a_study_trains_and_scores_on_the_device_and_a_cpu_run_reports_it(tmp_path, short_corpus):
    # a distillation and a QAT run (benchmarks/device_study.sh's kinds), trained on the device, exported on the CPU
    methods = ["lr_lstm_ft_kd", "lr_tied_ft_qat2"]
    args = ["study", "--preset", "tiny", "--set", "hidden_size=24", "--set", "epochs=1", "--latency-tokens", "2",
            "--run-dir", str(tmp_path / "runs"), "--report-dir", str(tmp_path / "report"), "--quiet", "--no-onnx",
            "--methods", *methods]
    main(args + ["--device", DEVICE, "--no-report"])
    for name in methods:
        trained = json.loads((tmp_path / "runs" / name / "train" / "results.json").read_text())
        assert trained["device"].split(":")[0] == DEVICE.split(":")[0]
    main(args)
    rows = {r["name"]: r for r in json.loads((tmp_path / "report" / "study_tiny.json").read_text())["rows"]}
    assert set(methods) <= set(rows) and all(1 < rows[n]["test_ppl"] < math.inf for n in methods)
    assert set(rows["lr_tied_ft_qat2"]["encodings"].values()) >= {"q2"}


def test_qat_methods_fine_tune_at_low_bits_and_store_their_packed_codes(tmp_path, short_corpus, monkeypatch):
    names = ["lr_tied_ft_qat2", "lr_tied_ft_q2"]  # TT cores and every other map type: tests/lm/compression/test_qat.py
    told = {}

    def compare(models, nbits=None, **kwargs):
        told.update(nbits)
        return real(models, nbits=nbits, **kwargs)

    def train(cfg, out_dir, **kwargs):
        trained_in_qat[Path(out_dir).parent.name] = is_qat(kwargs["model"])
        return real_train(cfg, out_dir, **kwargs)

    real, real_train, trained_in_qat = study.compare, pipeline.train, {}
    monkeypatch.setattr(study, "compare", compare)
    monkeypatch.setattr(pipeline, "train", train)
    _, payload, rows = run_tiny_study(tmp_path, names)
    assert told == {"lr_tied_ft_qat2": 2, "lr_tied_ft_q2": 2}  # exported packed too where onnx runs (not here)
    assert trained_in_qat == {"lr_tied_ft": False, "lr_tied_ft_qat2": True}  # q2 only stores lr_tied_ft in 2 bits
    for name, bits in zip(names, (2, 2)):
        model = load_artifact(tmp_path / "runs" / name / "artifact.safetensors")
        axes = row_axes(model)
        assert {rows[name]["encodings"][n] for n in axes if n in rows[name]["encodings"]} == {f"q{bits}"}
        for key, axis in axes.items():  # the decoded weights lie on their rows' 2**bits levels
            w = model.state_dict()[key]
            assert torch.equal(dequantize_rows(*quantize_rows(w, bits, axis), bits, axis), w)
            assert max(r.unique().numel() for r in w.movedim(axis, 0)) <= 2**bits
        assert 1 < rows[name]["test_ppl"] < 10_000
    embedding = rows["lr_tied_ft_qat2"]["config"]["embedding_size"] * 10_000  # the tied table's numbers
    result = json.loads((tmp_path / "runs" / "lr_tied_ft_qat2" / "result.json").read_text())
    assert result["tensor_bytes"]["embedding.weight"] == embedding * 2 // 8 + 4 * 10_000  # codes and float16 ranges
    recipe = result["recipe"]
    assert recipe["method"]["qat_bits"] == 2 and recipe["method"]["quant"] == "q2"
    # methods without the field keep the cache keys they had before it existed
    base = json.loads((tmp_path / "runs" / "lr_tied_ft" / "result.json").read_text())
    assert "qat_bits" not in base["recipe"]["method"]
    qat_trained = json.loads((tmp_path / "runs" / "lr_tied_ft_qat2" / "train" / "results.json").read_text())
    assert qat_trained["config"]["epochs"] == load_finetune("tiny").epochs


def test_the_awd_study_distils_every_student_from_the_teacher_and_trains_it_regularised(tmp_path, short_corpus,
                                                                                      monkeypatch):
    # medium_awd's rows on tiny_awd (32 units, one epoch each): the teacher stored 3 ways, and every student's
    # compressed from the teacher and distilled -> QAT 4/3/2 chain; teacher = "dense" gives the QAT runs the dense
    # model, not their base
    teachers = {}
    real = study.Distillation

    def spy(teacher, **kwargs):
        teachers[len(teachers)] = teacher.config
        return real(teacher, **kwargs)

    monkeypatch.setattr(study, "Distillation", spy)
    main(["study", "--preset", "tiny_awd", "--set", "hidden_size=32", "--set", "epochs=1",
          "--latency-tokens", "2", "--run-dir", str(tmp_path / "runs"), "--report-dir", str(tmp_path / "report"),
          "--quiet", "--no-onnx"])
    rows = {r["name"]: r for r in json.loads((tmp_path / "report" / "study_tiny_awd.json").read_text())["rows"]}
    methods = load_methods("tiny_awd")
    assert [m.name for m in methods] == list(rows) and all(1 < r["test_ppl"] < math.inf for r in rows.values())
    assert [m.name for m in methods] == [m.name for m in load_methods("medium_awd")]  # the same rows as medium_awd
    dense = rows["dense"]["config"]
    kd = [m for m in methods if m.distill]
    assert len(teachers) == len(kd) == 14 and all(c == study.ModelConfig(**dense) for c in teachers.values())
    for m in kd:
        trained = json.loads((tmp_path / "runs" / m.name / "train" / "results.json").read_text())["config"]
        # the preset's regularisers at [finetune]'s strengths (the preset's own: weight drop 0.5, input 0.4)
        assert (trained["weight_drop"], trained["dropout_input"], trained["dropout_output"], trained["ar"]) == (
            0.1, 0.1, 0.1, 2.0)
        assert json.loads((tmp_path / "runs" / m.name / "result.json").read_text())["recipe"]["method"]["distill"] == {
            "alpha": 0.5, "temperature": 2.0, "teacher": "dense"}
        if m.qat_bits:
            assert set(rows[m.name]["encodings"].values()) >= {f"q{m.qat_bits}"}
        assert trained["epochs"] == (m.epochs or load_finetune("tiny_awd").epochs) == (1 if m.qat_bits else 2)
    assert rows["q4"]["size_bytes"] < rows["q8"]["size_bytes"] < rows["dense"]["size_bytes"]
    # the students are the teacher compressed: the tied LR-LSTMs keep the tie through their narrowed tables
    assert rows["dense"]["config"]["tie_weights"] and not rows["gr_kd"]["config"]["tie_weights"]
    for name, rank in (("lr_tied_small_kd", 11), ("lr_tied_kd", 13)):
        c = rows[name]["config"]
        assert c["tie_weights"] and c["embedding_size"] == rank and c["lstm"] == {"type": "lr_lstm", "rank": rank}
    assert rows["tt_kd"]["config"]["embedding_size"] == 13 and rows["tt_kd"]["config"]["lstm"]["type"] == "tt_lstm"
    assert len(list((tmp_path / "runs" / "teacher_outputs").iterdir())) == 1  # the teacher ran once for all 14
    for m in kd:  # the curve of each distillation and QAT run, as its run recorded it
        trained = json.loads((tmp_path / "runs" / m.name / "train" / "results.json").read_text())["history"]
        assert [h["valid_ppl"] for h in rows[m.name]["history"]["epochs"]] == [h["valid_ppl"] for h in trained]
    # a row is its recipe's and the seed's: tt_kd run alone (the study's two-core recipe: one process a method)
    # scores what it scored after the methods before it (their dropout masks) in one process
    main(["study", "--preset", "tiny_awd", "--set", "hidden_size=32", "--set", "epochs=1", "--methods", "tt_kd",
          "--run-dir", str(tmp_path / "alone"), "--quiet", "--no-onnx", "--no-report"])
    alone = json.loads((tmp_path / "alone" / "tt_kd" / "result.json").read_text())
    assert (alone["valid_ppl"], alone["test_ppl"]) == (rows["tt_kd"]["valid_ppl"], rows["tt_kd"]["test_ppl"])


def test_the_dense_rows_history_keeps_where_its_run_was_continued(tmp_path, corpus):
    history = [{"epoch": e, "lr": 1.0, "train_ppl": 90.0, "valid_ppl": 100.0 - e, "tokens_per_s": 1.0,
                **({"continued_from": "ab" * 32} if e == 2 else {})} for e in (1, 2, 3)]
    (tmp_path / "results.json").write_text(json.dumps({"history": history}))
    s = study.Study(study.StudyConfig(preset="tiny", checkpoint=str(tmp_path / "model.safetensors"), progress=False))
    epochs = s.history(s.methods[0])["epochs"]
    assert [e.get("continued_from") for e in epochs] == [None, "ab" * 32, None]


def test_a_low_bit_row_run_without_onnx_gains_its_int8_activation_perplexity_in_a_run_with_it(tmp_path, short_corpus):
    # the students train with --no-onnx, side by side; the study run that reports them scores their n-bit exports
    pytest.importorskip("onnxruntime")
    args = ["study", "--preset", "tiny_awd", "--set", "hidden_size=32", "--set", "epochs=1", "--methods", "q4",
            "--eval-tokens", "300", "--run-dir", str(tmp_path), "--quiet", "--no-report"]
    main([*args, "--no-onnx"])
    first = json.loads((tmp_path / "q4" / "result.json").read_text())
    main(args)
    again = json.loads((tmp_path / "q4" / "result.json").read_text())
    runner = study.Study(study.StudyConfig(preset="tiny_awd", overrides={"hidden_size": 32, "epochs": 1},
                                           eval_tokens=300, run_dir=str(tmp_path), progress=False))
    assert "test_ppl_int8act" not in first
    q4 = load_artifact(tmp_path / "q4" / study.ARTIFACT_FILE)
    assert again == {**first, "test_ppl_int8act": runner.int8_activation_ppl(q4, 4)}


@pytest.mark.slow  # exports of 16M-weight models, ~10 s each
@pytest.mark.parametrize("student", ["lr_tied_small_kd", "lr_tied_kd", "tt_kd", "gr_kd"])
def test_the_medium_awd_students_sizes_are_the_bytes_their_notes_count(student, corpus):
    # a q2/q3/q4 artifact's size depends on the shapes only (GroupReduce's ranks on the table's spectra too):
    # the untrained teacher compressed counts as the trained one
    methods = load_methods("medium_awd")
    cfg = preset("medium_awd")
    counts = torch.bincount(corpus.train, minlength=cfg.model.vocab_size)
    teacher = LanguageModel(cfg.model, corpus.vocab)
    teacher.init_uniform(cfg.init_scale)
    model = compress_model(teacher, counts=counts, **next(m for m in methods if m.name == student).compress_kwargs())
    chain = {student}
    for m in methods:
        if m.base in chain:
            chain.add(m.name)
        if m.base in chain and m.quant in ("q2", "q3", "q4"):  # QAT's rows, and the plain 4-bit store
            size = artifact_size(model, m.quant) / MB
            noted = m.note.split(" MB")[0]
            assert f"{size:.{len(noted.split('.')[1])}f}" == noted, m.name
            for budget in re.findall(r"candidate for <= ([\d.]+) MB", m.note):
                assert size <= float(budget), m.name


def test_progress_counts_the_training_epochs_left_by_recipe(tmp_path, short_corpus, monkeypatch):
    # the medium_awd study: a distillation and its QATs of at most 6 epochs each (min_gain may end them sooner),
    # and storage-only rows; the estimate is the epochs left at this run's minutes per epoch trained (the
    # epochs in a finished run's history), not the methods left at its mean minutes per method
    s = study.Study(study.StudyConfig(preset="medium_awd", run_dir=str(tmp_path),
                                      methods=["q4", "lr_tied_kd_qat4", "lr_tied_kd_qat2"]))
    assert [(m.name, s.epochs(m)) for m in s.methods] == [
        ("dense", 0), ("q4", 0), ("lr_tied_kd", 6), ("lr_tied_kd_qat4", 6), ("lr_tied_kd_qat2", 6)]
    trained = {"lr_tied_kd": 4}  # stopped early: 4 of its 6 epochs
    clock, logs = [0.0], []
    monkeypatch.setattr(study.time, "time", lambda: clock[0])
    monkeypatch.setattr(s, "dense_model", lambda: None)
    monkeypatch.setattr(s, "log", logs.append)
    monkeypatch.setattr(s, "history", lambda m: {"epochs": [{}] * trained[m.name]} if m.name in trained else None)

    def run_method(m, dense):
        clock[0] += 60.0 * trained.get(m.name, s.epochs(m)) + 5  # a minute an epoch, 5 s to export and score
        return {"name": m.name}

    class Stop(Exception):
        pass

    monkeypatch.setattr(s, "run_method", run_method)
    monkeypatch.setattr(study, "load_artifact", lambda path: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        s.run()
    progress = [line for line in logs if line.startswith("method ")]
    assert progress[0] == "method 1 of 5: dense (elapsed 0m00s; at most 18 training epochs left)"
    assert progress[2] == "method 3 of 5: lr_tied_kd (elapsed 0m10s; at most 18 training epochs left)"  # none trained yet
    assert progress[3] == "method 4 of 5: lr_tied_kd_qat4 (elapsed 4m15s; at most 12 training epochs left, about " \
                          "12m15s at this run's 1m01s per epoch so far)"


def test_an_n_bit_row_is_also_scored_with_int8_activations_in_onnxruntime(tmp_path, short_corpus):
    pytest.importorskip("onnxruntime")
    from lm.compression.export import decode, export_bytes
    from lm.evaluate import token_losses

    config = study.StudyConfig(preset="tiny", run_dir=str(tmp_path), report_dir=str(tmp_path), onnx=True,
                               eval_tokens=300, progress=False)
    runner = study.Study(config)
    torch.manual_seed(0)
    model = LanguageModel(replace(preset("tiny").model, hidden_size=32), short_corpus.vocab)
    model.init_uniform(0.1)
    q4 = decode(export_bytes(model.eval(), "q4")[0]).eval()
    exact = math.exp(token_losses(q4, runner.stream("test")).mean().item())
    approximate = runner.int8_activation_ppl(q4, 4)
    assert approximate == pytest.approx(exact, rel=0.05) and approximate != exact


def test_methods_run_side_by_side_in_processes_give_the_rows_of_one_process(tmp_path, corpus, monkeypatch, capsys):
    # --jobs 2: a base chain (groupreduce_ft -> groupreduce_ft_q8), a distillation and a storage-only row, two
    # at a time in fresh processes (so the streams are cut by options, not by a patched loader)
    def rows(jobs):
        out = tmp_path / f"jobs{jobs}"
        main(["study", "--preset", "tiny", "--set", "hidden_size=24", "--set", "epochs=1", "--set",
              "max_train_tokens=4000", "--eval-tokens", "1000", "--latency-tokens", "2", "--jobs", str(jobs),
              "--methods", "groupreduce_ft_q8", "lr_lstm_ft_kd", "q8", "--run-dir", str(out / "runs"),
              "--report-dir", str(out / "report"), "--no-onnx", *["--quiet"] * (jobs == 1)])
        return {r["name"]: r for r in json.loads((out / "report" / "study_tiny.json").read_text())["rows"]}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, as each of the two processes: the same float sums, so the same rows
    try:
        alone = rows(1)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # shared out: one thread each, on any machine
        side_by_side = rows(2)
    finally:
        monkeypatch.undo()
        torch.set_num_threads(threads)
    assert set(side_by_side) == {"dense", "q8", "groupreduce_ft", "groupreduce_ft_q8", "lr_lstm_ft_kd"}
    log = capsys.readouterr().out  # the processes print nothing; this one logs each epoch they trained, then the row
    epochs = load_finetune("tiny").epochs
    for name in ("groupreduce_ft", "lr_lstm_ft_kd"):
        lines = [f"{name}: epoch {e['epoch']} of {epochs}, lr {e['lr']:.4g}, train ppl {e['train_ppl']:.2f}, "
                 f"valid ppl {e['valid_ppl']:.2f}" for e in side_by_side[name]["history"]["epochs"]]
        assert [line for line in log.splitlines() if line.startswith(f"{name}: epoch")] == lines
        assert log.index(lines[-1]) < log.index(f"{name}: {side_by_side[name]['size_mb']:.3f} MB")
    for name, r in alone.items():
        assert (side_by_side[name]["valid_ppl"], side_by_side[name]["test_ppl"], side_by_side[name]["size_bytes"]) == (
            r["valid_ppl"], r["test_ppl"], r["size_bytes"]), name


class InstantPool:
    """``ProcessPoolExecutor``'s stand-in: each submitted method ends at once, as ``finish(future, name)`` says;
    ``submitted`` lists the method names."""

    def __init__(self, finish):
        self.finish, self.submitted, self.names = finish, [], {}

    def __call__(self, *args, **kwargs):  # the runner builds its pool with the executor's arguments
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, config):
        future = Future()
        self.submitted.append(config.methods[0])
        self.names[future] = config.methods[0]
        self.finish(future, config.methods[0])
        return future


def test_a_failing_method_stops_the_study_run_in_processes(tmp_path, corpus, monkeypatch):
    config = study.StudyConfig(preset="tiny", run_dir=str(tmp_path / "runs"), overrides={"hidden_size": 8},
                               methods=["groupreduce_ft_q8"], jobs=2, report=False, progress=False)
    s = study.Study(config)
    pool = InstantPool(lambda future, name: future.set_exception(RuntimeError(f"{name} broke")))
    monkeypatch.setattr(study, "ProcessPoolExecutor", pool)
    with pytest.raises(RuntimeError, match="groupreduce_ft broke"):
        s.run_in_processes([m for m in s.methods if m.name != "dense"])
    assert pool.submitted == ["groupreduce_ft"]  # its dependant never starts


def test_methods_run_in_processes_start_once_the_row_they_need_is_done(tmp_path, corpus, monkeypatch):
    # every method's process runs the dense row first when it is not cached: the others wait for it, so that
    # no two processes write its files at once
    config = study.StudyConfig(preset="tiny", run_dir=str(tmp_path / "runs"), overrides={"hidden_size": 8},
                               methods=["groupreduce_ft_q8", "q8"], jobs=2, report=False, progress=False)
    s = study.Study(config)
    pool, batches = InstantPool(lambda future, name: future.set_result(None)), []

    def wait(futures, **kwargs):
        batches.append(sorted(pool.names[f] for f in futures))
        return set(futures), set()

    monkeypatch.setattr(study, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(study, "wait", wait)
    s.run_in_processes(s.methods)
    assert batches == [["dense"], ["groupreduce_ft", "q8"], ["groupreduce_ft_q8"]]


def test_status_says_where_each_method_stands_without_running_anything(tmp_path, short_corpus, monkeypatch, capsys):
    # dense and q4 finished; lr_tied_kd training (one epoch, a save within its second); its QAT rows to run, one of
    # them over a row of another recipe
    base = ["study", "--preset", "tiny_awd", "--set", "hidden_size=32", "--set", "epochs=1", "--eval-tokens", "300",
            "--run-dir", str(tmp_path), "--quiet"]
    main([*base, "--methods", "q4", "--no-onnx", "--no-report"])
    capsys.readouterr()
    (tmp_path / "lr_tied_kd" / "train").mkdir(parents=True)
    (tmp_path / "lr_tied_kd" / "train" / study.TRAIN_STATE_FILE).write_bytes(b"")
    (tmp_path / "lr_tied_kd_qat2").mkdir()
    (tmp_path / "lr_tied_kd_qat2" / "result.json").write_text("{}")
    saved = {"history": [{"valid_ppl": 300.0}], "partial": {"epoch": 1, "step": 7}}
    monkeypatch.setattr(study, "load_train_state", lambda path: saved)
    monkeypatch.setattr(study, "train", lambda *a, **k: pytest.fail("--status trains nothing"))
    main([*base, "--methods", "q4", "lr_tied_kd_qat4", "lr_tied_kd_qat2", "--status"])
    lines = capsys.readouterr().out.splitlines()
    q4 = json.loads((tmp_path / "q4" / "result.json").read_text())
    assert lines[0].startswith("dense: done, ") and lines[1] == (
        f"q4: done, {q4['size_mb']:.3f} MB, valid {q4['valid_ppl']:.2f}, test {q4['test_ppl']:.2f}")
    assert lines[2].startswith("lr_tied_kd: training, 1 of at most 2 epochs (valid PPL 300.00); epoch 2 saved at step "
                               "7; state saved 20")
    assert lines[3:] == ["lr_tied_kd_qat4: to run",
                         "lr_tied_kd_qat2: to run (the row there, of another recipe or without its artifact, will be "
                         "replaced)"]
    with pytest.raises(SystemExit):
        main([*base, "--status", "--report-only"])
