"""Command line: ``python -m lm {train,eval,info,study,compress,export,predict,score} ...`` (also installed as ``lm``)."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from .checkpoint import load
from .config import PRESETS, preset
from .data import Corpus, DataError
from .evaluate import perplexity
from .model import count_parameters
from .results import stamp, write_json
from .train import TrainingDiverged, train


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key.strip().replace("-", "_"), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip().replace("-", "_"), value


def cmd_train(args: argparse.Namespace) -> None:
    overrides = dict(args.set)
    for name in ("epochs", "seed", "max_train_tokens"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    cfg = preset(args.preset, **overrides)
    out = Path(args.out or f"runs/{args.preset}")
    results = train(cfg, out, data_dir=args.data_dir, resume=args.resume, device=args.device,
                    results_path=args.results, progress=not args.quiet)
    if results:
        print(f"valid ppl {results['valid_ppl']:.2f}  test ppl {results['test_ppl']:.2f}  "
              f"-> {out / 'model.pt'}")


def cmd_eval(args: argparse.Namespace) -> None:
    model = load(args.checkpoint, map_location=args.device)
    corpus = Corpus.load(args.data_dir)
    if model.vocab is not None and model.vocab != corpus.vocab:
        raise SystemExit(f"{args.checkpoint} was trained on another vocabulary than {args.data_dir or 'PTB'}")
    ppl = {split: perplexity(model, getattr(corpus, split), progress=True) for split in args.splits}
    for split, value in ppl.items():
        print(f"{split} ppl {value:.2f}")
    out = Path(args.results or Path(args.checkpoint).with_name("eval.json"))
    write_json(out, {**stamp({"checkpoint": str(args.checkpoint)}, None), **{f"{s}_ppl": v for s, v in ppl.items()}})


def cmd_info(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    model = load(args.checkpoint)
    info = {
        "parameters": count_parameters(model),
        "file_bytes": Path(args.checkpoint).stat().st_size,
        "config": asdict(model.config),
    }
    print(json.dumps(info, indent=1))


def cmd_study(args: argparse.Namespace) -> None:
    from .study import StudyConfig, run_study

    config = StudyConfig(preset=args.preset, run_dir=args.run_dir or f"runs/study_{args.preset}", checkpoint=args.checkpoint,
                         overrides=dict(args.set), methods=args.methods, eval_tokens=args.eval_tokens,
                         scratch_epochs=args.scratch_epochs, data_dir=args.data_dir, progress=not args.quiet,
                         latency_tokens=args.latency_tokens, onnx=args.onnx,
                         finetune={k: v for k, v in (("epochs", args.finetune_epochs), ("lr", args.finetune_lr))
                                   if v is not None} or None,
                         **({"report_dir": args.report_dir} if args.report_dir else {}))
    payload = run_study(config)
    for t in payload["targets"]:
        print(f"{t['target']}: {t['met']} ({t['measured']}{', gap ' + t['gap'] if t['gap'] else ''})")
    print(f"report: {Path(config.report_dir) / f'study_{args.preset}.md'}")


def cmd_compress(args: argparse.Namespace) -> None:
    from .budget import compress_to_budget

    result = compress_to_budget(args.checkpoint, args.budget_mb, out_dir=args.out, data_dir=args.data_dir,
                                finetune_epochs=args.finetune_epochs, search_tokens=args.search_tokens,
                                progress=not args.quiet)
    print(json.dumps({k: v for k, v in result.items() if k != "candidates"}, indent=1))


def cmd_export(args: argparse.Namespace) -> None:
    from .onnx_export import export_onnx
    from .runtime import load_model

    out = Path(args.out or Path(args.model).with_suffix(".int8.onnx" if args.int8 else ".onnx"))
    info = export_onnx(load_model(args.model), out, int8=args.int8, tt=args.tt)
    print(f"{info.path}: {info.bytes} bytes ({'int8' if info.int8 else 'float32'}, TT layers as {info.tt})")


def cmd_predict(args: argparse.Namespace) -> None:
    from .runtime import open_runtime, predict

    for word, p in predict(open_runtime(args.model, args.runtime), args.text, args.top):
        print(f"{word}\t{p:.4f}")


def cmd_score(args: argparse.Namespace) -> None:
    from .runtime import open_runtime, score

    result = score(open_runtime(args.model, args.runtime), Path(args.file).read_text())
    print(f"tokens {result['tokens']}  perplexity {result['perplexity']:.2f}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lm", description="LSTM language models on PTB, and their compression.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="directory with ptb.{train,valid,test}.txt (default: $PTB_DIR, the cache, a download)")
    common.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")

    t = sub.add_parser("train", parents=[common], help="train a Zaremba-style LSTM language model")
    t.add_argument("--preset", choices=sorted(PRESETS), default="small")
    t.add_argument("--out", help="run directory (default runs/<preset>)")
    t.add_argument("--resume", action="store_true", help="continue from the last finished epoch in --out")
    t.add_argument("--results", help="results JSON path (default <out>/results.json)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--max-train-tokens", type=int)
    t.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set hidden_size=128 --set lr=0.5")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", parents=[common], help="exact valid/test perplexity of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["train", "valid", "test"])
    e.add_argument("--results", help="results JSON path (default: eval.json beside the checkpoint)")
    e.set_defaults(func=cmd_eval, device="cpu")

    i = sub.add_parser("info", help="parameters, file size and config of a checkpoint")
    i.add_argument("checkpoint")
    i.set_defaults(func=cmd_info)

    s = sub.add_parser("study", parents=[common], help="the compression study: every method, cached, with a report")
    s.add_argument("--preset", choices=sorted(PRESETS), default="small")
    s.add_argument("--checkpoint", help="trained dense model (default: train the preset in <run-dir>/dense)")
    s.add_argument("--run-dir", help="where the methods' runs are cached (default runs/study_<preset>)")
    s.add_argument("--report-dir", help="where study_<preset>.{json,md,png} go (default: the repository's results/)")
    s.add_argument("--methods", nargs="+", help="run only these methods (default: all)")
    s.add_argument("--finetune-epochs", type=int)
    s.add_argument("--finetune-lr", type=float)
    s.add_argument("--scratch-epochs", type=int, help="epochs of the from-scratch runs (default: the preset's)")
    s.add_argument("--latency-tokens", type=int, default=100, help="tokens timed per model and pass")
    s.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="also time every model exported to onnxruntime, float32 and int8 (default: when installed)")
    s.add_argument("--eval-tokens", type=int, help="score only a prefix of valid/test (smoke runs; default: exact)")
    s.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set hidden_size=32 --set max_train_tokens=20000")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_study, device="cpu")

    c = sub.add_parser("compress", parents=[common], help="compress a checkpoint to a size budget, then fine-tune")
    c.add_argument("checkpoint")
    c.add_argument("--budget-mb", type=float, required=True, help="artifact size budget in MB (10^6 bytes)")
    c.add_argument("--out", help="output directory (default: compressed_<budget>MB beside the checkpoint)")
    c.add_argument("--finetune-epochs", type=int, default=None, help="default: the study's recipe for the preset size")
    c.add_argument("--search-tokens", type=int, default=20_000, help="validation tokens scored per candidate")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_compress, device="cpu")

    x = sub.add_parser("export", help="export a model's streaming step (ids, state -> logits, state) to ONNX")
    x.add_argument("model", help="a checkpoint or a compact artifact")
    x.add_argument("--format", choices=["onnx"], default="onnx")
    x.add_argument("--int8", action="store_true", help="quantize with onnxruntime's dynamic int8 quantizer")
    x.add_argument("--tt", choices=["cores", "dense"], default="cores",
                   help="TT layers as products with their cores, or with their built weights")
    x.add_argument("--out", help="output file (default: the model's path with .onnx or .int8.onnx)")
    x.set_defaults(func=cmd_export)

    runtime = argparse.ArgumentParser(add_help=False)
    runtime.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                         help="eager torch, or onnxruntime (an .onnx file, or the model exported on the fly)")
    r = sub.add_parser("predict", parents=[runtime], help="next-word suggestions after a text")
    r.add_argument("model", help="a checkpoint, a compact artifact or (with --runtime onnx) an exported .onnx")
    r.add_argument("text")
    r.add_argument("--top", type=_positive, default=5, help="how many suggestions")
    r.set_defaults(func=cmd_predict)

    o = sub.add_parser("score", parents=[runtime], help="per-token perplexity of a text file")
    o.add_argument("model", help="a checkpoint, a compact artifact or (with --runtime onnx) an exported .onnx")
    o.add_argument("file")
    o.set_defaults(func=cmd_score)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, TrainingDiverged, FileNotFoundError, ValueError) as err:
        sys.exit(f"lm {args.command}: error: {err}")


if __name__ == "__main__":
    main()
