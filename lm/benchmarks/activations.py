"""Activation quantization of n-bit models: onnxruntime's ``MatMulNBits`` on float inputs against
int8 inputs (``export_onnx(activations="int8")``, accuracy level 4), the same weights in both: the
perplexity each computes and its latency, side by side in one run.

    python -m lm.benchmarks.activations runs/study_medium_awd/lr_tied_kd_qat2/artifact.safetensors
    python -m lm.benchmarks.activations models/small_tt_paper_scratch_q8.safetensors --requantize 4

Each model is exported twice with ``weights="nbits"`` and scored token by token at batch 1 (as a
keyboard runs it) on the start of PTB's test split (``--tokens``; 0: all of it), the state carried,
every token predicted once as ``lm.evaluate`` does; ``lm.evaluate`` scores the same tokens in torch, so
that the float-input column is checked against the model it exports. One token's latency is the
median of ``--repeats`` round-robin passes on one thread.

An artifact stored in 2, 3 or 4 bits is exported as it is. ``--requantize BITS`` first puts every
weight of any other model on BITS-bit row grids (``lm.compression.lowbit``, post-training: a different
model from one trained for that width, and its rows say so).

Writes results/activations.json and results/activations.md (``--out``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import torch

from ..checkpoint import load
from ..compression.export import LOW_BITS, decode, export_bytes
from ..data import Corpus
from ..deploy.onnx_export import artifact_bits, export_onnx
from ..deploy.runtime import OnnxRuntime, stream_losses
from ..evaluate import token_losses
from ..model import LanguageModel
from ..results import RESULTS, stamp, write_report
from ..study.latency import runtime_latency

ACTIVATIONS = ("float32", "int8")


def low_bit_model(path: str, requantize: int | None) -> tuple[LanguageModel, int, bool]:
    """The model of ``path`` and its weights' width: an artifact's own (2, 3 or 4 bits), or any model put on
    ``requantize``-bit grids (None: the artifact must hold low-bit weights)."""
    bits = artifact_bits(path)
    if requantize is None:
        if bits is None:
            raise ValueError(f"{path} holds no 2-, 3- or 4-bit weights: pass --requantize 2, 3 or 4")
        return load(path).eval(), bits, False
    model = decode(export_bytes(load(path).eval(), f"q{requantize}")[0]).eval()
    return model, requantize, True


def run(paths: list[str], requantize: int | None = None, tokens: int = 0, repeats: int = 3,
        latency_tokens: int = 200, data_dir: str | None = None) -> dict:
    """The payload of ``results/activations.json``: a row per model of ``paths`` (see the module docstring)."""
    if len(set(paths)) != len(paths):
        raise ValueError(f"a model is named twice in {paths}")
    torch.set_num_threads(1)
    corpus = Corpus.load(data_dir)
    stream = corpus.test[: tokens + 1] if tokens else corpus.test
    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, path in enumerate(paths):
            model, bits, requantized = low_bit_model(path, requantize)
            if model.vocab is not None and model.vocab != corpus.vocab:
                raise ValueError(f"{path} was trained on another vocabulary")
            row = {"model": path, "bits": bits, "requantized": requantized,
                   "torch_ppl": math.exp(token_losses(model, stream).mean().item())}
            for activations in ACTIVATIONS:
                info = export_onnx(model, Path(tmp) / f"{k}_{activations}.onnx", weights="nbits", bits=bits,
                                   activations=activations)
                runs[(path, activations)] = OnnxRuntime(info.path, threads=1)
                losses = stream_losses(runs[(path, activations)], stream.numpy(), desc=f"{Path(path).name} {activations}")
                row[f"{activations}_ppl"] = math.exp(losses.mean())
                row["onnx_bytes"] = info.bytes
            rows.append(row)
            print(row, flush=True)
        times = {key: [] for key in runs}
        for rep in range(repeats + 1):  # the first pass warms up and is not counted
            for key, runtime in runs.items():
                t = runtime_latency(runtime, len(corpus.vocab), latency_tokens)
                if rep:
                    times[key].append(1e3 * t)
    for row in rows:
        for activations in ACTIVATIONS:
            row[f"{activations}_ms"] = statistics.median(times[(row["model"], activations)])
        row["int8_speedup"] = row["float32_ms"] / row["int8_ms"]
        row["int8_ppl_change"] = row["int8_ppl"] - row["float32_ppl"]
    config = {"paths": paths, "requantize": requantize, "tokens": stream.numel() - 1, "repeats": repeats,
              "latency_tokens": latency_tokens, "threads": 1, "batch": 1}
    return {**stamp(config, None), "rows": rows}


def markdown(payload: dict) -> str:
    c = payload["config"]
    lines = ["# Activation quantization of n-bit models", "",
             f"Generated by `python -m lm.benchmarks.activations` at commit `{payload['commit']}` on {payload['date']}: "
             f"each model exported with its weights as n-bit codes (`lm export --weights nbits`), its products on "
             f"float inputs or on int8 inputs (`--activations int8`), scored token by token at batch 1 on the first "
             f"{c['tokens']} targets of PTB's test split; torch scores the same tokens. Latency: one token on one "
             f"thread, median of {c['repeats']} passes of {c['latency_tokens']} tokens, side by side.", "",
             "| model | bits | PPL torch | PPL ORT float | PPL ORT int8 | change | ms float | ms int8 | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        name = r["model"] + (" (requantized post-training)" if r["requantized"] else "")
        lines.append(f"| {name} | {r['bits']} | {r['torch_ppl']:.2f} | {r['float32_ppl']:.2f} | {r['int8_ppl']:.2f} "
                     f"| {r['int8_ppl_change']:+.2f} | {r['float32_ms']:.3f} | {r['int8_ms']:.3f} "
                     f"| {r['int8_speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m lm.benchmarks.activations", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="artifacts (or checkpoints, with --requantize)")
    p.add_argument("--requantize", type=int, choices=sorted(LOW_BITS.values()),
                   help="put every weight on this many bits per row first (post-training)")
    p.add_argument("--tokens", type=int, default=0, help="test targets scored (default 0: the whole split)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency-tokens", type=int, default=200)
    p.add_argument("--data-dir", default=None, help="PTB (default: $PTB_DIR)")
    p.add_argument("--out", default=str(RESULTS / "activations"), help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    if args.tokens < 0 or args.repeats < 1 or args.latency_tokens < 1:
        p.error("--tokens must be >= 0, --repeats and --latency-tokens >= 1")
    payload = run(args.models, args.requantize, args.tokens, args.repeats, args.latency_tokens, args.data_dir)
    print(write_report(args.out, payload, markdown))
    return payload


if __name__ == "__main__":
    main()
