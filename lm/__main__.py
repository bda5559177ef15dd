"""Command line: ``python -m lm {train,eval,info,curve,study,compress,convert,ship,export,predict,score} ...`` (also installed as ``lm``).

Every number, choice and path is checked when the arguments are parsed: a bad one stops
with ``lm <command>: error: <what is allowed>`` and exit status 2, before anything runs
(``tests/lm/test_main.py`` holds the table of bad inputs and their messages, which
docs/lm.md repeats). A model file that is not one (``ModelFileError``: truncated, corrupted,
foreign, of another version), whichever command reads it and whenever, is bad input too:
``main`` stops with ``lm <command>: error: <file>: <what is wrong>``, one line, and exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import NoReturn

import torch

from . import modelfile
from .allocator import retain_freed_memory
from .checkpoint import (ARTIFACT_FILE, MODEL_FILE, TRAIN_STATE_FILE, convert_legacy, load, load_train_state,
                         model_from_file, resolve)
from .config import PRESETS, ModelConfig, TrainConfig, preset
from .data import Corpus, DataError
from .evaluate import perplexity
from .model import DECODERS, EMBEDDINGS, LSTMS, count_parameters
from .results import stamp, write_json
from .train import TrainingDiverged, continue_state, train


# -- argument types: each returns the parsed value or raises ArgumentTypeError saying what is allowed ---------
def _number(text: str, kind: type, low: float, low_open: bool = False, high: float | None = None,
            high_open: bool = False):
    try:
        value = kind(text)
    except ValueError:
        value = None
    ok = value is not None and math.isfinite(value) and (value > low if low_open else value >= low)
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        what = "a whole number" if kind is int else "a finite number"
        show = (lambda x: str(int(x))) if kind is int else (lambda x: f"{x:g}")
        bounds = f"{'>' if low_open else '>='} {show(low)}" + (
            f" and {'<' if high_open else '<='} {show(high)}" if high is not None else "")
        raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 1)


def token_count(text: str) -> int:
    return _number(text, int, 2)


def seed(text: str) -> int:
    return _number(text, int, 0, high=2**32 - 1)


def positive_float(text: str) -> float:
    return _number(text, float, 0, low_open=True)


def device(text: str) -> str:
    """cpu, cuda or cuda:i where this machine has it."""
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:INDEX, got {text!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine "
                                             f"(torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:INDEX, got {text!r}")
    return text


def model_path(text: str) -> str:
    """An existing checkpoint or artifact (as typed: the study's recipes hold it), or a run directory holding one."""
    try:
        return text if Path(text).is_file() else str(resolve(text))
    except (FileNotFoundError, modelfile.ModelFileError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def directory(text: str) -> str:
    """A directory that exists."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is {'a file' if path.exists() else 'missing'}; expected a directory")
    return text


def out_dir(text: str) -> str:
    """A directory to write into (created when missing), not a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; expected a directory")
    return text


def out_file(text: str) -> str:
    """A file to write, not a directory."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; expected a file path, e.g. {path / 'results.json'}")
    return text


# --set: every config field, with what it allows
_LAYERS = {"embedding": EMBEDDINGS, "lstm": LSTMS, "decoder": DECODERS}
FIELD_RULES = {
    "epochs": (positive_int, "a whole number >= 1"), "batch_size": (positive_int, "a whole number >= 1"),
    "bptt": (positive_int, "a whole number >= 1"), "hidden_size": (positive_int, "a whole number >= 1"),
    "num_layers": (positive_int, "a whole number >= 1"), "vocab_size": (positive_int, "a whole number >= 1"),
    "decay_start": (lambda t: _number(t, int, 0), "a whole number >= 0"), "seed": (seed, "a whole number >= 0"),
    "max_train_tokens": (token_count, "a whole number >= 2, or None"),
    "embedding_size": (positive_int, "a whole number >= 1, or None"),
    "lr": (positive_float, "a finite number > 0"), "init_scale": (positive_float, "a finite number > 0"),
    "clip": (positive_float, "a finite number > 0"),
    "lr_decay": (lambda t: _number(t, float, 0, low_open=True, high=1), "a number in (0, 1]"),
    "dropout": (lambda t: _number(t, float, 0, high=1, high_open=True), "a probability in [0, 1)"),
    "min_gain": (lambda t: _number(t, float, 0, high=1, high_open=True), "a number in [0, 1), or None"),
}
NULLABLE = {"max_train_tokens", "embedding_size", "min_gain"}


def override(text: str) -> tuple[str, object]:
    """``key=value`` for a config field, the value checked against the field's rule (or its type)."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    known = {f.name: f for f in (*fields(TrainConfig), *fields(ModelConfig)) if f.name != "model"}
    if not sep or key not in known:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY one of {', '.join(sorted(known))}; got {text!r}")
    raw = raw.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if value is None and key in NULLABLE:
        return key, None
    if key in FIELD_RULES:
        check, allowed = FIELD_RULES[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise argparse.ArgumentTypeError(f"{key} must be {allowed}, got {raw!r}")
        try:
            return key, check(str(value))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{key} must be {allowed}, got {raw!r}") from None
    if key in _LAYERS:
        if not isinstance(value, dict) or value.get("type", "dense") not in _LAYERS[key]:
            raise argparse.ArgumentTypeError(f"{key} must be a layer spec like {{'type': 'dense'}} with type one of "
                                             f"{sorted(_LAYERS[key])}, got {raw!r}")
        return key, value
    default = getattr(TrainConfig(), key, None) if key in {f.name for f in fields(TrainConfig)} \
        else getattr(ModelConfig(), key)
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(type(default))
    if kinds and not (isinstance(value, kinds) and (isinstance(value, bool) == isinstance(default, bool))):
        raise argparse.ArgumentTypeError(f"{key} must be a {type(default).__name__}, got {raw!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{key} must be finite, got {raw!r}")
    return key, value


# -- commands ----------------------------------------------------------------------------------------------
def _train_config(args: argparse.Namespace) -> TrainConfig:
    overrides = dict(args.set)
    for name in ("epochs", "seed", "max_train_tokens"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return preset(args.preset, **overrides)


def cmd_train(args: argparse.Namespace) -> None:
    out = Path(args.out or f"runs/{args.preset}")
    if args.continue_from:
        from .curves import read_history

        history = read_history(args.history)
        state = continue_state(args.config, args.continue_from, history, out)
        print(f"{state}: continues {args.continue_from} after its epoch {len(history)}")
    results = train(args.config, out, data_dir=args.data_dir, resume=args.resume or bool(args.continue_from),
                    device=args.device, results_path=args.results, progress=not args.quiet,
                    save_every=args.save_every, compiled=args.compile)
    if results:
        print(f"valid ppl {results['valid_ppl']:.2f}  test ppl {results['test_ppl']:.2f}  -> {out / MODEL_FILE}")


def _load(path: Path, map_location: str = "cpu"):
    f = modelfile.read(path, ("checkpoint", "artifact", "train_state"))
    return f, model_from_file(f, path).to(map_location)


def cmd_eval(args: argparse.Namespace) -> None:
    model = args.opened if args.runtime == "onnx" else _load(Path(args.model), args.device)[1]
    corpus = Corpus.load(args.data_dir)
    if model.vocab is not None and model.vocab != corpus.vocab:
        raise SystemExit(f"{args.model} was trained on another vocabulary than {args.data_dir or 'PTB'}")
    if args.runtime == "onnx":  # a token at a time, the state carried: each target once, as ``perplexity`` scores
        from .deploy.runtime import stream_losses

        ppl = {split: math.exp(stream_losses(model, getattr(corpus, split).numpy(), desc=f"eval {split}").mean())
               for split in args.splits}
    else:
        ppl = {split: perplexity(model, getattr(corpus, split), progress=True) for split in args.splits}
    for split, value in ppl.items():
        print(f"{split} ppl {value:.2f}")
    out = Path(args.results or Path(args.model).with_name("eval.json"))
    write_json(out, {**stamp({"checkpoint": str(args.model), "runtime": args.runtime}, None),
                     **{f"{s}_ppl": v for s, v in ppl.items()}})


def cmd_info(args: argparse.Namespace) -> None:
    f, model = _load(Path(args.checkpoint))
    info = {"file": str(args.checkpoint), "kind": f.kind, "format_version": modelfile.VERSION,
            "parameters": count_parameters(model), "file_bytes": f.bytes, "config": asdict(model.config)}
    print(json.dumps(info, indent=1))


def cmd_curve(args: argparse.Namespace) -> None:
    from . import curves

    runs = {}
    for path in args.runs:
        runs[str(path)] = curves.read_history(path)  # a missing or bad one: main's message
        print(f"## {path}\n\n{curves.table(runs[str(path)])}\n")
    if args.json:
        write_json(args.json, {**stamp({"runs": [str(p) for p in args.runs]}, None), "runs": runs})
    if args.out:
        print(f"plot: {curves.plot(runs, args.out, args.title or ', '.join(runs))}")


def cmd_study(args: argparse.Namespace) -> None:
    from .study import StudyConfig, run_study

    config = StudyConfig(preset=args.preset, run_dir=args.run_dir or f"runs/study_{args.preset}",
                         checkpoint=args.checkpoint,
                         overrides=dict(args.set), methods=args.methods, eval_tokens=args.eval_tokens,
                         scratch_epochs=args.scratch_epochs, data_dir=args.data_dir, progress=not args.quiet,
                         latency_tokens=args.latency_tokens, onnx=args.onnx, save_every=args.save_every,
                         device=str(args.device), report=args.report, jobs=args.jobs,
                         finetune={k: v for k, v in (("epochs", args.finetune_epochs), ("lr", args.finetune_lr))
                                   if v is not None} or None,
                         **({"report_dir": args.report_dir} if args.report_dir else {}))
    if args.status:
        from .study import Study

        print("\n".join(Study(config).status()))
        return
    if args.report_only:
        from .study.report import rerender

        payload = rerender(args.preset, config.report_dir, retime_tokens=args.latency_tokens if args.retime else None)
    else:
        payload = run_study(config)
    if payload is None:
        print(f"runs: {config.run_dir} (no report: time and report them with a study run on the CPU)")
        return
    for t in payload["targets"]:
        print(f"{t['target']}: {t['met']} ({t['measured']}{', gap ' + t['gap'] if t['gap'] else ''})")
    print(f"report: {Path(config.report_dir) / f'study_{args.preset}.md'}")


def cmd_compress(args: argparse.Namespace) -> None:
    from .study.budget import compress_to_budget

    result = compress_to_budget(args.checkpoint, args.budget_mb, out_dir=args.out, data_dir=args.data_dir,
                                finetune_epochs=args.finetune_epochs, search_tokens=args.search_tokens,
                                progress=not args.quiet)
    print(json.dumps({k: v for k, v in result.items() if k != "candidates"}, indent=1))


def cmd_convert(args: argparse.Namespace) -> None:
    size = convert_legacy(args.old, args.new)
    print(f"{args.old} -> {args.new} ({size} bytes)")


def cmd_ship(args: argparse.Namespace) -> None:
    from .study.ship import MODELS, ship, write_readme

    run_dirs = dict(args.run_dir) or {p: f"runs/study_{p}" for p in PRESETS}
    manifest = ship(json.loads(Path(args.front).read_text()), run_dirs, args.out, max_mb=args.max_mb)
    for e in manifest["models"]:
        print(f"{e['name']}: {e['file'] or e['note']}")
    if Path(args.out).resolve() == MODELS.resolve():  # the repository's models: its README lists them
        write_readme(manifest)


def cmd_export(args: argparse.Namespace) -> None:
    from .deploy.onnx_export import export_onnx

    model = Path(args.model)
    suffix = {"float32": ".onnx", "int8": ".int8.onnx", "nbits": f".q{args.bits}.onnx"}[args.weights]
    out = Path(args.out or model.with_name(model.name.split(".")[0] + suffix))
    info = export_onnx(load(model), out, weights=args.weights, bits=args.bits, container=args.container,
                       activations=args.activations, tt=args.tt)
    what = (f"{info.bits}-bit weights in {info.container}-bit codes, {info.activations} activations" if info.bits
            else f"{info.weights} weights")
    print(f"{info.path}: {info.bytes} bytes ({what}, TT layers as {info.tt})")


def cmd_predict(args: argparse.Namespace) -> None:
    from .deploy.runtime import predict

    for word, p in predict(args.opened, args.text, args.top):
        print(f"{word}\t{p:.4f}")


def cmd_score(args: argparse.Namespace) -> None:
    from .deploy.runtime import score

    result = score(args.opened, Path(args.file).read_text())
    print(f"tokens {result['tokens']}  perplexity {result['perplexity']:.2f}")


def runnable_model(text: str) -> str:
    """A model file or run directory (``model_path``), or an exported ``.onnx`` file."""
    if text.endswith(".onnx"):
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"{text!r} is {'a directory' if Path(text).exists() else 'missing'}; "
                                             "expected an .onnx file written by `lm export`")
        return text
    return model_path(text)


def in_file(text: str) -> str:
    """A file that exists."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is {'a directory' if path.exists() else 'missing'}; expected a file")
    return text


def preset_dir(text: str) -> tuple[str, str]:
    """``PRESET=DIR``."""
    name, sep, path = text.partition("=")
    if not sep or name not in PRESETS:
        raise argparse.ArgumentTypeError(f"expected PRESET=DIR with PRESET one of {sorted(PRESETS)}, got {text!r}")
    return name, directory(path)


# -- the parser --------------------------------------------------------------------------------------------
class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where there is a default to show and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def method_names() -> list[str]:
    """Every preset's method names, each once (a study checks them against its preset's)."""
    from .study.methods import load_methods, presets

    return list(dict.fromkeys(m.name for p in presets() for m in load_methods(p)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lm", description="LSTM language models on PTB, and their compression.",
                                formatter_class=_Help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=directory,
                        help="directory with ptb.{train,valid,test}.txt (default: $PTB_DIR, the cache, a download)")
    common.add_argument("--device", type=device, default=None, help="cpu, cuda or cuda:INDEX (default: cuda if available)")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", help="no progress bars")
    sets = "override a preset field, e.g. --set hidden_size=128 --set lr=0.5 (repeatable)"

    def command(name: str, help: str, parents=()) -> argparse.ArgumentParser:
        c = sub.add_parser(name, parents=list(parents), help=help, description=help, formatter_class=_Help)
        c.set_defaults(parser=c)
        return c

    t = command("train", "train a Zaremba-style LSTM language model", [common, quiet])
    t.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model size and recipe")
    t.add_argument("--out", type=out_dir, help="run directory (default: runs/<preset>)")
    t.add_argument("--resume", action="store_true",
                   help=f"continue from the last save in --out (needs its {TRAIN_STATE_FILE})")
    t.add_argument("--save-every", type=positive_float, metavar="MINUTES",
                   help="also save the training state within an epoch, every MINUTES (a long epoch killed loses at "
                        "most that much; default: at epoch ends only)")
    t.add_argument("--continue-from", type=model_path, metavar="CHECKPOINT",
                   help="continue a run whose training state is lost from its checkpoint, with --history: SGD restarts "
                        "from its weights (and averaging, if the schedule has reached it) at the next epoch, in --out")
    t.add_argument("--history", type=in_file, metavar="JSON",
                   help="with --continue-from: the run's per-epoch history (its results JSON, or any JSON with a "
                        "'history' list)")
    t.add_argument("--compile", action="store_true",
                   help="run the training steps through torch.compile (on CUDA as CUDA graphs: see "
                        "lm.benchmarks.train_speed --compile for its speed there); evaluation stays eager")
    t.add_argument("--results", type=out_file, help="results JSON path (default: <out>/results.json)")
    t.add_argument("--epochs", type=positive_int, help="number of epochs, >= 1 (default: the preset's)")
    t.add_argument("--seed", type=seed, help="random seed, >= 0 (default: the preset's)")
    t.add_argument("--max-train-tokens", type=token_count,
                   help="train on this many first tokens of PTB's training split, >= 2 (default: the preset's)")
    t.add_argument("--set", type=override, action="append", default=[], metavar="KEY=VALUE", help=sets)
    t.set_defaults(func=cmd_train)

    runtime = argparse.ArgumentParser(add_help=False)
    runtime.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                         help="eager torch, or onnxruntime (an .onnx file, or the model exported on the fly)")
    runnable = f"model file, run directory with {MODEL_FILE} or {ARTIFACT_FILE}, or (--runtime onnx) an exported .onnx"
    e = command("eval", "exact valid/test perplexity of a checkpoint, compact artifact or exported .onnx",
                [common, runtime])
    e.add_argument("model", type=runnable_model, help=runnable)
    e.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["train", "valid", "test"],
                   help="splits to score")
    e.add_argument("--results", type=out_file, help="results JSON path (default: eval.json beside the model file)")
    e.set_defaults(func=cmd_eval, device="cpu")

    i = command("info", "kind, parameters, file size and config of a checkpoint or compact artifact")
    i.add_argument("checkpoint", type=model_path, help=f"model file, or a run directory with {MODEL_FILE} or {ARTIFACT_FILE}")
    i.set_defaults(func=cmd_info)

    u = command("curve", "a run's per-epoch history (while it trains, or after) as a table, and a plot")
    u.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help=f"run directory ({TRAIN_STATE_FILE} or results.json), or one of those files")
    u.add_argument("--out", type=out_file, help="the plot (.png): validation and training perplexity per epoch")
    u.add_argument("--json", type=out_file, help="also write the histories, stamped, to this JSON")
    u.add_argument("--title", help="the plot's title (default: the runs' paths)")
    u.set_defaults(func=cmd_curve)

    names = method_names()
    s = command("study", "the compression study: every method, cached, with a report", [common, quiet])
    s.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model size and recipe")
    s.add_argument("--checkpoint", type=model_path,
                   help="trained dense model to reuse (default: train the preset in <run-dir>/dense, or reuse it there)")
    s.add_argument("--run-dir", type=out_dir, help="where the methods' runs are cached (default: runs/study_<preset>)")
    s.add_argument("--report-dir", type=out_dir,
                   help="where study_<preset>.{json,md,png} go (default: the repository's results/)")
    s.add_argument("--methods", nargs="+", choices=names, metavar="METHOD",
                   help="run only these methods (default: all): " + ", ".join(names))
    s.add_argument("--finetune-epochs", type=positive_int, help="fine-tuning epochs, >= 1 (default: the preset's recipe)")
    s.add_argument("--finetune-lr", type=positive_float, help="fine-tuning learning rate, > 0 (default: the preset's recipe)")
    s.add_argument("--scratch-epochs", type=positive_int, help="epochs of the from-scratch runs, >= 1 (default: the preset's)")
    s.add_argument("--save-every", type=positive_float, metavar="MINUTES",
                   help="also save every training run's state within an epoch, every MINUTES (resumed by the next "
                        "study run; default: at epoch ends only)")
    s.add_argument("--jobs", type=positive_int, default=1,
                   help="methods trained at once on the CPU, each in a process of its own with the threads shared "
                        "out, a method once the rows it needs are done; the rows are those of one process at the same "
                        "thread count (default: 1)")
    s.add_argument("--latency-tokens", type=positive_int, default=100, help="tokens timed per model and pass")
    s.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="also time every model exported to onnxruntime, float32 and int8, and score the 2-4-bit rows "
                        "with int8 activations there (default: when installed)")
    s.add_argument("--eval-tokens", type=token_count,
                   help="score only this many first tokens of valid/test, >= 2 (smoke runs; default: all, exactly)")
    s.add_argument("--set", type=override, action="append", default=[], metavar="KEY=VALUE", help=sets)
    s.add_argument("--report-only", action="store_true",
                   help="rewrite the report (and the front) from the rows stored in <report-dir>/study_<preset>.json, "
                        "with the current published points and targets; nothing trained or scored")
    s.add_argument("--status", action="store_true",
                   help="say where each method stands (its row, or its training's epochs so far and last save), "
                        "from <run-dir>, while a study runs or after; nothing run")
    s.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="time the finished methods and write the report (--no-report: run the methods only, on "
                        "another machine's GPU say, to be reported by a later study run on the CPU)")
    s.add_argument("--retime", action="store_true",
                   help="with --report-only: time every row again, side by side in this run (eager, torch.ao int8, "
                        "onnxruntime float32 and int8), on its architecture rebuilt from its config")
    s.set_defaults(func=cmd_study, device="cpu")

    c = command("compress", "compress a checkpoint to a size budget, then fine-tune", [common, quiet])
    c.add_argument("checkpoint", type=model_path, help="trained dense model file or run directory")
    c.add_argument("--budget-mb", type=positive_float, required=True, help="artifact size budget in MB (10^6 bytes), > 0")
    c.add_argument("--out", type=out_dir, help="output directory (default: compressed_<budget>MB beside the checkpoint)")
    c.add_argument("--finetune-epochs", type=positive_int, help="default: the study's recipe for the preset size")
    c.add_argument("--search-tokens", type=token_count, default=20_000, help="validation tokens scored per candidate")
    c.set_defaults(func=cmd_compress, device="cpu")

    v = command("convert", "convert a checkpoint of the retired torch.save format (read with weights_only=True)")
    v.add_argument("old", type=Path, help="the legacy .pt file (a file you trust)")
    v.add_argument("new", type=out_file, help=f"the new model file, e.g. {MODEL_FILE}")
    v.add_argument("--legacy", action="store_true", required=True,
                   help="confirm that OLD is a legacy torch.save file to convert (required)")
    v.set_defaults(func=cmd_convert)

    h = command("ship", "copy the study front's compact artifacts into models/ and write its manifest.json (and, "
                        "into this repository's models/, the README's table of them)")
    h.add_argument("--front", type=Path, default=Path("results/study_front.json"), help="the front's results JSON")
    h.add_argument("--run-dir", type=preset_dir, action="append", default=[], metavar="PRESET=DIR",
                   help="a preset's study run directory, repeatable (default: runs/study_<preset> for each)")
    h.add_argument("--out", type=out_dir, default="models", help="where the artifacts and manifest.json go")
    h.add_argument("--max-mb", type=positive_float, default=5.0, help="ship only front models up to this size")
    h.set_defaults(func=cmd_ship)

    x = command("export", "export a model's streaming step (ids, state -> logits, state) to ONNX, with its vocabulary")
    x.add_argument("model", type=model_path, help=f"model file, or a run directory with {MODEL_FILE} or {ARTIFACT_FILE}")
    x.add_argument("--format", choices=["onnx"], default="onnx", help="the exported format")
    weights = x.add_mutually_exclusive_group()
    weights.add_argument("--weights", choices=["float32", "int8", "nbits"], default="float32",
                         help="float32; int8 (onnxruntime's dynamic quantizer); or nbits: a 2-, 3- or 4-bit "
                              "artifact's own weights as their codes (onnxruntime's MatMulNBits)")
    weights.add_argument("--int8", dest="weights", action="store_const", const="int8", help="same as --weights int8")
    x.add_argument("--container", type=int, choices=[4, 2],
                   help="with --weights nbits: the bits each code is packed in (default 4: onnxruntime's fast CPU "
                        "kernel; 2, for a 2-bit artifact: the smaller file, a slower kernel)")
    x.add_argument("--activations", choices=["float32", "int8"],
                   help="with --weights nbits: what the products compute with (default float32; int8: the inputs "
                        "quantized per block, onnxruntime's integer kernels: faster, approximate)")
    x.add_argument("--tt", choices=["load", "cores", "dense"],
                   help="TT layers: load (default; the cores stored, each weight built once when the runtime opens "
                        "the file), cores (products with the cores at every step) or dense (the built weights stored); "
                        "with --weights nbits, load or cores (the cores' codes stored either way)")
    x.add_argument("--out", type=out_file,
                   help="the .onnx file (default: beside the model, NAME.onnx, NAME.int8.onnx or NAME.q<bits>.onnx)")
    x.set_defaults(func=cmd_export)

    r = command("predict", "next-word suggestions after a text", [runtime])
    r.add_argument("model", type=runnable_model, help=runnable)
    r.add_argument("text", help="the words typed so far")
    r.add_argument("--top", type=positive_int, default=5, help="how many suggestions, >= 1")
    r.set_defaults(func=cmd_predict)

    o = command("score", "per-token perplexity of a text file", [runtime])
    o.add_argument("model", type=runnable_model, help=runnable)
    o.add_argument("file", type=in_file, help="a text file, one sentence a line")
    o.set_defaults(func=cmd_score)
    return p


def _check(args: argparse.Namespace) -> None:
    """The checks that need several arguments at once; ``parser.error`` on failure."""
    if args.command in ("train", "study"):
        try:
            config = _train_config(args) if args.command == "train" else preset(args.preset, **dict(args.set))
        except (ValueError, TypeError) as err:
            args.parser.error(str(err))
        if config.max_train_tokens is not None and config.max_train_tokens < 2 * config.batch_size:
            args.parser.error(f"max_train_tokens {config.max_train_tokens} is too few for batch_size "
                              f"{config.batch_size}: at least {2 * config.batch_size} (two tokens per stream)")
        args.config = config
    if args.command == "study" and args.jobs > 1 and str(args.device) != "cpu":
        args.parser.error(f"argument --jobs: methods run side by side on the CPU only, not on {args.device}")
    if args.command == "study" and args.retime and not args.report_only:
        args.parser.error("argument --retime: only with --report-only (a study run times its models anyway)")
    if args.command == "study" and args.status and args.report_only:
        args.parser.error("argument --status: not with --report-only")
    if args.command == "study" and args.report_only and not args.report:
        args.parser.error("argument --no-report: not with --report-only, which writes only the report")
    runs = args.command in ("eval", "predict", "score")  # the commands with --runtime
    if runs and args.model.endswith(".onnx") and args.runtime != "onnx":
        args.parser.error(f"{args.model} is an ONNX file: run it with --runtime onnx")
    if args.command == "eval" and args.runtime == "onnx" and args.device != "cpu":
        args.parser.error(f"argument --device: {args.device} with --runtime onnx, which runs on the CPU")
    if args.command == "export" or runs and args.runtime == "onnx":
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            args.parser.error("onnxruntime is not installed: pip install 'ttlayers[export]' (or -e '.[export]')")
    if args.command in ("predict", "score") or runs and args.runtime == "onnx":
        # a model file that cannot be opened, or no step model, is bad input (eval opens a torch model on --device)
        from .deploy.runtime import open_runtime

        try:
            args.opened = open_runtime(args.model, args.runtime)
        except ValueError as err:  # a ModelFileError, or an .onnx file that is no step model
            _bad_file(args, err)
    if args.command == "export":
        args.bits = None
        if args.weights == "nbits":
            from .deploy.onnx_export import artifact_bits

            try:
                args.bits = artifact_bits(args.model)
            except (modelfile.ModelFileError, ValueError) as err:
                args.parser.error(f"--weights nbits: {err}")
            if args.bits is None:
                args.parser.error(f"--weights nbits: {args.model} holds no 2-, 3- or 4-bit weights (a q2, q3 or q4 "
                                  "artifact of the study does); use --weights int8 to quantize it")
            if args.tt == "dense":
                args.parser.error("--weights nbits keeps the TT cores as their codes: --tt load or cores, not dense")
            if args.container is not None and args.container < args.bits:
                args.parser.error(f"--container {args.container}: {args.model} holds {args.bits}-bit codes")
        elif args.container is not None or args.activations is not None:
            args.parser.error("--container and --activations go with --weights nbits")
    if args.command == "train" and (args.continue_from is None) != (args.history is None):
        args.parser.error("--continue-from and --history go together (the checkpoint and the history of its run)")
    if args.command == "train" and args.continue_from and args.resume:
        args.parser.error("--continue-from starts the continuation; --resume continues it after that")
    if args.command == "train" and args.resume:
        state = Path(args.out or f"runs/{args.preset}") / TRAIN_STATE_FILE
        if not state.is_file():
            args.parser.error(f"--resume: nothing to resume, {state} does not exist (train without --resume to start)")
        load_train_state(state)  # a bad one stops here (ModelFileError), not after PTB is read and the model built


def _bad_file(args: argparse.Namespace, err: Exception) -> NoReturn:
    """A model file that cannot be opened is bad input, as a bad argument is: exit status 2, with one line
    naming the file and what is wrong (``ModelFileError``'s message), and no usage (the command line was right)."""
    args.parser.exit(2, f"{args.parser.prog}: error: {err}\n")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        _check(args)
        retain_freed_memory()  # every command's (tokens, vocab) buffers reused from step to step (lm.allocator)
        args.func(args)
    except modelfile.ModelFileError as err:  # whichever command read the file, and whenever (a ValueError too)
        _bad_file(args, err)
    except (DataError, TrainingDiverged, FileNotFoundError, ValueError) as err:
        sys.exit(f"lm {args.command}: error: {err}")


if __name__ == "__main__":
    main()
