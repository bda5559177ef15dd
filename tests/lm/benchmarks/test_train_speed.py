"""lm.benchmarks.train_speed on tiny_awd with PTB cut short (``short_corpus``)."""

import math

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
