"""Exact perplexity: the state is carried across the whole stream, every token predicted once."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .model import detach


@torch.no_grad()
def perplexity(model: nn.Module, stream: Tensor, chunk: int = 128, progress: bool = False) -> float:
    """exp of the mean negative log-likelihood of ``stream[1:]`` given everything before.

    The stream (1-D ids) is read as one sequence at batch size 1, in chunks of
    ``chunk`` tokens whose final state starts the next chunk, so each of the
    ``len(stream) - 1`` targets is counted exactly once.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    data = stream.to(device).view(-1, 1)
    state = None
    total, count = 0.0, 0
    for start in tqdm(range(0, data.shape[0] - 1, chunk), desc="eval", disable=not progress, leave=False):
        end = min(start + chunk, data.shape[0] - 1)
        logits, state = model(data[start:end], state)
        state = detach(state)
        total += nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), data[start + 1 : end + 1].view(-1),
                                             reduction="sum").item()
        count += end - start
    model.train(was_training)
    return math.exp(total / count)
