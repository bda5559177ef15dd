"""lm.benchmarks.train_speed on tiny_awd with PTB cut short (``short_corpus``)."""

import math

import pytest
import torch

from lm.benchmarks import train_speed
from lm.checkpoint import load
from lm.config import preset
from lm.data import batchify
from lm.train import build_model, train


def test_train_steps_trains_as_lm_train_steps(short_corpus, tmp_path):
    """The benchmark times lm.train's own steps: one epoch of each, from the same seed, ends at the
    same weights (dropout masks, weight drop, AR/TAR, weight decay and clipping included)."""
    cfg = preset("tiny_awd", hidden_size=16, epochs=1)
    train(cfg, tmp_path, progress=False)
    trained = load(tmp_path / "model.safetensors")
    model = build_model(cfg, short_corpus.vocab)
    before = [p.detach().clone() for p in model.parameters()]
    seconds = train_speed.train_steps(model, cfg, batchify(short_corpus.train, cfg.batch_size))
    assert len(seconds) == math.ceil((4000 // cfg.batch_size - 1) / cfg.bptt) and all(s > 0 for s in seconds)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every weight trained
    torch.testing.assert_close(model.state_dict(), trained.state_dict())
    assert train_speed.epoch_tokens(cfg, short_corpus) == (4000 // cfg.batch_size - 1) * cfg.batch_size


def test_time_steps_leaves_the_warmup_steps_out_of_the_timed_ones(short_corpus):
    cfg = preset("tiny_awd")
    row = train_speed.time_steps("tiny_awd", short_corpus, steps=2, averaged=False, warmup=1)
    assert row["steps"] == 2 and row["tokens"] == 2 * cfg.bptt * cfg.batch_size
    assert row["device"] == "cpu" and not row["compiled"] and row["warmup_s"] > 0


@pytest.mark.slow
def test_a_compiled_step_trains_the_model_as_the_eager_one(short_corpus):
    """torch.compile's step (the benchmark's --compile) runs lm.train's step: without dropout its
    loss and weights after a few steps are the eager ones."""
    cfg = preset("tiny_awd", hidden_size=16, dropout_input=0.0, dropout_hidden=0.0, dropout_output=0.0,
                 dropout_embedding=0.0, weight_drop=0.0)
    data = batchify(short_corpus.train, cfg.batch_size)[: 3 * cfg.bptt + 1]
    models = [build_model(cfg, short_corpus.vocab) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    train_speed.train_steps(models[0], cfg, data)
    train_speed.train_steps(torch.compile(models[1]), cfg, data)
    torch.testing.assert_close(models[1].state_dict(), models[0].state_dict(), rtol=1e-4, atol=1e-5)
