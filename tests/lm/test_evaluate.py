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


class Bigram(nn.Module):
    """p(next | current) = P[current]; its state is the number of tokens read so far, which each
    call checks, so that a chunk not starting from the last chunk's state fails."""

    def __init__(self, table: list[list[float]]):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(table, dtype=torch.float64).log())

    def forward(self, ids, state=None):
        seen = 0 if state is None else int(state[0])
        assert ids.shape[1] == 1 and seen == self.read
        self.read += ids.shape[0]
        return self.logits[ids], (torch.tensor([self.read]),)


@pytest.mark.parametrize("chunk", [1, 2, 3, 128])
def test_perplexity_is_the_hand_computed_one_whatever_the_chunks(chunk):
    model = Bigram([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]]).train()
    model.read = 0
    stream = torch.tensor([0, 1, 2, 1, 2, 0])
    # targets 1 | 0, 2 | 1, 1 | 2, 2 | 1, 0 | 2
    nll = [-math.log(p) for p in (0.25, 0.8, 0.6, 0.8, 0.2)]
    losses = token_losses(model, stream, chunk=chunk)
    torch.testing.assert_close(losses, torch.tensor(nll, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert model.training and model.read == 5  # every target read once, the mode given back
    model.read = 0
    assert perplexity(model, stream, chunk=chunk) == pytest.approx(math.exp(sum(nll) / 5), rel=1e-12)
