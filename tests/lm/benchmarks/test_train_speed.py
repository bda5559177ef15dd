"""lm.benchmarks.train_speed on tiny_awd with PTB cut short (``short_corpus``)."""

import torch

from lm.benchmarks import train_speed
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
