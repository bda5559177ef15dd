"""The cost of a quantization-aware training step against a float step, before and after the row
ranges were kept between searches (``lm.compression.qat.FakeQuantize``), and what that does to a
QAT run's perplexity.

    OMP_NUM_THREADS=1 python -m lm.benchmarks.qat_step

Step cost: training steps (forward, backward, clipping, SGD) of two models on the tiny_awd
shapes, timed in CPU seconds of this process, the variants interleaved round by round and
each round's ratio to the float step taken (the median over rounds is reported):

* ``float``: no QAT;
* ``search_every_forward``: the ranges searched at every read of a weight (the code before);
* ``every_<n>``: the clipping ratios searched every ``n`` optimizer steps, the ranges following
  the weight at each step (``lm.compression.qat.FakeQuantize``), a weight read once per step.

Perplexity: a tiny model trained in float on the start of PTB, then fine-tuned at 2 bits in
QAT the old way and every ``n`` steps from the same weights on the same batches, baked, and
scored on the start of the validation split. Writes results/bench_qat_step.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..allocator import retain_freed_memory
from ..compression.lowbit import fake_quantize
from ..compression.qat import FakeQuantize, bake, enable_qat
from ..config import preset
from ..data import Corpus, batchify, bptt_windows
from ..evaluate import perplexity
from ..model import LanguageModel, detach
from ..results import RESULTS, stamp, write_json

# the tiny_awd shapes: a dense tied LSTM, and the study's tied LR-LSTM student (r = 13)
MODELS = {"dense": {}, "lr_tied": {"embedding_size": 13, "lstm": {"type": "lr_lstm", "rank": 13}}}


class SearchEveryForward(FakeQuantize):
    """The fake-quantizer before the ranges were kept: a search at every read of the weight."""

    def forward(self, weight: Tensor) -> Tensor:
        return fake_quantize(weight, self.bits, self.axis)


def qat_model(model: LanguageModel, bits: int, every: int | None) -> LanguageModel:
    """A QAT copy of ``model``: ranges kept ``every`` steps, or (None) searched at every forward."""
    qat = enable_qat(copy.deepcopy(model), bits, every or 1)
    if every is None:
        for m in qat.modules():
            for f in (f for plist in getattr(m, "parametrizations", {}).values() for f in plist):
                f.__class__ = SearchEveryForward
    return qat


class Stepper:
    """SGD steps of one model on a stream of windows, as ``lm.train`` takes them."""

    def __init__(self, model: LanguageModel, data: Tensor, cached: bool, lr: float = 1.0) -> None:
        self.model, self.cached = model.train(), cached
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        self.windows = list(bptt_windows(data, 35))
        self.state, self.i = None, 0

    def step(self) -> None:
        inputs, targets = self.windows[self.i % len(self.windows)]
        self.i += 1
        with parametrize.cached() if self.cached else torch.enable_grad():
            logits, self.state = self.model(inputs, self.state)
        self.state = detach(self.state)
        loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        (loss * inputs.shape[0]).backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()


def step_costs(corpus: Corpus, bits: int, everies: list[int], rounds: int, steps: int) -> dict:
    """Median over ``rounds`` of each variant's CPU time for ``steps`` steps, over the float step's."""
    cfg = preset("tiny_awd")
    data = batchify(corpus.train[:40_000], cfg.batch_size)
    out = {}
    for name, fields in MODELS.items():
        torch.manual_seed(0)
        model = LanguageModel(replace(cfg.model, **fields))
        variants = {"float": Stepper(copy.deepcopy(model), data, cached=False),
                    "search_every_forward": Stepper(qat_model(model, bits, None), data, cached=False),
                    **{f"every_{n}": Stepper(qat_model(model, bits, n), data, cached=True) for n in everies}}
        seconds: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for key, stepper in variants.items():
                tic = time.process_time()
                for _ in range(steps):
                    stepper.step()
                seconds[key].append(time.process_time() - tic)
        ratios = {k: statistics.median(s / f for s, f in zip(v, seconds["float"])) for k, v in seconds.items()}
        out[name] = {"float_ms_per_step": 1000 * statistics.median(seconds["float"]) / steps,
                     "ratio_to_float": ratios}
    return out


def perplexities(corpus: Corpus, bits: int, everies: list[int], float_steps: int, qat_steps: int,
                 valid_tokens: int) -> dict:
    """A tiny model trained in float, then in QAT each way from the same weights; valid PPL after bake."""
    cfg = preset("tiny")
    torch.manual_seed(0)
    model = LanguageModel(cfg.model)
    model.init_uniform(cfg.init_scale)
    data = batchify(corpus.train[: 35 * 20 * (float_steps + qat_steps)], cfg.batch_size)
    stepper = Stepper(model, data, cached=False)
    for _ in range(float_steps):
        stepper.step()
    valid = corpus.valid[:valid_tokens]
    out = {"float": perplexity(model, valid)}
    for key, every in [("search_every_forward", None), *((f"every_{n}", n) for n in everies)]:
        qat = Stepper(qat_model(model, bits, every), data, cached=every is not None, lr=0.5)
        qat.i = float_steps  # the batches after the float run's
        for _ in range(qat_steps):
            qat.step()
        out[key] = perplexity(bake(qat.model), valid)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--every", type=int, nargs="+", default=[1, 8, 16, 50])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="steps per variant and round")
    p.add_argument("--float-steps", type=int, default=300)
    p.add_argument("--qat-steps", type=int, default=100)
    p.add_argument("--valid-tokens", type=int, default=20_000)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    retain_freed_memory()  # as the lm command trains
    provenance = stamp({k: v for k, v in vars(args).items() if k != "data_dir"}, 0)  # the commit measured
    corpus = Corpus.load(args.data_dir)
    payload = {**provenance,
               "step_cost": step_costs(corpus, args.bits, args.every, args.rounds, args.steps),
               "valid_ppl": perplexities(corpus, args.bits, args.every, args.float_steps, args.qat_steps,
                                         args.valid_tokens)}
    write_json(RESULTS / "bench_qat_step.json", payload)
    print(payload["step_cost"], payload["valid_ppl"])
    return payload


if __name__ == "__main__":
    main()
