"""Perplexity and per-token losses of a model on a token stream."""

import math

import pytest
import torch
from torch import nn

from lm.evaluate import perplexity, token_losses


def test_exact_perplexity_counts_every_token_once(tiny_lm):
    model = tiny_lm(vocab=50, init=0.3)
    stream = torch.randint(0, 50, (103,))
    logits, _ = model(stream[:-1].view(-1, 1))
    expected = math.exp(nn.functional.cross_entropy(logits.view(-1, 50), stream[1:]).item())
    for chunk in (1, 7, 128):
        assert perplexity(model, stream, chunk=chunk) == pytest.approx(expected, rel=1e-5)
    # token by token: the loss of each target, in stream order, whatever the chunking
    each = nn.functional.cross_entropy(logits.view(-1, 50), stream[1:], reduction="none").double()
    for chunk in (1, 7, 128):
        torch.testing.assert_close(token_losses(model, stream, chunk=chunk), each, rtol=1e-5, atol=1e-5)
