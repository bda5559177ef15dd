"""CPU latency of one language-model step: one token at batch 1, on one thread.

``compare`` measures several models side by side in one process, round-robin, so
that every ratio against the dense baseline is taken under the same machine load;
each model is timed eager (float32) and int8 (``torch.ao`` dynamic quantization).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from .quantize import int8_dynamic


@torch.no_grad()
def token_latency(model: nn.Module, tokens: int = 100, warmup: int = 10) -> float:
    """Seconds per token for ``model(token (1, 1), state)``, the state carried from step to step."""
    model.eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (warmup + tokens, 1, 1), generator=torch.Generator().manual_seed(0))
    state = None
    for t in range(warmup):
        _, state = model(ids[t], state)
    tic = time.perf_counter()
    for t in range(warmup, warmup + tokens):
        _, state = model(ids[t], state)
    return (time.perf_counter() - tic) / tokens


def compare(models: dict[str, nn.Module], tokens: int = 100, repeats: int = 3, threads: int = 1) -> dict[str, dict]:
    """``{name: {"eager_ms", "int8_ms"}}``: median over ``repeats`` round-robin passes on ``threads`` threads,
    after one warm-up pass."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        variants = {(name, kind): (m if kind == "eager" else int8_dynamic(m))
                    for name, m in models.items() for kind in ("eager", "int8")}
        times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
        for rep in range(repeats + 1):  # the first pass warms every model up and is not counted
            for key, m in variants.items():
                t = token_latency(m, tokens)
                if rep:
                    times[key].append(t)
    finally:
        torch.set_num_threads(previous)
    return {name: {f"{kind}_ms": 1e3 * statistics.median(times[(name, kind)]) for kind in ("eager", "int8")}
            for name in models}
