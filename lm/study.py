"""The compression study: every method on one preset, cached per method and resumable.

``python -m lm study --preset small --checkpoint runs/small/model.safetensors`` takes a trained
dense model (or trains the preset first), then for every method: compresses it,
fine-tunes or trains it from scratch where the method says so, exports the compact
artifact, decodes that artifact and measures its exact perplexities. Each finished
method leaves ``<run_dir>/<name>/result.json`` and is skipped on the next run while
its recipe is unchanged; fine-tuning resumes after a kill, losing at most one epoch.
A final pass times every artifact side by side (one token, batch 1, one thread,
eager and int8, and exported to onnxruntime, float32 and int8, when it is installed) and
writes the results JSON, the markdown report and the Pareto plot.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import ARTIFACT_FILE, MODEL_FILE, load
from .compression import prune as pruning
from .compression import qat
from .compression import report
from .compression.export import export, load_artifact
from .compression.latency import compare
from .compression.surgery import compress_model, set_dropout
from .config import TrainConfig, preset
from .data import Corpus
from .distill import Distillation
from .evaluate import perplexity
from .model import LanguageModel, count_parameters
from .results import ROOT, stamp, write_json
from .train import train


@dataclass
class Method:
    """One row of the study.

    ``compress``: layer specs for ``compress_model`` (``embedding``/``lstm``/``decoder``);
    ``prune``: ``{"amount", "layers", "gradual"}``; ``train``: ``"none"``, ``"finetune"``
    (from the compressed trained model) or ``"scratch"`` (the compressed architecture
    trained with the preset's recipe); ``quant``: the artifact's 8-bit scheme; ``base``:
    start from another method's finished model instead of the dense one (to export it, or
    fine-tune it); ``shape``: ``ModelConfig`` fields of a from-scratch model (e.g.
    ``embedding_size``, ``tie_weights``), applied after ``compress`` has set the layer specs; ``distill``:
    ``{"alpha", "temperature"}`` of ``lm.distill.Distillation``, fine-tuning with the model
    it starts from (the dense one, or the base) as the teacher; ``lr``: the starting learning
    rate of its training instead of the preset's (scratch) or the fine-tuning recipe's, decayed
    on the same schedule; ``epochs``: the length of a from-scratch training instead of the
    preset's (the same schedule, cut or extended); ``qat_bits``: fine-tune in quantization-aware
    training at that many bits per weight (``lm.compression.qat``: every weight on its per-row
    grid, straight-through gradients) and export the packed codes (``quant`` must then be
    ``f"q{qat_bits}"``).
    """

    name: str
    family: str
    description: str
    compress: dict = field(default_factory=dict)
    prune: dict | None = None
    train: str = "none"
    quant: str | None = None
    base: str | None = None
    shape: dict = field(default_factory=dict)
    distill: dict | None = None
    lr: float | None = None
    epochs: int | None = None
    qat_bits: int | None = None

    def __post_init__(self) -> None:
        """Refuse recipes whose parts the study would silently ignore."""
        if self.train not in ("none", "finetune", "scratch"):
            raise ValueError(f"{self.name}: train must be 'none', 'finetune' or 'scratch', got {self.train!r}")
        if self.base and (self.compress or self.prune or self.train == "scratch" or self.shape):
            raise ValueError(f"{self.name}: a method built on base {self.base!r} exports it (quant) or fine-tunes "
                             "it (train='finetune', distill); it cannot compress, prune, reshape or train from scratch")
        if self.distill and self.train != "finetune":
            raise ValueError(f"{self.name}: distillation needs train='finetune', got {self.train!r}")
        if self.shape and self.train != "scratch":
            raise ValueError(f"{self.name}: shape applies to from-scratch models only, got train={self.train!r}")
        if self.lr is not None and (self.train == "none" or not self.lr > 0):
            raise ValueError(f"{self.name}: lr sets the rate of a training run and must be > 0, "
                             f"got lr={self.lr} with train={self.train!r}")
        if self.epochs is not None and (self.train != "scratch" or self.epochs < 1):
            raise ValueError(f"{self.name}: epochs sets the length of a from-scratch training and must be >= 1, "
                             f"got epochs={self.epochs} with train={self.train!r}")
        if self.qat_bits is not None and (self.train != "finetune" or self.prune or self.quant != f"q{self.qat_bits}"):
            raise ValueError(f"{self.name}: qat_bits fine-tunes in quantization-aware training and exports its codes: "
                             f"it needs train='finetune', no pruning and quant='q{self.qat_bits}', got "
                             f"train={self.train!r}, prune={self.prune!r}, quant={self.quant!r}")


def methods_for(cfg: TrainConfig) -> list[Method]:
    """The study's methods, ranks scaled with the hidden size (r = H/5 gives the paper's r=128 at 650)."""
    h = cfg.model.hidden_size
    r_lstm = 128 if h == 650 else max(4, round(h / 5))  # the paper's r=128 at 650
    r_emb = max(4, round(h / 4))
    r_tt = max(4, r_lstm // 2)  # at 650, TT rank 64 gives the LSTM about the LR-LSTM r=128's parameters
    tt_lr = 0.25  # TT cores trained from scratch stall at lr 1 (docs/study.md)
    # medium TT-LSTM: stop after the first epoch whose lr is below 1% of its start (27 of 39), where its
    # validation perplexity had all but stopped moving; medium tied LR-LSTM: cut after epoch 30 of 39 to fit
    # the CPU time of the session that ran it (docs/study.md)
    tt_epochs = 27 if h == 650 else None
    tied_epochs = 30 if h == 650 else None
    gr = {"type": "groupreduce", "groups": 6, "ratio": 8, "alpha": 0.5}
    tt = {"type": "tt", "rank": 16}
    kd = {"alpha": 0.5, "temperature": 2.0}
    return [
        Method("dense", "dense", "the trained dense model, float32"),
        Method("q8", "quantized", "8-bit, 256 equal intervals per tensor, one byte per number (paper)", quant="q8"),
        Method("q8c", "quantized", "8-bit per output channel", quant="q8c"),
        Method("dense_ft", "dense", "the dense model fine-tuned with the compressed models' recipe (the control)",
               train="finetune"),
        Method("dense_ft_q8", "quantized", "dense_ft stored in 8 bits per tensor", quant="q8", base="dense_ft"),
        Method("prune_dec90", "pruned", "output layer pruned 90% by magnitude, no retraining (paper)",
               prune={"amount": 0.9, "layers": ["decoder"]}),
        Method("prune_dec90_ft", "pruned", "output layer pruned 90%, retrained (paper)",
               prune={"amount": 0.9, "layers": ["decoder"]}, train="finetune"),
        Method("prune_embdec90", "pruned", "embedding and output layer pruned 90%, no retraining",
               prune={"amount": 0.9, "layers": ["embedding", "decoder"]}),
        Method("prune_embdec90_ft", "pruned", "embedding and output layer pruned 90%, retrained",
               prune={"amount": 0.9, "layers": ["embedding", "decoder"]}, train="finetune"),
        Method("prune_embdec90_ft_q8", "pruned+quantized", "prune_embdec90_ft stored in 8 bits", quant="q8",
               base="prune_embdec90_ft"),
        Method("prune_all90_gradual_ft", "pruned", "every weight matrix pruned to 90%, gradually during retraining",
               prune={"amount": 0.9, "layers": ["embedding", "lstm", "decoder"], "gradual": True}, train="finetune"),
        Method("groupreduce_ft", "GroupReduce", "embedding and softmax block low-rank by frequency (8x), fine-tuned",
               compress={"embedding": gr, "decoder": gr}, train="finetune"),
        Method("groupreduce_ft_q8", "GroupReduce+quantized", "groupreduce_ft stored in 8 bits", quant="q8",
               base="groupreduce_ft"),
        Method("lr_lstm_ft", "LR-LSTM", f"LR-LSTM with shared projection r={r_lstm}, from the dense model by SVD, fine-tuned",
               compress={"lstm": {"type": "lr_lstm", "rank": r_lstm}}, train="finetune"),
        Method("tt_lstm_ft", "TT-LSTM", "TT-LSTM (TT rank 16), from the dense model by TT-SVD, fine-tuned",
               compress={"lstm": {"type": "tt_lstm", "rank": 16}}, train="finetune"),
        Method("lowrank_embdec_ft", "low-rank emb/softmax", f"embedding and softmax low-rank r={r_emb} by SVD, fine-tuned",
               compress={"embedding": {"type": "low_rank", "rank": r_emb},
                         "decoder": {"type": "low_rank", "rank": r_emb}}, train="finetune"),
        Method("tt_embdec_ft", "TT emb/softmax", "TTEmbedding and TT softmax (TT rank 16) by TT-SVD, fine-tuned",
               compress={"embedding": tt, "decoder": tt}, train="finetune"),
        Method("lr_all_ft", "LR-LSTM+GroupReduce", f"LR-LSTM r={r_lstm} with GroupReduce embedding and softmax, fine-tuned",
               compress={"embedding": gr, "lstm": {"type": "lr_lstm", "rank": r_lstm}, "decoder": gr}, train="finetune"),
        Method("lr_all_ft_q8", "LR-LSTM+GroupReduce+quantized", "lr_all_ft stored in 8 bits", quant="q8", base="lr_all_ft"),
        Method("lr_lstm_ft_kd", "LR-LSTM", "lr_lstm_ft distilled from the dense model (alpha 0.5, T 2)",
               compress={"lstm": {"type": "lr_lstm", "rank": r_lstm}}, train="finetune", distill=kd),
        Method("lr_all_ft_kd", "LR-LSTM+GroupReduce", "lr_all_ft distilled from the dense model (alpha 0.5, T 2)",
               compress={"embedding": gr, "lstm": {"type": "lr_lstm", "rank": r_lstm}, "decoder": gr}, train="finetune",
               distill=kd),
        Method("dense_ft_kd", "dense", "dense_ft distilled from the dense model it starts from (alpha 0.5, T 2)",
               train="finetune", distill=kd),
        Method("dense_ft_kd_q8", "quantized", "dense_ft_kd stored in 8 bits per tensor", quant="q8", base="dense_ft_kd"),
        Method("lr_lstm_scratch", "LR-LSTM", f"LR-LSTM r={r_lstm} trained from scratch with the preset's recipe",
               compress={"lstm": {"type": "lr_lstm", "rank": r_lstm}}, train="scratch"),
        Method("lr_paper_scratch", "LR-LSTM",
               f"the paper's LR-LSTM: {r_lstm}-dim embedding, LR-LSTM r={r_lstm}, softmax from the projection, "
               "trained from scratch", compress={"lstm": {"type": "lr_lstm", "rank": r_lstm}},
               shape={"embedding_size": r_lstm}, train="scratch"),
        Method("lr_paper_scratch_q8", "LR-LSTM+quantized", "lr_paper_scratch stored in 8 bits", quant="q8",
               base="lr_paper_scratch"),
        Method("lr_paper_ft", "LR-LSTM", "lr_paper_scratch fine-tuned with the preset's fine-tuning recipe "
               "(the control of lr_paper_kd)", base="lr_paper_scratch", train="finetune"),
        Method("lr_paper_ft_q8", "LR-LSTM+quantized", "lr_paper_ft stored in 8 bits", quant="q8", base="lr_paper_ft"),
        Method("lr_paper_kd", "LR-LSTM", "lr_paper_scratch fine-tuned alike, distilled from itself "
               "(born-again, alpha 0.5, T 2)", base="lr_paper_scratch", train="finetune", distill=kd),
        Method("tt_lstm_scratch", "TT-LSTM", "TT-LSTM (TT rank 16) trained from scratch with the preset's recipe",
               compress={"lstm": {"type": "tt_lstm", "rank": 16}}, train="scratch"),
        Method("tt_lstm_scratch_lr025", "TT-LSTM", f"tt_lstm_scratch trained from lr {tt_lr} instead of the preset's",
               compress={"lstm": {"type": "tt_lstm", "rank": 16}}, train="scratch", lr=tt_lr),
        Method("tt_paper_scratch", "TT-LSTM",
               f"lr_paper_scratch with a TT-LSTM: {r_lstm}-dim embedding, TT-LSTM (TT rank {r_tt}), low-rank softmax "
               f"r={r_lstm}, trained from scratch from lr {tt_lr}" + (f" for {tt_epochs} epochs" if tt_epochs else ""),
               compress={"lstm": {"type": "tt_lstm", "rank": r_tt}, "decoder": {"type": "low_rank", "rank": r_lstm}},
               shape={"embedding_size": r_lstm}, train="scratch", lr=tt_lr, epochs=tt_epochs),
        Method("tt_paper_scratch_q8", "TT-LSTM+quantized", "tt_paper_scratch stored in 8 bits", quant="q8",
               base="tt_paper_scratch"),
        Method("tt_paper_ft", "TT-LSTM", f"tt_paper_scratch fine-tuned with the preset's fine-tuning recipe from lr {tt_lr}",
               base="tt_paper_scratch", train="finetune", lr=tt_lr),
        Method("tt_paper_ft_q8", "TT-LSTM+quantized", "tt_paper_ft stored in 8 bits", quant="q8", base="tt_paper_ft"),
        Method("lr_tied_scratch", "LR-LSTM",
               f"lr_paper_scratch with the embedding and softmax tied (both {r_lstm}-dim), trained from scratch"
               + (f" for {tied_epochs} epochs" if tied_epochs else ""),
               compress={"lstm": {"type": "lr_lstm", "rank": r_lstm}},
               shape={"embedding_size": r_lstm, "tie_weights": True}, train="scratch", epochs=tied_epochs),
        Method("lr_tied_scratch_q8", "LR-LSTM+quantized", "lr_tied_scratch stored in 8 bits", quant="q8",
               base="lr_tied_scratch"),
        Method("lr_tied_ft", "LR-LSTM", "lr_tied_scratch fine-tuned with the preset's fine-tuning recipe",
               base="lr_tied_scratch", train="finetune"),
        Method("lr_tied_ft_q8", "LR-LSTM+quantized", "lr_tied_ft stored in 8 bits", quant="q8", base="lr_tied_ft"),
        *[Method(f"lr_tied_ft_q{b}", "LR-LSTM+quantized", f"lr_tied_ft stored in {b} bits per weight, per-row ranges, "
                 f"no retraining (the control of lr_tied_ft_qat{b})", quant=f"q{b}", base="lr_tied_ft") for b in (4, 2)],
        *[Method(f"lr_tied_ft_qat{b}", "LR-LSTM+QAT", f"lr_tied_ft fine-tuned again in quantization-aware training at "
                 f"{b} bits per weight (per-row ranges), stored packed", base="lr_tied_ft", train="finetune", qat_bits=b,
                 quant=f"q{b}") for b in (4, 3, 2)],
        *[Method(f"tt_paper_ft_qat{b}", "TT-LSTM+QAT", f"tt_paper_ft fine-tuned again in quantization-aware training at "
                 f"{b} bits per weight (per-row ranges) from lr {tt_lr}, stored packed", base="tt_paper_ft",
                 train="finetune", qat_bits=b, quant=f"q{b}", lr=tt_lr) for b in (4, 3, 2)],
    ]


# Fine-tuning recipes: SGD from ``lr``, halved every epoch; dropout on the non-recurrent
# connections regularises the fine-tuned small models, which the dense small recipe does not.
FINETUNE = {
    "tiny": {"epochs": 1, "lr": 0.5, "dropout": 0.0},
    "small": {"epochs": 3, "lr": 0.5, "dropout": 0.25},
    "medium": {"epochs": 6, "lr": 0.5, "dropout": 0.5},
    "large": {"epochs": 6, "lr": 0.5, "dropout": 0.65},
}


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


@dataclass
class StudyConfig:
    preset: str = "small"
    run_dir: str = "runs/study_small"
    checkpoint: str | None = None  # the trained dense model; None trains the preset in run_dir/dense
    overrides: dict = field(default_factory=dict)  # preset overrides (tests shrink the model and the data)
    finetune: dict | None = None  # None: FINETUNE[preset]
    scratch_epochs: int | None = None  # None: the preset's
    eval_tokens: int | None = None  # score a prefix of valid/test (tests only); None: the whole splits, exactly
    latency_tokens: int = 100
    onnx: bool | None = None  # time the onnxruntime exports too; None: when onnxruntime is installed
    methods: list[str] | None = None  # None: all
    report_dir: str = str(ROOT / "results")
    data_dir: str | None = None
    progress: bool = True


class Study:
    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.cfg = preset(config.preset, **config.overrides)
        self.finetune = {**FINETUNE.get(config.preset, FINETUNE["small"]), **(config.finetune or {})}
        self.run_dir = Path(config.run_dir)
        self.corpus = Corpus.load(config.data_dir)
        known = {m.name: m for m in methods_for(self.cfg)}
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
            not known[n].base and known[n].train != "scratch" for n in order)
        self.methods = [known[n] for n in ["dense"] * self.needs_dense + order]

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
            train(self.cfg, out, data_dir=self.config.data_dir, resume=True, progress=self.config.progress)
        else:
            self.log(f"reusing the dense model trained in {out}")
        return load(out / MODEL_FILE)

    def recipe(self, m: Method) -> dict:
        """Everything a method's result depends on; a cached result is reused only if it matches."""
        method = asdict(m)
        # recipes written before methods had these fields stay valid
        for key in ("shape", "distill", "lr", "epochs", "qat_bits"):
            if not method[key]:
                del method[key]
        r = {"method": method, "preset": self.config.preset, "overrides": self.config.overrides,
             "checkpoint": self.config.checkpoint, "eval_tokens": self.config.eval_tokens}
        if m.train == "finetune":
            r["finetune"] = self.finetune
        if m.train == "scratch":
            r["scratch_epochs"] = self.config.scratch_epochs
        return r

    def finetune_config(self, model: LanguageModel, lr: float, epochs: int | None = None) -> TrainConfig:
        return replace(self.cfg, model=model.config, epochs=epochs or self.finetune["epochs"], lr=lr, lr_decay=0.5,
                       decay_start=1)

    def build(self, m: Method, dense: LanguageModel) -> LanguageModel:
        """The method's model before export: compressed, pruned and trained as its recipe says."""
        out = self.run_dir / m.name / "train"
        start = load_artifact(self.run_dir / m.base / ARTIFACT_FILE) if m.base else dense
        if m.base and m.train == "none":
            return start
        if m.train == "scratch":
            # the layer specs resolved (TT shapes and ranks) on an untrained dense model of the method's shape
            # (untied there: a dense LSTM's output does not match a reshaped embedding)
            shaped = LanguageModel(replace(dense.config, **{**m.shape, "tie_weights": False}), dense.vocab)
            shape = replace(compress_model(shaped, counts=self.counts(), **m.compress).config, **m.shape)
            epochs = min(e for e in (m.epochs, self.config.scratch_epochs, self.cfg.epochs) if e)
            cfg = replace(self.cfg, model=shape, epochs=epochs, lr=m.lr or self.cfg.lr)
            model = scratch_model(cfg, dense.vocab)
            train(cfg, out, data_dir=self.config.data_dir, resume=True, progress=self.config.progress, model=model)
            return model.eval()
        model = compress_model(start, counts=self.counts(), **m.compress) if m.compress else copy.deepcopy(start)
        kd = Distillation(start, **m.distill) if m.distill else None
        lr = m.lr or self.finetune["lr"]
        if m.train == "finetune":
            set_dropout(model, self.finetune["dropout"])
        if m.qat_bits:
            qat.enable_qat(model, m.qat_bits)
        gradual = m.prune and m.prune.get("gradual")
        if m.prune and not gradual:
            pruning.prune_model(model, m.prune["amount"], m.prune["layers"], m.prune.get("scope", "layer"))
        if m.train == "finetune" and gradual:
            # one pruning step before each epoch, every epoch its own fine-tuning run at the scheduled lr
            epochs = self.finetune["epochs"]
            for epoch, amount in enumerate(pruning.gradual_amounts(m.prune["amount"], epochs)):
                pruning.prune_model(model, amount, m.prune["layers"], m.prune.get("scope", "layer"))
                cfg = self.finetune_config(model, lr * 0.5 ** epoch, epochs=1)
                train(cfg, out / f"epoch{epoch + 1}", data_dir=self.config.data_dir, progress=self.config.progress,
                      model=model, distill=kd)
        elif m.train == "finetune":
            train(self.finetune_config(model, lr), out, data_dir=self.config.data_dir, resume=True,
                  progress=self.config.progress, model=model, distill=kd)
        if m.prune:
            pruning.finalize(model)
        if m.qat_bits:
            qat.bake(model)
        if m.train == "finetune":
            set_dropout(model, start.config.dropout)
        return model.eval()

    def run_method(self, m: Method, dense: LanguageModel) -> dict:
        path = self.run_dir / m.name / "result.json"
        recipe = self.recipe(m)
        cached = self.cached(m)
        if cached is not None:
            self.log(f"{m.name}: cached")
            return cached
        self.log(f"{m.name}: {m.description}")
        tic = time.time()
        model = self.build(m, dense)
        info = export(model, self.run_dir / m.name / ARTIFACT_FILE, m.quant)
        decoded = load_artifact(info.path)  # every number below is the shipped artifact's
        result = {
            "name": m.name, "family": m.family, "label": m.name, "description": m.description, "recipe": recipe,
            "size_bytes": info.bytes, "size_mb": info.bytes / report.MB,
            "parameters": count_parameters(decoded),
            "nonzero": sum(int((p != 0).sum()) for p in decoded.parameters()),
            "valid_ppl": perplexity(decoded, self.stream("valid")),
            "test_ppl": perplexity(decoded, self.stream("test")),
            "encodings": info.encodings, "tensor_bytes": info.tensor_bytes,
            "config": asdict(decoded.config), "wall_time_s": time.time() - tic,
        }
        write_json(path, result)
        self.log(f"{m.name}: {result['size_mb']:.3f} MB, valid {result['valid_ppl']:.2f}, test {result['test_ppl']:.2f}")
        return result

    # -- the whole study --------------------------------------------------------------------------
    def cached(self, m: Method) -> dict | None:
        """The method's finished result, if it was run with its current recipe."""
        path = self.run_dir / m.name / "result.json"
        if path.is_file() and (self.run_dir / m.name / ARTIFACT_FILE).is_file():
            result = json.loads(path.read_text())
            if result.get("recipe") == self.recipe(m):
                return result
        return None

    def run(self) -> dict:
        """Run the selected methods, then report on them and on every other finished one."""
        torch.manual_seed(self.cfg.seed)
        if self.needs_dense:
            dense = self.dense_model()
        else:  # only from-scratch methods: an untrained dense model gives their shapes
            dense = LanguageModel(self.cfg.model, self.corpus.vocab)
        done, start, spent = {}, time.time(), []
        todo = {m.name for m in self.methods if self.cached(m) is None}
        for i, m in enumerate(self.methods, 1):
            left = len(todo - set(done))  # methods still to run, this one included
            estimate = f", about {_clock(sum(spent) / len(spent) * left)} left" if spent and left else ""
            self.log(f"method {i} of {len(self.methods)}: {m.name} (elapsed {_clock(time.time() - start)}{estimate})")
            tic = time.time()
            done[m.name] = self.run_method(m, dense)
            if m.name in todo:
                spent.append(time.time() - tic)
        rows = [done.get(m.name) or self.cached(m) for m in methods_for(self.cfg)]
        rows = [r for r in rows if r is not None]
        self.log("timing every artifact side by side (1 thread, batch 1)")
        models = {r["name"]: load_artifact(self.run_dir / r["name"] / ARTIFACT_FILE) for r in rows}
        onnx = self.config.onnx
        if onnx is None:
            import importlib.util

            onnx = importlib.util.find_spec("onnxruntime") is not None
        for name, t in compare(models, tokens=self.config.latency_tokens, onnx=onnx).items():
            next(r for r in rows if r["name"] == name).update(t)
        return self.write_report(rows)

    def write_report(self, rows: list[dict]) -> dict:
        out = Path(self.config.report_dir)
        name = f"study_{self.config.preset}"
        # stamped before anything is written, so that a clean tree is not reported as dirty by the report itself
        provenance = stamp({"study": asdict(self.config), "train": self.cfg.to_dict(), "finetune": self.finetune},
                           self.cfg.seed)
        plot = report.plot(rows, out / f"{name}.png", f"PTB, preset {self.config.preset}: size vs test perplexity")
        payload = {
            **provenance,
            "preset": self.config.preset,
            "eval": f"first {self.config.eval_tokens} tokens of valid/test" if self.config.eval_tokens
            else "whole valid/test streams, lm.evaluate.perplexity",
            "plot": plot.name,
            "rows": [{k: v for k, v in r.items() if k not in ("recipe", "tensor_bytes")} for r in rows],
            "paper": report.PAPER,
        }
        payload["targets"] = report.targets(payload["rows"], self.config.preset)
        write_json(out / f"{name}.json", payload)
        (out / f"{name}.md").write_text(report.markdown(payload))
        if self.config.preset in report.FRONT_PRESETS:
            report.write_front(out)
        return payload


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def run_study(config: StudyConfig) -> dict:
    """Run (or resume) the study and write ``<report_dir>/study_<preset>.{json,md,png}``; returns the payload."""
    return Study(config).run()
