"""The compression study: every method on one preset, cached per method and resumable.

``python -m lm study --preset small --checkpoint runs/small/model.safetensors`` takes a trained
dense model (or trains the preset first), then for every method: compresses it,
fine-tunes or trains it from scratch where the method says so, exports the compact
artifact, decodes that artifact and measures its exact perplexities (and a 2-, 3- or 4-bit artifact's test perplexity in
onnxruntime with int8 activations, a column of its own, when onnxruntime is installed). Each finished
method leaves ``<run_dir>/<name>/result.json`` and is skipped on the next run while
its recipe is unchanged; training resumes after a kill, losing at most one epoch (or, with
``save_every``, that many minutes). Each method starts from the preset's seed, so that its row is the same
whether it runs after others or alone (``--methods``: one process a method, one per core).
A final pass times every artifact side by side (one token, batch 1, one thread,
eager and int8, and exported to onnxruntime, float32 and int8, when it is installed) and
writes the results JSON, the markdown report and the Pareto plot.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import multiprocessing
import tempfile
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import ARTIFACT_FILE, MODEL_FILE, TRAIN_STATE_FILE, load, load_train_state
from ..compression.export import load_artifact
from ..compression.surgery import compress_model
from ..curves import read_history
from ..config import ModelConfig, TrainConfig, preset
from ..data import Corpus
from ..distill import Distillation
from ..model import LanguageModel, count_parameters
from ..regularize import Regularization
from ..results import CODE_COMMIT, ROOT, stamp, write_json
from ..train import train
from . import pipeline, report
from .latency import compare, nbits_width
from .methods import Finetune, Method, load_finetune, load_methods, presets


def scratch_model(cfg: TrainConfig, vocab: list[str] | None) -> LanguageModel:
    """A fresh compressed model with Zaremba's init: every dense tensor uniform in
    ±init_scale, and every factorised layer (TT, low-rank, GroupReduce) drawn by its own
    init and scaled so that its reconstructed weight has the same standard deviation
    (uniform entries in each of several TT cores would multiply to almost zero)."""
    torch.manual_seed(cfg.seed)
    model = LanguageModel(cfg.model, vocab)
    model.init_uniform(cfg.init_scale)
    target = cfg.init_scale / math.sqrt(3)
    with torch.no_grad():
        for module in model.modules():
            if not hasattr(module, "dense_weight"):
                continue
            module.reset_parameters()
            depth = len(module.cores) if hasattr(module, "cores") else 2  # factors in each product
            scale = (target / module.dense_weight().std()) ** (1 / depth)
            for name, p in module.named_parameters():
                if not name.endswith("bias"):
                    p.mul_(scale)
                else:
                    nn.init.uniform_(p, -cfg.init_scale, cfg.init_scale)
    return model


def scratch_shape(m: Method, dense: ModelConfig, counts: torch.Tensor, vocab: list[str] | None = None) -> ModelConfig:
    """The model config of from-scratch method ``m`` on the preset's ``dense`` config: its layer specs
    resolved (TT shapes and ranks) on an untrained dense model of the method's shape (untied there: a
    dense LSTM's output does not match a reshaped embedding), then its ``shape``. ``counts``: the
    training set's word counts (vocab_size,), which GroupReduce needs."""
    shaped = LanguageModel(replace(dense, **{**m.shape_fields(), "tie_weights": False}), vocab)
    return replace(compress_model(shaped, counts=counts, **m.layer_specs()).config, **m.shape_fields())


@dataclass
class StudyConfig:
    preset: str = "small"
    run_dir: str = "runs/study_small"
    checkpoint: str | None = None  # the trained dense model; None trains the preset in run_dir/dense
    overrides: dict = field(default_factory=dict)  # preset overrides (tests shrink the model and the data)
    finetune: dict | None = None  # overrides of the preset's fine-tuning recipe (epochs, lr, dropout)
    scratch_epochs: int | None = None  # None: the preset's
    eval_tokens: int | None = None  # score a prefix of valid/test (tests only); None: the whole splits, exactly
    latency_tokens: int = 100
    onnx: bool | None = None  # time the onnxruntime exports too; None: when onnxruntime is installed
    methods: list[str] | None = None  # None: all
    report_dir: str = str(ROOT / "results")
    data_dir: str | None = None
    progress: bool = True
    save_every: float | None = None  # minutes between saves within an epoch of every training run (lm.train.train)
    device: str = "cpu"  # where the methods train and are scored (a GPU: "cuda"); timings are always on the CPU
    report: bool = True  # False: run the methods only; a later study run, on the CPU, times and reports them
    jobs: int = 1  # methods run at once, each in a process of its own (the CPU's threads shared out)


class Study:
    POLL_S = 60.0  # seconds between looks at the training states of the methods run in processes

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.cfg = preset(config.preset, **config.overrides)
        self.finetune = {**load_finetune(config.preset).to_dict(), **(config.finetune or {})}
        self.run_dir = Path(config.run_dir)
        self.corpus = Corpus.load(config.data_dir)
        self.all_methods = load_methods(config.preset)
        known = {m.name: m for m in self.all_methods}
        names = config.methods or list(known)
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {sorted(known)}")
        # dependencies first: every base, and dense unless every method starts from scratch or from a base
        order, i = [n for n in names if n != "dense"], 0
        while i < len(order):  # a base's own base too (chains such as lr_tied_scratch -> lr_tied_ft -> its QAT)
            base = known[order[i]].base
            if base and base not in order:
                order.insert(i, base)
            else:
                i += 1
        self.needs_dense = bool(config.checkpoint) or "dense" in names or any(
            (not known[n].base and known[n].train != "scratch") or (known[n].distill and known[n].distill.teacher)
            for n in order)
        self.methods = [known[n] for n in ["dense"] * self.needs_dense + order]
        self.onnx = config.onnx if config.onnx is not None else importlib.util.find_spec("onnxruntime") is not None

    # -- pieces ---------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        if self.config.progress:
            tqdm.write(text)

    def stream(self, split: str) -> torch.Tensor:
        s = getattr(self.corpus, split)
        return s[: self.config.eval_tokens] if self.config.eval_tokens else s

    def counts(self) -> torch.Tensor:
        train = self.corpus.train[: self.cfg.max_train_tokens] if self.cfg.max_train_tokens else self.corpus.train
        return torch.bincount(train, minlength=self.cfg.model.vocab_size)

    def dense_model(self) -> LanguageModel:
        if self.config.checkpoint:
            self.log(f"reusing the dense model {self.config.checkpoint}")
            model = load(self.config.checkpoint)
            if model.vocab is not None and model.vocab != self.corpus.vocab:
                raise ValueError(f"{self.config.checkpoint} was trained on another vocabulary")
            return model
        out = self.run_dir / "dense" / "train"
        if not (out / "results.json").is_file() or not (out / MODEL_FILE).is_file():
            self.log(f"training the dense {self.config.preset} model in {out}")
            train(self.cfg, out, data_dir=self.config.data_dir, resume=True, progress=self.config.progress,
                  save_every=self.config.save_every, device=self.config.device)
        else:
            self.log(f"reusing the dense model trained in {out}")
        return load(out / MODEL_FILE)

    def recipe(self, m: Method) -> dict:
        """Everything a method's result depends on; a cached result is reused only if it matches."""
        r = {"method": m.recipe(), "preset": self.config.preset, "overrides": self.config.overrides,
             "checkpoint": self.config.checkpoint, "eval_tokens": self.config.eval_tokens}
        if m.train == "finetune":
            r["finetune"] = self.finetune
        if m.train == "scratch":
            r["scratch_epochs"] = self.config.scratch_epochs
        return r

    def outcome(self, m: Method, dense: LanguageModel) -> pipeline.Outcome:
        """The method's artifact and its perplexities: its model compressed, pruned and trained as its
        recipe says (``lm.study.pipeline.run``), exported and decoded."""
        out = self.run_dir / m.name
        start = load_artifact(self.run_dir / m.base / ARTIFACT_FILE) if m.base else dense
        common = {"valid": self.stream("valid"), "test": self.stream("test"), "quant": m.quant,
                  "data_dir": self.config.data_dir, "progress": self.config.progress, "device": self.config.device}
        if m.train == "scratch":
            return pipeline.run(self.train_scratch(m, dense, out / "train"), out, **common)
        if m.base and m.train == "none":
            return pipeline.run(start, out, **common)
        finetune = None
        if m.train == "finetune":
            regularization = self.finetune.get("regularization")
            finetune = Finetune(self.epochs(m), m.lr or self.finetune["lr"], self.finetune["dropout"],
                                Regularization(**regularization) if regularization else None,
                                self.finetune.get("min_gain"))
        kd = None
        if m.distill:
            teacher = dense if m.distill.teacher == "dense" else start
            kd = Distillation(teacher, alpha=m.distill.alpha, temperature=m.distill.temperature,
                              cache=self.run_dir / "teacher_outputs")  # one teacher's outputs serve every student
        return pipeline.run(start if m.compress else copy.deepcopy(start), out, layers=m.compress_kwargs(),
                            counts=self.counts() if m.compress else None, prune=m.prune,
                            finetune=finetune, base=self.cfg, distill=kd,
                            qat_bits=m.qat_bits, **({"qat_every": m.qat_every} if m.qat_every else {}),
                            save_every=self.config.save_every, **common)

    def epochs(self, m: Method) -> int:
        """The training epochs of method ``m``'s recipe (0 for a method that only exports)."""
        if m.train == "scratch":
            return min(e for e in (m.epochs, self.config.scratch_epochs, self.cfg.epochs) if e)
        return (m.epochs or self.finetune["epochs"]) if m.train == "finetune" else 0

    def history(self, m: Method) -> dict | None:
        """The training behind method ``m``'s row, ``{"run": "dense" | "scratch" | "finetune", "epochs": [...]}``
        (each epoch's ``lm.train`` history entry, numbered from 1 across a gradual prune's runs): the dense
        model's own training (beside ``--checkpoint``, or in ``run_dir/dense/train``), or the method's
        from-scratch run or fine-tune; None for a row without one, or whose run's history is gone."""
        if m.name == "dense":
            where, run = (Path(self.config.checkpoint).parent if self.config.checkpoint
                          else self.run_dir / "dense" / "train"), "dense"
        elif m.train in ("scratch", "finetune"):
            where, run = self.run_dir / m.name / "train", m.train
        else:
            return None
        parts = sorted(where.glob("epoch*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else 0)
        epochs = []
        for part in [where] if not parts else parts:  # a gradual prune trains one run per epoch
            try:
                epochs += read_history(part)
            except (FileNotFoundError, ValueError):
                return None
        keep = ("lr", "train_ppl", "valid_ppl", "averaged", "continued_from")  # the curve marks a continuation
        return {"run": run, "epochs": [{"epoch": i, **{k: h[k] for k in keep if k in h}}
                                       for i, h in enumerate(epochs, 1)]} if epochs else None

    def train_scratch(self, m: Method, dense: LanguageModel, out: Path) -> LanguageModel:
        """The method's compressed architecture, trained from scratch with the preset's recipe in ``out``."""
        shape = scratch_shape(m, dense.config, self.counts(), dense.vocab)
        cfg = replace(self.cfg, model=shape, epochs=self.epochs(m), lr=m.lr or self.cfg.lr)
        model = scratch_model(cfg, dense.vocab)
        train(cfg, out, data_dir=self.config.data_dir, resume=True, progress=self.config.progress, model=model,
              save_every=self.config.save_every, device=self.config.device)
        return model.cpu().eval()

    def run_method(self, m: Method, dense: LanguageModel) -> dict:
        path = self.run_dir / m.name / "result.json"
        recipe = self.recipe(m)
        cached = self.cached(m)
        if cached is not None:
            self.log(f"{m.name}: cached")
            if self.onnx and (bits := nbits_width(cached)) and "test_ppl_int8act" not in cached:  # run without onnx
                self.log(f"{m.name}: scoring its {bits}-bit export with int8 activations in onnxruntime")
                artifact = load_artifact(self.run_dir / m.name / ARTIFACT_FILE)
                cached = {**cached, "test_ppl_int8act": self.int8_activation_ppl(artifact, bits)}
                write_json(path, cached)
            return cached
        self.log(f"{m.name}: {m.description}")
        tic = time.time()
        torch.manual_seed(self.cfg.seed)  # a row depends on its recipe and the seed, not on what ran before it
        done = self.outcome(m, dense)
        info, decoded = done.artifact, done.decoded
        result = {
            "name": m.name, "family": m.family, "label": m.name, "description": m.description, "recipe": recipe,
            "size_bytes": info.bytes, "size_mb": info.bytes / report.MB,
            "parameters": count_parameters(decoded),
            "nonzero": sum(int((p != 0).sum()) for p in decoded.parameters()),
            "valid_ppl": done.valid_ppl, "test_ppl": done.test_ppl,
            "encodings": info.encodings, "tensor_bytes": info.tensor_bytes,
            "config": asdict(decoded.config), "wall_time_s": time.time() - tic, "commit": CODE_COMMIT,
        }
        if self.onnx and (bits := nbits_width(result)):
            result["test_ppl_int8act"] = self.int8_activation_ppl(decoded, bits)
        write_json(path, result)
        self.log(f"{m.name}: {result['size_mb']:.3f} MB, valid {result['valid_ppl']:.2f}, test {result['test_ppl']:.2f}")
        return result

    def int8_activation_ppl(self, model: LanguageModel, bits: int) -> float:
        """The test perplexity of ``model`` (decoded from a ``bits``-bit artifact) exported with its codes and
        int8 activations (``export_onnx(weights="nbits", activations="int8")``), run by onnxruntime a token at a
        time: an approximation of the row's model, reported beside its exact perplexity."""
        from ..deploy.onnx_export import export_onnx
        from ..deploy.runtime import OnnxRuntime, stream_losses

        with tempfile.TemporaryDirectory() as tmp:
            info = export_onnx(model, Path(tmp) / "model.onnx", weights="nbits", bits=bits, activations="int8")
            nll = stream_losses(OnnxRuntime(info.path), self.stream("test").numpy(),
                                desc="test, int8 activations" if self.config.progress else None)
        return math.exp(nll.mean())

    # -- the whole study --------------------------------------------------------------------------
    def cached(self, m: Method) -> dict | None:
        """The method's finished result, if it was run with its current recipe."""
        path = self.run_dir / m.name / "result.json"
        if path.is_file() and (self.run_dir / m.name / ARTIFACT_FILE).is_file():
            result = json.loads(path.read_text())
            if result.get("recipe") == self.recipe(m):
                return result
        return None

    def run(self) -> dict | None:
        """Run the selected methods, then report on them and on every other finished one (None, with
        ``report=False``: the methods only)."""
        torch.manual_seed(self.cfg.seed)
        if self.needs_dense:
            dense = self.dense_model()
        else:  # only from-scratch methods: an untrained dense model gives their shapes
            dense = LanguageModel(self.cfg.model, self.corpus.vocab)
        done, start, spent, trained = {}, time.time(), 0.0, 0
        todo = [m for m in self.methods if self.cached(m) is None]
        if self.config.jobs > 1 and todo:
            self.run_in_processes(todo)
            todo = []  # the pass below finds every row cached
        for i, m in enumerate(self.methods, 1):
            left = sum(self.epochs(t) for t in todo if t.name not in done)  # this method's included
            most = "at most " if self.finetune.get("min_gain") is not None else ""  # fine-tunes may stop early
            estimate = (f"; {most}{left} training epochs left, about {_clock(spent / trained * left)} at this run's "
                        f"{_clock(spent / trained)} per epoch so far" if trained and left else
                        f"; {most}{left} training epochs left" if left else "")
            self.log(f"method {i} of {len(self.methods)}: {m.name} (elapsed {_clock(time.time() - start)}{estimate})")
            tic = time.time()
            done[m.name] = self.run_method(m, dense)
            if m in todo and self.epochs(m):
                history = self.history(m)  # the epochs it trained: fewer than its recipe's when it stopped early
                spent, trained = spent + time.time() - tic, trained + (len(history["epochs"]) if history else self.epochs(m))
        if not self.config.report:
            return None
        rows = [{**r, **({"history": h} if (h := self.history(m)) else {})}
                for m in self.all_methods if (r := done.get(m.name) or self.cached(m))]
        self.log("timing every artifact side by side (1 thread, batch 1)")
        models = {r["name"]: load_artifact(self.run_dir / r["name"] / ARTIFACT_FILE) for r in rows}
        nbits = {r["name"]: bits for r in rows if (bits := nbits_width(r))}  # exported packed too, with onnx
        for name, t in compare(models, tokens=self.config.latency_tokens, onnx=self.onnx, nbits=nbits).items():
            next(r for r in rows if r["name"] == name).update(t)
        return self.write_report(rows)

    def run_in_processes(self, todo: list[Method]) -> None:
        """Run the methods of ``todo`` (in dependency order) ``config.jobs`` at a time, each by a study of its
        own in a fresh process (``--methods NAME``, no report, no progress bars) with the CPU's threads shared
        out, each once the row it needs (``needs``) is done; each leaves its cached row, the same as a run in
        this process would (every method starts from the seed). Students distilled from one teacher may
        compute its outputs side by side once, before its cache exists. A method that fails stops the others
        from starting. The processes print nothing: this one logs each epoch they finish, read from their
        training states every ``POLL_S`` seconds, and each row."""
        pending, running, failed, logged = list(todo), {}, None, {}
        threads = max(1, torch.get_num_threads() // self.config.jobs)
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
        with ProcessPoolExecutor(self.config.jobs, mp_context=context, initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            while pending or running:
                waiting_on = {m.name for m in [*pending, *running.values()]}
                ready = [m for m in pending if self.needs(m) not in waiting_on]
                for m in ready if failed is None else []:
                    if len(running) == self.config.jobs:
                        break
                    config = replace(self.config, methods=[m.name], report=False, progress=False, jobs=1)
                    running[pool.submit(run_study, config)] = m
                    pending.remove(m)
                    self.log(f"{m.name}: started ({len(todo) - len(pending)} of {len(todo)}, "
                             f"{len(running)} running, {threads} thread{'s' * (threads > 1)} each)")
                if not running:
                    break  # a failure left only methods that wait
                finished, _ = wait(running, timeout=self.POLL_S, return_when=FIRST_COMPLETED)
                for m in running.values():
                    self.log_epochs(m, logged)
                for future in finished:
                    m = running.pop(future)
                    if future.exception() is not None:
                        failed = failed or future.exception()
                        self.log(f"{m.name}: failed ({future.exception()})")
                    elif (row := self.cached(m)) is not None:
                        self.log(f"{m.name}: {row['size_mb']:.3f} MB, valid {row['valid_ppl']:.2f}, "
                                 f"test {row['test_ppl']:.2f}")
        if failed is not None:
            raise failed

    def status(self) -> list[str]:
        """What a study run would find, a line per selected method, nothing run or trained: its row, when
        finished with its current recipe; else its training so far (the validation perplexity of each epoch
        its run recorded, and how far into the next epoch its last save got, and when), or that it is still
        to run; and whether a row that does not count stands in its place (of another recipe, or without its
        artifact), to be replaced."""
        lines = []
        for m in self.methods:
            if (row := self.cached(m)) is not None:
                lines.append(f"{m.name}: done, {row['size_mb']:.3f} MB, valid {row['valid_ppl']:.2f}, "
                             f"test {row['test_ppl']:.2f}")
                continue
            state = self.run_dir / m.name / "train" / TRAIN_STATE_FILE
            stale = (self.run_dir / m.name / "result.json").is_file()  # of another recipe, or without its artifact
            other = " (the row there, of another recipe or without its artifact, will be replaced)" if stale else ""
            if not state.is_file():
                lines.append(f"{m.name}: to run{other}")
                continue
            saved = load_train_state(state)
            valid = ", ".join(f"{h['valid_ppl']:.2f}" for h in saved["history"]) or "none yet"
            partial = saved.get("partial")
            within = f"; epoch {partial['epoch'] + 1} saved at step {partial['step']}" if partial else ""
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.stat().st_mtime))
            epochs = self.cfg.epochs if m.name == "dense" else self.epochs(m)  # the dense model's own training
            lines.append(f"{m.name}: training, {len(saved['history'])} of at most {epochs} epochs "
                         f"(valid PPL {valid}){within}; state saved {when}{other}")
        return lines

    def needs(self, m: Method) -> str | None:
        """The row that method ``m``'s process waits for: its base, else the dense row, which a study of any
        one method runs first when the dense model is needed (two processes would write its files at once)."""
        return m.base or ("dense" if self.needs_dense and m.name != "dense" else None)

    def log_epochs(self, m: Method, logged: dict[str, int]) -> None:
        """Log the epochs of method ``m``'s training finished since ``logged[m.name]`` (a count, updated)."""
        if not self.config.progress or not self.epochs(m):  # a row that only exports trains no epochs
            return
        history = self.history(m)
        epochs = history["epochs"] if history else []
        for e in epochs[logged.get(m.name, 0):]:
            self.log(f"{m.name}: epoch {e['epoch']} of {self.epochs(m)}, lr {e['lr']:.4g}, "
                     f"train ppl {e['train_ppl']:.2f}, valid ppl {e['valid_ppl']:.2f}")
        logged[m.name] = len(epochs)

    def write_report(self, rows: list[dict]) -> dict:
        provenance = stamp({"study": asdict(self.config), "train": self.cfg.to_dict(), "finetune": self.finetune},
                           self.cfg.seed)
        return report.render({
            **provenance,
            "preset": self.config.preset,
            "eval": f"first {self.config.eval_tokens} tokens of valid/test" if self.config.eval_tokens
            else "whole valid/test streams, lm.evaluate.perplexity",
            "rows": [{k: v for k, v in r.items() if k not in ("recipe", "tensor_bytes")} for r in rows],
        }, self.config.report_dir)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def run_study(config: StudyConfig) -> dict:
    """Run (or resume) the study and write ``<report_dir>/study_<preset>.{json,md,png}``; returns the payload."""
    return Study(config).run()


def methods_for(cfg: TrainConfig) -> list[Method]:
    """Deprecated (one release): ``lm.study.methods.load_methods(preset)``; the preset is the one whose model
    ``cfg``'s is (``medium`` and ``medium_awd`` share a hidden size, not a model)."""
    warnings.warn("lm.study.methods_for(cfg) is deprecated; use lm.study.methods.load_methods(preset)", DeprecationWarning,
                  stacklevel=2)
    name = next((p for p in presets() if preset(p).model == cfg.model), None)
    if name is None:
        raise ValueError(f"no study file for the model {cfg.model}; use lm.study.methods.load_methods(preset)")
    return load_methods(name)

