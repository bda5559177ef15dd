"""CPU latency of one language-model step: one token at batch 1, on one thread.

``compare`` measures several models side by side in one process, round-robin, so
that every ratio against the dense baseline is taken under the same machine load;
each model is timed eager (float32) and int8 (``torch.ao`` dynamic quantization), and
with ``onnx=True`` also exported (``lm.deploy.onnx_export``) and run by onnxruntime, float32
and int8 (its own dynamic quantizer).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import model_config
from ..compression.export import LOW_BITS, decode, export_bytes
from ..compression.quantize import int8_dynamic
from ..model import LanguageModel

# the columns ``compare`` fills, replaced whole when a report is timed again
COLUMNS = ("eager_ms", "int8_ms", "ort_ms", "ort_int8_ms", "onnx_bytes", "onnx_int8_bytes",
           "ort_nbits_ms", "onnx_nbits_bytes", "ort_nbits_int8act_ms")


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


def runtime_latency(run, vocab_size: int, tokens: int = 100, warmup: int = 10) -> float:
    """Seconds per token of a ``lm.deploy.runtime`` runtime's ``step`` at batch 1, the state carried (the same
    token ids as ``token_latency``)."""
    ids = torch.randint(0, vocab_size, (warmup + tokens, 1), generator=torch.Generator().manual_seed(0)).numpy()
    state = run.initial_state(1)
    for t in range(warmup):
        _, state = run.step(ids[t], state)
    tic = time.perf_counter()
    for t in range(warmup, warmup + tokens):
        _, state = run.step(ids[t], state)
    return (time.perf_counter() - tic) / tokens


def compare(models: dict[str, nn.Module], tokens: int = 100, repeats: int = 3, threads: int = 1,
            onnx: bool = False, nbits: dict[str, int] | None = None, tt: dict[str, str] | None = None,
            containers: dict[str, int] | None = None) -> dict[str, dict]:
    """``{name: {"eager_ms", "int8_ms"}}``: median over ``repeats`` round-robin passes on ``threads`` threads,
    after one warm-up pass. With ``onnx``, also ``"ort_ms"``, ``"ort_int8_ms"`` (onnxruntime, float32 and
    int8) and the exported files' sizes ``"onnx_bytes"``, ``"onnx_int8_bytes"``; and for the models named in
    ``nbits`` (name -> bit width of their low-bit weights), ``"ort_nbits_ms"`` and ``"onnx_nbits_bytes"``
    (``lm.deploy.onnx_export``, ``weights="nbits"``, packed in ``containers[name]`` bits where given, else
    ``export_onnx``'s default), and ``"ort_nbits_int8act_ms"``, the same file with int8 activations
    (``activations="int8"``). ``tt`` (name -> route) exports the TT layers of the models it names by that
    route (``export_onnx``'s ``tt``) instead of the default."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    sizes: dict[str, dict] = {name: {} for name in models}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            timers = {}
            for name, m in models.items():
                timers[(name, "eager")] = lambda m=m: token_latency(m, tokens)
                timers[(name, "int8")] = lambda m=int8_dynamic(m): token_latency(m, tokens)
                if onnx:
                    from ..deploy.onnx_export import export_onnx
                    from ..deploy.runtime import OnnxRuntime

                    routes = [("float32", None, None), ("int8", None, None)]
                    if name in (nbits or {}):
                        routes += [("nbits", nbits[name], "float32"), ("nbits", nbits[name], "int8")]
                    for weights, bits, activations in routes:
                        route = (tt or {}).get(name) if weights != "nbits" else None
                        container = (containers or {}).get(name) if weights == "nbits" else None
                        info = export_onnx(m, Path(tmp) / f"{len(timers)}.onnx", weights=weights, bits=bits,
                                           container=container, activations=activations, tt=route)
                        suffix = "" if weights == "float32" else f"_{weights}"
                        if activations == "int8":  # the same file but for MatMulNBits' accuracy level
                            suffix += "_int8act"
                        else:
                            sizes[name][f"onnx{suffix}_bytes"] = info.bytes
                        run = OnnxRuntime(info.path, threads)
                        timers[(name, f"ort{suffix}")] = lambda run=run, v=m.config.vocab_size: runtime_latency(run, v, tokens)
            times: dict[tuple[str, str], list[float]] = {key: [] for key in timers}
            for rep in range(repeats + 1):  # the first pass warms every model up and is not counted
                for key, timer in timers.items():
                    t = timer()
                    if rep:
                        times[key].append(t)
    finally:
        torch.set_num_threads(previous)
    return {name: {**{f"{kind}_ms": 1e3 * statistics.median(times[(n, kind)]) for n, kind in times if n == name},
                   **sizes[name]} for name in models}


def nbits_width(row: dict) -> int | None:
    """The width of a study row's low-bit weights, which onnxruntime runs packed (``MatMulNBits``,
    ``lm.deploy.onnx_nbits``): 2, 3 or 4, read off the row's ``encodings``; None for a row stored otherwise,
    or with GroupReduce maps (not exported n-bit)."""
    widths = {LOW_BITS[e] for e in row.get("encodings", {}).values() if e in LOW_BITS}
    if len(widths) != 1:
        return None
    bits = widths.pop()
    config = row.get("config", {})
    if any((config.get(part) or {}).get("type") == "groupreduce" for part in ("embedding", "decoder")):
        return None
    return bits


def retime(rows: list[dict], tokens: int = 100, onnx: bool = True, seed: int = 0, threads: int = 1) -> dict:
    """Time every stored report row again, side by side in one run (``compare``), on its architecture
    rebuilt from the row's ``config`` with freshly initialised weights; the rows' latency and
    exported-size columns are replaced in place. Returns what the report records under ``timed``.

    The weights' values do not enter these timings or sizes: every kernel (dense, low-rank, the
    TT contraction or its built weight, ``torch.ao``'s and onnxruntime's int8) does the same work
    on any values, and a pruned model's zeros are stored and multiplied as dense. So a report
    whose trained models are gone can still gain columns timed in one run."""
    torch.manual_seed(seed)
    models, nbits = {}, {}
    for r in rows:
        cfg = model_config(r["config"], f"row {r['name']}")
        models[r["name"]] = LanguageModel(cfg, [f"w{i}" for i in range(cfg.vocab_size)]).eval()
        if onnx and (bits := nbits_width(r)):  # its weights put on their grids, as its artifact decodes them
            nbits[r["name"]] = bits
            models[r["name"]] = decode(export_bytes(models[r["name"]], f"q{bits}")[0])
    timed = compare(models, tokens=tokens, threads=threads, onnx=onnx, nbits=nbits)
    for r in rows:
        for key in COLUMNS:
            r.pop(key, None)
        r.update(timed[r["name"]])
    return {"tokens": tokens, "threads": threads, "onnx": onnx, "seed": seed,
            "on": "each row's architecture rebuilt from its config, freshly initialised weights"}
