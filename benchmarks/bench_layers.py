"""Side-by-side timings of ttlayers' layers against torch and tensorly-torch, and the tables of
docs/layers.md.

* Linear, forward + backward: ``TTLinear`` vs ``nn.Linear`` vs tltorch's
  ``FactorizedLinear(factorization='blocktt')`` with the same mode shapes and ranks. Shapes:
  LSTM gates 650->2600, softmax 650->10000 and 200->10000, square 1024->1024; batches 20x35
  (a PTB training batch, input (35, 20, in)) and 1; TT ranks 4, 8, 16, 32.
* Linear, batch-1 inference (eval, no autograd): the three layers, and ``TTLinear`` along each
  of its routes (contraction with the cores; ``F.linear`` with the W kept in eval), beside the
  route its plan takes.
* Embedding lookups of a 20x35 batch of token ids, forward and forward + backward:
  ``TTEmbedding`` vs ``nn.Embedding`` vs tltorch's ``FactorizedEmbedding`` (10000 x 650).
* The dense 2-layer 650 ``ttlayers.LSTM`` vs ``torch.nn.LSTM``, forward + backward, in tokens/s.
* ``--orders`` (a separate run): TTLinear's TT route at the order it chooses (FLOPs + a charge
  per element written) against the fewest-FLOP order, forward + backward, ranks 4 and 8.
* ``--recurrence`` (a separate run): 2-layer TT-LSTMs (200 and 650 at TT rank 16, 650 at 64),
  forward + backward, as the layer runs them (the fused kernel on built weights when the
  recurrent map's plan builds W) against a per-step loop with every step planned alone and
  one with W built once per call, beside the dense LSTM.

Each point times its candidates interleaved: ``--rounds`` rounds, each running every candidate
for at least ``--min-time`` seconds; a candidate's time is its best round (the one the shared
machine disturbed least).

Clock: ``--clock cpu`` (process CPU time, the default) or ``wall``. The machine this runs on
is shared and oversubscribed (a training run at raised priority holds most of its 2 cores).
There, 2-thread wall time mostly measures how long one OpenMP thread waits for the other to
be scheduled (a 700 x 1024 x 1024 matmul, forward + backward, takes about 1 s of wall time
with 2 threads against 0.06 s of CPU time with 1), so the default run uses 1 thread and CPU
time; ``--threads 2 --clock wall`` gives the 2-thread figures, written to
``benchmarks/results/bench_layers_2threads_wall.json`` and their own table.

    python -m benchmarks.bench_layers [--rounds 5] [--threads 1] [--clock cpu] [--quick] [--orders | --recurrence] [--docs-only]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import replace

import tltorch
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.report import RESULTS, markdown_table, update_doc, write_results
from ttlayers import LSTM, TTEmbedding, TTLinear, tt_lstm
from ttlayers.tt_contract import Contraction, linear_network, linear_plan, tt_linear_apply

NAME = "bench_layers"
DOC = "docs/layers.md"
SEED = 0
SHAPES = [("gates", 650, 2600), ("softmax", 650, 10000), ("softmax", 200, 10000), ("square", 1024, 1024)]
BATCHES = [(35, 20), (1,)]
RANKS = [4, 8, 16, 32]
VOCAB, DIM = 10000, 650


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def best_times(fns: dict, rounds: int, min_time: float, clock) -> dict:
    """Best-round mean seconds per call of each function, the functions interleaved in every round.
    On a GPU each call waits for its kernels, so that the clock measures their work."""
    if torch.get_default_device().type == "cuda":
        fns = {name: _synchronized(fn) for name, fn in fns.items()}
    for fn in fns.values():  # warm up (plans, allocator)
        fn()
    reps = {}
    for name, fn in fns.items():
        start, n = clock(), 0
        while clock() - start < min_time or n == 0:
            fn()
            n += 1
        reps[name] = n
    best = {name: math.inf for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            for _ in range(reps[name]):
                fn()
            best[name] = min(best[name], (clock() - start) / reps[name])
    return best


def _synchronized(fn):
    def call():
        fn()
        torch.cuda.synchronize()

    return call


def train_step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """Forward + backward (of the output, or of an LSTM's first output), gradients dropped
    each call so that none accumulates."""

    def step():
        for p in module.parameters():
            p.grad = None
        x.grad = None
        out = module(x)
        (out[0] if isinstance(out, tuple) else out).backward(grad)

    return step


def bench_linear(rounds: int, min_time: float, clock, quick: bool) -> list[dict]:
    rows = []
    for kind, n_in, n_out in SHAPES[:2] if quick else SHAPES:
        for batch in BATCHES:
            for rank in RANKS[::3] if quick else RANKS:
                torch.manual_seed(SEED)
                ours = TTLinear(n_in, n_out, rank)
                dense = nn.Linear(n_in, n_out)
                theirs = tltorch.FactorizedLinear(ours.in_shape, ours.out_shape, factorization="blocktt", rank=list(ours.ranks))
                x = torch.randn(*batch, n_in, requires_grad=True)
                grad = torch.randn(*batch, n_out)
                t = best_times({"dense": train_step(dense, x, grad), "tltorch": train_step(theirs, x, grad),
                                "ours": train_step(ours, x, grad)}, rounds, min_time, clock)
                n_batch = math.prod(batch)
                plan = linear_plan(n_batch, ours.out_shape, ours.in_shape, ours.ranks, False)
                dense_flops = 2 * n_batch * n_in * n_out
                best_other = min(t["dense"], t["tltorch"])
                rows.append({
                    "layer": f"{kind} {n_in}->{n_out}", "batch": "x".join(map(str, batch)), "rank": rank,
                    "in_shape": list(ours.in_shape), "out_shape": list(ours.out_shape),
                    "route": "dense" if plan.dense else "tt", "min_flops_ratio": plan.min_flops / dense_flops,
                    "route_flops_ratio": (plan.dense_flops if plan.dense else plan.tt_flops) / dense_flops,
                    "dense_ms": 1e3 * t["dense"], "tltorch_ms": 1e3 * t["tltorch"], "ours_ms": 1e3 * t["ours"],
                    "vs_dense": t["ours"] / t["dense"], "vs_tltorch": t["ours"] / t["tltorch"], "vs_best": t["ours"] / best_other,
                    "compression": n_in * n_out / sum(c.numel() for c in ours.cores),
                })
                if n_batch == 1:
                    rows[-1].update(eval_batch_1(ours, dense, theirs, x.detach(), rounds, min_time, clock))
                print(rows[-1], flush=True)
    return rows


def eval_batch_1(ours: TTLinear, dense: nn.Linear, theirs: nn.Module, x: torch.Tensor, rounds: int,
                 min_time: float, clock) -> dict:
    """Batch-1 inference (eval, no autograd): the three layers, and ours along each of its two
    routes (the contraction with the cores, ``F.linear`` with the kept W), beside the route it takes."""
    for m in (ours, dense, theirs):
        m.eval()
    with torch.no_grad():
        built = linear_plan(1, ours.out_shape, ours.in_shape, ours.ranks, True)
        cores, weight = list(ours.cores), ours.dense_weight()

        def no_grad(fn):
            def call():
                with torch.no_grad():
                    fn()
            return call

        t = best_times({"dense": no_grad(lambda: dense(x)), "tltorch": no_grad(lambda: theirs(x)),
                        "ours": no_grad(lambda: ours(x)),
                        "tt": no_grad(lambda: tt_linear_apply(x, cores, built) + ours.bias),
                        "built": no_grad(lambda: F.linear(x, weight, ours.bias))}, rounds, min_time, clock)
    for m in (ours, dense, theirs):
        m.train()
    return {"eval_route": "dense" if built.dense else "tt", "eval_faster": "dense" if t["built"] < t["tt"] else "tt",
            "eval_dense_ms": 1e3 * t["dense"], "eval_tltorch_ms": 1e3 * t["tltorch"], "eval_ours_ms": 1e3 * t["ours"],
            "eval_tt_ms": 1e3 * t["tt"], "eval_built_ms": 1e3 * t["built"], "eval_vs_dense": t["ours"] / t["dense"],
            "eval_vs_tltorch": t["ours"] / t["tltorch"]}


def bench_embedding(rounds: int, min_time: float, clock, quick: bool) -> list[dict]:
    rows = []
    for rank in RANKS[::3] if quick else RANKS:
        torch.manual_seed(SEED)
        ours = TTEmbedding(VOCAB, DIM, rank)
        dense = nn.Embedding(VOCAB, DIM)
        theirs = tltorch.FactorizedEmbedding(VOCAB, DIM, auto_tensorize=False, tensorized_num_embeddings=ours.num_shape,
                                             tensorized_embedding_dim=ours.dim_shape, factorization="blocktt",
                                             rank=list(ours.ranks))
        tokens = torch.randint(0, VOCAB, (35, 20))
        grad = torch.randn(35, 20, DIM)
        modules = {"dense": dense, "tltorch": theirs, "ours": ours}

        def lookup(m):
            def fn():
                with torch.no_grad():
                    m(tokens)
            return fn

        def train(m):
            def fn():
                for p in m.parameters():
                    p.grad = None
                m(tokens).backward(grad)
            return fn

        fwd = best_times({k: lookup(m) for k, m in modules.items()}, rounds, min_time, clock)
        both = best_times({k: train(m) for k, m in modules.items()}, rounds, min_time, clock)
        for mode, t in (("lookup", fwd), ("lookup+backward", both)):
            rows.append({"rank": rank, "mode": mode, "dense_ms": 1e3 * t["dense"], "tltorch_ms": 1e3 * t["tltorch"],
                         "ours_ms": 1e3 * t["ours"], "tltorch_over_ours": t["tltorch"] / t["ours"],
                         "vs_dense": t["ours"] / t["dense"],
                         "compression": VOCAB * DIM / sum(c.numel() for c in ours.cores)})
            print(rows[-1], flush=True)
    return rows


def bench_lstm(rounds: int, min_time: float, clock, quick: bool) -> list[dict]:
    torch.manual_seed(SEED)
    hidden, seq, batch = (200, 35, 20) if quick else (650, 35, 20)
    reference = nn.LSTM(hidden, hidden, 2)
    ours = LSTM.from_torch(reference)
    x = torch.randn(seq, batch, hidden, requires_grad=True)
    grad = torch.randn(seq, batch, hidden)
    t = best_times({"nn.LSTM": train_step(reference, x, grad), "ours": train_step(ours, x, grad)}, rounds, min_time,
                   clock)
    row = {"lstm": f"2 x {hidden}, seq {seq}, batch {batch}", "torch_tokens_s": seq * batch / t["nn.LSTM"],
           "ours_tokens_s": seq * batch / t["ours"], "speed_ratio": t["nn.LSTM"] / t["ours"]}
    print(row, flush=True)
    return [row]


class _EachStepAlone(nn.Module):
    """A TTLinear hidden from the LSTM layer (no ``repeated``, no built weights): the layer runs
    its per-step loop and plans every call on its own."""

    def __init__(self, layer: TTLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class _AlwaysBuilt(_EachStepAlone):
    """A TTLinear (a ``PlannedMap``) whose ``repeated`` always builds W once and that never asks
    for the fused kernel: the per-step loop on a built W."""

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    def dense_weight(self) -> torch.Tensor:
        return self.layer.dense_weight()

    def uses_dense_weight(self, batch: int, calls: int = 1) -> bool:
        return False

    def repeated(self, batch: int, calls: int = 1):
        weight = self.layer.dense_weight()
        return lambda x: F.linear(x, weight, self.layer.bias)


def bench_recurrence(rounds: int, min_time: float, clock, quick: bool) -> list[dict]:
    """TT-LSTMs, forward + backward, as the layer runs them (``planned``: the fused kernel on
    the built weights where the recurrent plan builds W) against per-step loops with every step
    planned alone (``alone``) and with W built once per call (``built``), beside the dense LSTM."""
    rows = []
    for hidden, rank in ((200, 16),) if quick else ((200, 16), (650, 16), (650, 64)):
        torch.manual_seed(SEED)
        seq, batch = 35, 20
        dense = LSTM(hidden, hidden, 2)
        variants = {"dense": dense, "planned": tt_lstm(dense, rank=rank)}
        for name, wrapper in (("alone", _EachStepAlone), ("built", _AlwaysBuilt)):
            variants[name] = copy.deepcopy(variants["planned"])
            for layer in variants[name].layers:
                layer.recurrent_map = wrapper(layer.recurrent_map)
        x = torch.randn(seq, batch, hidden, requires_grad=True)
        grad = torch.randn(seq, batch, hidden)
        t = best_times({k: train_step(m, x, grad) for k, m in variants.items()}, rounds, min_time, clock)
        rows.append({"lstm": f"2 x {hidden}, TT rank {rank}, seq {seq}, batch {batch}",
                     **{f"{k}_tokens_s": seq * batch / t[k] for k in variants},
                     "built_speed_up": t["alone"] / t["built"], "speed_up": t["alone"] / t["planned"],
                     "fused_over_loop": t["built"] / t["planned"], "planned_vs_dense": t["planned"] / t["dense"]})
        print(rows[-1], flush=True)
    return rows


def bench_orders(rounds: int, min_time: float, clock, quick: bool) -> list[dict]:
    rows = []
    for kind, n_in, n_out in SHAPES[:1] if quick else SHAPES:
        for batch in [(35, 20), (20,)]:
            for rank in (4, 8):
                torch.manual_seed(SEED)
                layer = TTLinear(n_in, n_out, rank)
                n_batch = math.prod(batch)
                chosen = linear_plan(n_batch, layer.out_shape, layer.in_shape, layer.ranks, False)
                network = linear_network(n_batch, layer.out_shape, layer.in_shape, layer.ranks)
                fewest = Contraction.plan(*network, minimize="flops")
                x = torch.randn(n_batch, n_in, requires_grad=True)
                grad = torch.randn(n_batch, n_out)
                cores = list(layer.cores)

                def run(contraction):
                    def fn():
                        for p in cores:
                            p.grad = None
                        tt_linear_apply(x, cores, replace(chosen, contraction=contraction)).backward(grad)
                    return fn

                dense = nn.Linear(n_in, n_out)
                t = best_times({"dense": train_step(dense, x, grad), "fewest_flops": run(fewest),
                                "chosen": run(chosen.contraction)}, rounds, min_time, clock)
                dense_flops = 2 * n_batch * n_in * n_out
                rows.append({"layer": f"{kind} {n_in}->{n_out}", "batch": "x".join(map(str, batch)), "rank": rank,
                             "fewest_flops_ratio": fewest.flops / dense_flops, "chosen_flops_ratio": chosen.tt_flops / dense_flops,
                             "fewest_vs_dense": t["fewest_flops"] / t["dense"], "chosen_vs_dense": t["chosen"] / t["dense"]})
                print(rows[-1], flush=True)
    return rows


def write_docs(name: str, rows: list[dict]) -> None:
    """The tables of ``benchmarks/results/<name>.json``'s rows into docs/layers.md (markers ``<name>_<part>``)."""
    part = {p: [{k: v for k, v in r.items() if k != "part"} for r in rows if r.get("part") == p]
            for p in ("linear", "embedding", "lstm")}
    if name.startswith(f"{NAME}_recurrence"):
        columns = ["lstm", "dense_tokens_s", "alone_tokens_s", "built_tokens_s", "planned_tokens_s", "built_speed_up",
                   "speed_up", "fused_over_loop", "planned_vs_dense"]
        update_doc(DOC, name, markdown_table(rows, columns, {
            **{c: ".0f" for c in columns if c.endswith("tokens_s")}, **{c: ".2f" for c in columns[5:]}}))
        return
    if name.startswith(f"{NAME}_orders"):
        columns = ["layer", "batch", "rank", "fewest_flops_ratio", "chosen_flops_ratio", "fewest_vs_dense", "chosen_vs_dense"]
        update_doc(DOC, name, markdown_table(rows, columns, {k: ".2f" for k in columns[3:]}))
        return
    update_doc(DOC, f"{name}_linear", markdown_table(part["linear"], [
        "layer", "batch", "rank", "compression", "min_flops_ratio", "route", "dense_ms", "tltorch_ms", "ours_ms",
        "vs_dense", "vs_tltorch", "vs_best"], {
        "compression": ".0f", "min_flops_ratio": ".2f", "dense_ms": ".3g", "tltorch_ms": ".3g", "ours_ms": ".3g",
        "vs_dense": ".2f", "vs_tltorch": ".2f", "vs_best": ".2f"}))
    evals = [r for r in part["linear"] if "eval_route" in r]
    if evals:
        update_doc(DOC, f"{name}_eval", markdown_table(evals, [
            "layer", "rank", "eval_route", "eval_faster", "eval_tt_ms", "eval_built_ms", "eval_dense_ms",
            "eval_tltorch_ms", "eval_ours_ms", "eval_vs_dense", "eval_vs_tltorch"], {
            **{c: ".3g" for c in ("eval_tt_ms", "eval_built_ms", "eval_dense_ms", "eval_tltorch_ms", "eval_ours_ms")},
            "eval_vs_dense": ".2f", "eval_vs_tltorch": ".2f"}))
    update_doc(DOC, f"{name}_embedding", markdown_table(part["embedding"], [
        "rank", "compression", "mode", "dense_ms", "tltorch_ms", "ours_ms", "tltorch_over_ours", "vs_dense"], {
        "compression": ".0f", "dense_ms": ".3g", "tltorch_ms": ".3g", "ours_ms": ".3g", "tltorch_over_ours": ".1f",
        "vs_dense": ".1f"}))
    update_doc(DOC, f"{name}_lstm", markdown_table(part["lstm"], ["lstm", "torch_tokens_s", "ours_tokens_s", "speed_ratio"], {
        "torch_tokens_s": ".0f", "ours_tokens_s": ".0f", "speed_ratio": ".3f"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per candidate per round (at least one call)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a few points only, results not written")
    parser.add_argument("--orders", action="store_true", help="only the chosen vs fewest-FLOP orders")
    parser.add_argument("--recurrence", action="store_true",
                        help="only TT-LSTMs, steps planned together vs each alone")
    parser.add_argument("--device", default="cpu",
                        help="cpu, or cuda (wall clock; its own results file, docs tables left alone)")
    parser.add_argument("--docs-only", action="store_true", help="rewrite the docs tables from the results file")
    args = parser.parse_args()
    if args.device != "cpu":
        if not torch.cuda.is_available() or not args.device.startswith("cuda"):
            parser.error(f"argument --device: expected cpu or an available cuda device, got {args.device!r}")
        torch.set_default_device(args.device)
        args.clock = "wall"
    suffix = "" if (args.threads, args.clock) == (1, "cpu") else f"_{args.threads}threads_{args.clock}"
    suffix = "_cuda" if args.device != "cpu" else suffix
    name = NAME + ("_orders" if args.orders else "_recurrence" if args.recurrence else "") + suffix
    if args.docs_only:
        write_docs(name, json.loads((RESULTS / f"{name}.json").read_text())["rows"])
        return
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    config = {"rounds": args.rounds, "min_time": args.min_time, "threads": args.threads, "clock": args.clock,
              "shapes": SHAPES, "device": torch.cuda.get_device_name() if args.device != "cpu" else "cpu"}
    if args.orders:
        rows = bench_orders(args.rounds, args.min_time, clock, args.quick)
    elif args.recurrence:
        rows = bench_recurrence(args.rounds, args.min_time, clock, args.quick)
    else:
        config.update(batches=BATCHES, ranks=RANKS, embedding=[VOCAB, DIM])
        rows = [{"part": "linear", **r} for r in bench_linear(args.rounds, args.min_time, clock, args.quick)]
        rows += [{"part": "embedding", **r} for r in bench_embedding(args.rounds, args.min_time, clock, args.quick)]
        rows += [{"part": "lstm", **r} for r in bench_lstm(args.rounds, args.min_time, clock, args.quick)]
    if not args.quick:
        write_results(name, rows, config, SEED)
        if args.device == "cpu":
            write_docs(name, rows)


if __name__ == "__main__":
    main()
