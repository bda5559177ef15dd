"""Deployment benchmark: the study's model shapes in eager torch, ``torch.ao`` int8 and onnxruntime.

``python -m lm.benchmarks.deploy`` builds freshly initialised models of the small preset's
study shapes (latency and file size do not depend on training), times one token at
batch 1 on one thread for every model and runtime side by side in one run
(``lm.study.latency.compare``), measures the compact artifact and the exported
ONNX files, and judges the deployment targets of issue 17:

* onnxruntime float32 <= 0.5x eager torch, and onnxruntime int8 <= 0.5x ``torch.ao`` int8;
* a TT model's onnxruntime int8 latency within 1.2x of the low-rank model of its shape
  (``tt_paper_scratch`` against ``lr_paper_scratch``);
* the ONNX int8 file of ``lr_tied_ft``'s shape within 1.1x of its compact artifact (and, for scale,
  against its 8-bit artifact);
* the ONNX n-bit files (``weights="nbits"``) of the study's 2-, 3- and 4-bit shapes against their
  artifacts, their codes in 4-bit containers (the default), and the 2-bit ones also in 2-bit containers;
  each also timed with int8 activations (``activations="int8"``: faster, approximate).

TT models are exported by ``export_onnx``'s default route (``tt="load"``: the cores stored, the
weights built when onnxruntime opens the file); each is also timed with ``tt="cores"`` (products
with the cores at every step), for comparison.

Writes ``results/deploy.json`` (stamped with config, seed and commit) and ``results/deploy.md``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from ..compression.export import artifact_size, decode, export_bytes
from ..compression.surgery import compress_model
from ..config import preset
from ..data import DataError, EOS, build_vocab, find_ptb, read_words
from ..model import LanguageModel
from ..results import ROOT, stamp, write_report
from ..study import scratch_model
from ..study.latency import compare
from ..study.methods import load_methods

MB = 1e6
METHODS = ("dense", "lr_lstm_scratch", "lr_paper_scratch", "tt_paper_scratch", "tt_lstm_scratch", "lr_tied_scratch")
TT_CORES = "{} (ONNX: TT cores at every step)"
LOW_BIT = ("lr_tied_scratch", "tt_paper_scratch")  # the shapes of the study's 2- to 4-bit models
LOW_BIT_NAME = "{} q{}"
WIDTHS = (2, 3, 4)  # the study's low-bit widths, each exported in 4-bit containers (export_onnx's default)
NARROW = "{}, 2-bit container"  # a 2-bit model's codes packed 2 bits a number (export_onnx(container=2))


def vocabulary(size: int) -> list[str]:
    """PTB's vocabulary when its files are at hand (the artifact stores it), else placeholder words."""
    try:
        return build_vocab(read_words(find_ptb(allow_download=False) / "ptb.train.txt"))
    except DataError:
        return ["<unk>", EOS] + [f"w{i}" for i in range(size - 2)]


def study_shapes(preset_name: str, methods: tuple[str, ...] = METHODS) -> dict[str, LanguageModel]:
    """Freshly initialised models of the study's from-scratch shapes (as ``lm.study`` builds them)."""
    cfg = preset(preset_name)
    vocab = vocabulary(cfg.model.vocab_size)
    known = {m.name: m for m in load_methods(preset_name)}
    models = {}
    for name in methods:
        m = known[name]
        shaped = LanguageModel(replace(cfg.model, **{**m.shape_fields(), "tie_weights": False}), vocab)
        config = replace(compress_model(shaped, **m.layer_specs()).config, **m.shape_fields()) if m.compress else cfg.model
        models[name] = scratch_model(replace(cfg, model=replace(config, **m.shape_fields())), vocab).eval()
    return models


def run(preset_name: str = "small", tokens: int = 200, repeats: int = 3) -> dict:
    torch.manual_seed(0)
    models = study_shapes(preset_name)
    routes = {}
    for name in [n for n in models if n.startswith("tt_")]:
        routes[TT_CORES.format(name)] = "cores"
        models[TT_CORES.format(name)] = models[name]
    nbits, containers = {}, {}  # the study's low-bit models (lr_tied_ft_q*, tt_paper_ft_qat*): decoded artifacts
    for base, bits in ((b, bits) for b in LOW_BIT for bits in WIDTHS):
        name = LOW_BIT_NAME.format(base, bits)
        nbits[name], models[name] = bits, decode(export_bytes(models[base], f"q{bits}")[0])
        if bits == 2:
            nbits[NARROW.format(name)], containers[NARROW.format(name)], models[NARROW.format(name)] = 2, 2, models[name]
    rows = []
    for name, t in compare(models, tokens=tokens, repeats=repeats, onnx=True, nbits=nbits, tt=routes,
                           containers=containers).items():
        base = name.split(" ")[0]
        quant = f"q{nbits[name]}" if name in nbits else None
        rows.append({"name": name, "artifact_bytes": artifact_size(models[base], quant),
                     "artifact_q8_bytes": artifact_size(models[base], "q8"), **t,
                     "ort_vs_eager": t["ort_ms"] / t["eager_ms"], "ort_int8_vs_torch_int8": t["ort_int8_ms"] / t["int8_ms"]})
    by = {r["name"]: r for r in rows}
    targets = [{"target": f"{r['name']}: onnxruntime float32 <= 0.5x eager", "ratio": r["ort_vs_eager"],
                "met": r["ort_vs_eager"] <= 0.5} for r in rows]
    targets += [{"target": f"{r['name']}: onnxruntime int8 <= 0.5x torch.ao int8", "ratio": r["ort_int8_vs_torch_int8"],
                 "met": r["ort_int8_vs_torch_int8"] <= 0.5} for r in rows]
    lr = by["lr_paper_scratch"]
    for name in ("tt_paper_scratch", TT_CORES.format("tt_paper_scratch")):
        ratio = by[name]["ort_int8_ms"] / lr["ort_int8_ms"]
        targets.append({"target": f"{name}: onnxruntime int8 within 1.2x of lr_paper_scratch "
                        f"(artifacts {by[name]['artifact_bytes'] / MB:.2f} and {lr['artifact_bytes'] / MB:.2f} MB)",
                        "ratio": ratio, "met": ratio <= 1.2})
    tied = by["lr_tied_scratch"]
    ratio = tied["onnx_int8_bytes"] / tied["artifact_bytes"]
    targets.append({"target": "lr_tied (lr_tied_ft's shape): ONNX int8 file <= 1.1x its compact artifact",
                    "ratio": ratio, "met": ratio <= 1.1})
    ratio = tied["onnx_int8_bytes"] / tied["artifact_q8_bytes"]
    targets.append({"target": "lr_tied: ONNX int8 file <= 1.1x its 8-bit compact artifact (lr_tied_ft_q8's)",
                    "ratio": ratio, "met": ratio <= 1.1})
    for name in nbits:  # where the codes keep their width: q4, and q2 in 2-bit containers
        if containers.get(name, 4) == nbits[name]:
            ratio = by[name]["onnx_nbits_bytes"] / by[name]["artifact_bytes"]
            targets.append({"target": f"{name}: ONNX n-bit file <= 1.1x its compact artifact", "ratio": ratio,
                            "met": ratio <= 1.1})
    config = {"preset": preset_name, "tokens": tokens, "repeats": repeats, "threads": 1, "batch": 1,
              "methods": list(models)}
    return {**stamp(config, 0), "rows": rows, "targets": targets}


def markdown(payload: dict) -> str:
    lines = ["# Deployment benchmark", "",
             f"Generated by `python -m lm.benchmarks.deploy` at commit `{payload['commit']}` on {payload['date']}: freshly "
             f"initialised models of the `{payload['config']['preset']}` study's shapes, one token at batch 1 on one "
             "CPU thread, every model and runtime timed side by side in one run (median of "
             f"{payload['config']['repeats']} passes of {payload['config']['tokens']} tokens). Sizes in MB of 10^6 bytes.",
             "TT layers are exported as `lm export` does by default (`--tt load`: the cores stored, each weight built "
             "once when onnxruntime opens the file); the rows marked `TT cores at every step` are the same models "
             "exported with `--tt cores`, for comparison (their eager and torch.ao columns are the same model's).",
             "The `q2`, `q3` and `q4` rows are decoded from 2-, 3- and 4-bit artifacts; their artifact MB is that "
             "artifact's, and their n-bit columns are the export with `--weights nbits` (onnxruntime's `MatMulNBits`), "
             "the codes packed 4 bits a number (the default), or 2 (`--container 2`) in the rows marked so; "
             "*n-bit int8-act* is the same file with int8 activations (`--activations int8`, an approximation: "
             "`python -m lm.benchmarks.activations` scores it).",
             "", "| model | artifact MB | artifact q8 MB | ONNX MB | ONNX int8 MB | ONNX n-bit MB | ms eager "
             "| ms torch.ao int8 | ms ORT | ms ORT int8 | ms ORT n-bit | ms ORT n-bit int8-act | ORT / eager "
             "| ORT int8 / torch.ao int8 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        nbits = ((f"{r['onnx_nbits_bytes'] / MB:.3f}", f"{r['ort_nbits_ms']:.3f}", f"{r['ort_nbits_int8act_ms']:.3f}")
                 if "ort_nbits_ms" in r else ("-", "-", "-"))
        lines.append(f"| {r['name']} | {r['artifact_bytes'] / MB:.3f} | {r['artifact_q8_bytes'] / MB:.3f} "
                     f"| {r['onnx_bytes'] / MB:.3f} | {r['onnx_int8_bytes'] / MB:.3f} | {nbits[0]} | {r['eager_ms']:.3f} "
                     f"| {r['int8_ms']:.3f} | {r['ort_ms']:.3f} | {r['ort_int8_ms']:.3f} | {nbits[1]} | {nbits[2]} "
                     f"| {r['ort_vs_eager']:.2f} | {r['ort_int8_vs_torch_int8']:.2f} |")
    lines += ["", "## Targets", "", "| target | ratio | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['ratio']:.2f} | {'yes' if t['met'] else 'no'} |" for t in payload["targets"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lm.benchmarks.deploy", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "results" / "deploy"), help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    payload = run(args.preset, args.tokens, args.repeats)
    print(write_report(args.out, payload, markdown))


if __name__ == "__main__":
    main()
