"""Command line: ``python -m lm {train,eval,info} ...`` (also installed as ``lm``)."""

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
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, TrainingDiverged, FileNotFoundError, ValueError) as err:
        sys.exit(f"lm {args.command}: error: {err}")


if __name__ == "__main__":
    main()
