"""lm.benchmarks.teacher_setup: the teacher and data the distillation benchmarks share."""

import argparse

import pytest
import torch

from lm.benchmarks.teacher_setup import TeacherSetup, check_teacher_arguments, results_path, teacher_arguments
from lm.checkpoint import save_model
from lm.config import preset
from lm.data import batchify
from lm.results import RESULTS
from lm.train import build_model


def parse(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser()
    teacher_arguments(p, steps=4, what="steps")
    args = p.parse_args(argv)
    check_teacher_arguments(p, args)
    return p, args


def test_the_setup_holds_the_first_windows_of_the_training_words_and_the_teachers_outputs(short_corpus, tmp_path):
    cfg = preset("tiny_awd")
    save_model(build_model(cfg, short_corpus.vocab), tmp_path / "model.safetensors")
    _, args = parse(["--preset", "tiny_awd", "--checkpoint", str(tmp_path / "model.safetensors"), "--steps", "2",
                     "--valid-tokens", "100"])
    setup = TeacherSetup.from_args(args)
    expected = batchify(short_corpus.train[: 2 * cfg.bptt * cfg.batch_size + cfg.batch_size], cfg.batch_size)
    assert torch.equal(setup.data, expected) and setup.data.shape == (2 * cfg.bptt + 1, cfg.batch_size)
    assert len(setup.taught) == 2 and torch.equal(setup.valid, short_corpus.valid[:100])
    assert setup.counts.sum() == short_corpus.train.numel() and setup.counts.shape == (len(short_corpus.vocab),)
    assert results_path(args, "bench_x") == RESULTS / "bench_x_tiny_awd.json"


def test_a_teacher_of_another_vocabulary_is_refused(short_corpus, tmp_path):
    vocab = list(short_corpus.vocab)
    vocab[0], vocab[1] = vocab[1], vocab[0]
    save_model(build_model(preset("tiny_awd"), vocab), tmp_path / "model.safetensors")
    _, args = parse(["--preset", "tiny_awd", "--checkpoint", str(tmp_path / "model.safetensors")])
    with pytest.raises(ValueError, match="another vocabulary"):
        TeacherSetup.from_args(args)


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--valid-tokens", "-1"]])
def test_no_steps_or_a_negative_count_of_words_is_refused(bad, capsys):
    with pytest.raises(SystemExit):
        parse(["--checkpoint", "x", *bad])
    assert "--steps must be >= 1 and --valid-tokens >= 0" in capsys.readouterr().err
