"""Exact perplexity: the state is carried across the whole stream, every token predicted once."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from tqdm import tqdm

from .model import detach


@torch.no_grad()
def token_losses(model: nn.Module, stream: Tensor, chunk: int = 128, progress: bool = False) -> Tensor:
    """The negative log-likelihood of each of ``stream[1:]`` given everything before: (len(stream) - 1,).

    The stream (1-D ids) is read as one sequence at batch size 1, in chunks of
    ``chunk`` tokens whose final state starts the next chunk, so each target is
    scored exactly once. Where a perplexity is worse than expected, this says which
    stretch of the stream is to blame (e.g. a cell state that runs away on a repeated
    phrase, which only a long unbroken sequence shows).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    data = stream.to(device).view(-1, 1)
    state, losses = None, []
    with parametrize.cached():  # a parametrized weight (QAT's) computed once for the stream, not at every step
        for start in tqdm(range(0, data.shape[0] - 1, chunk), desc="eval", disable=not progress, leave=False):
            end = min(start + chunk, data.shape[0] - 1)
            logits, state = model(data[start:end], state)
            state = detach(state)
            losses.append(nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]),
                                                      data[start + 1 : end + 1].view(-1), reduction="none").double().cpu())
    model.train(was_training)
    return torch.cat(losses)


def perplexity(model: nn.Module, stream: Tensor, chunk: int = 128, progress: bool = False) -> float:
    """exp of the mean of ``token_losses(model, stream, chunk)``: every target of the stream counted once."""
    return math.exp(token_losses(model, stream, chunk, progress).mean().item())
