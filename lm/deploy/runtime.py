"""Next-word suggestions and text scoring on torch or on an exported ONNX model.

Both runtimes expose one streaming step, ``step(ids, state) -> (logits, state)`` on numpy
arrays (ids (batch,) int64, logits (batch, vocab_size) float32), so that ``predict``
and ``score`` run the same code on either and give the same answers:

* ``TorchRuntime(model)``: a ``LanguageModel`` (``lm.load``: a checkpoint or a compact artifact);
* ``OnnxRuntime(path)``: a file written by ``lm.deploy.onnx_export.export_onnx``, run by
  onnxruntime on the CPU; its vocabulary comes from the file's metadata.

Text is split on whitespace and lower-cased, as PTB is; words outside the vocabulary
become ``<unk>``. A text is read as following a sentence end (``<eos>``), so its first
word is scored and suggestions after a short prompt are those at a sentence start.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..data import EOS
from ..model import LanguageModel
from .onnx_export import INPUTS, OUTPUTS

UNK = "<unk>"
RUNTIMES = ("torch", "onnx")
State = tuple[np.ndarray, np.ndarray]


class TorchRuntime:
    """A ``LanguageModel`` stepped in eager torch (float32, eval mode); ``source`` names it in errors (its file, as
    ``open_runtime`` gives it)."""

    def __init__(self, model: LanguageModel, source: str | os.PathLike = "the model") -> None:
        if model.vocab is None:
            raise ValueError(f"{source} has no vocabulary: it cannot read or write words")
        self.model = model.eval()
        self.vocab = model.vocab
        self.source = source

    def initial_state(self, batch: int = 1) -> State:
        lstm = self.model.lstm
        out = getattr(lstm, "output_size", lstm.hidden_size)
        return (np.zeros((lstm.num_layers, batch, out), np.float32),
                np.zeros((lstm.num_layers, batch, lstm.hidden_size), np.float32))

    @torch.no_grad()
    def step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logits, (h, c) = self.model(torch.as_tensor(ids)[None], tuple(torch.as_tensor(s) for s in state))
        return logits[0].numpy(), (h.numpy(), c.numpy())


class OnnxRuntime:
    """An exported step model run by onnxruntime on ``threads`` CPU threads.

    The file (``source``, which errors name) is checked when opened: none at ``path`` is a FileNotFoundError naming
    it (as ``lm.modelfile.read`` raises); a file onnxruntime cannot load (not ONNX, truncated or corrupted), a graph
    that does not take ids, h and c or give logits, h_out and c_out as ``export_onnx`` writes them (h_out and c_out
    as h and c), or whose logits are not as wide as the vocabulary in its metadata, is a ValueError naming the
    file.

    ``avoid_saturation``: on x86 CPUs without VNNI (AVX2 only), onnxruntime's int8 products
    (``MatMulInteger`` of an int8 export) add pairs of uint8 x int8 products in int16, which saturates when
    activations and weights are both near the ends of their ranges; ``True`` has them computed in int16
    (onnxruntime's ``session.x64quantprecision``), the graph's exact integer products, at some speed. Trained
    models rarely saturate (``python -m lm.benchmarks.activations`` does not use it); random weights spread
    over the whole int8 range do.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1, avoid_saturation: bool = False) -> None:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as errors

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if avoid_saturation:
            options.add_session_config_entry("session.x64quantprecision", "1")
        self.source = path
        if not Path(path).is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except (errors.InvalidProtobuf, errors.InvalidArgument, errors.InvalidGraph, errors.Fail,
                errors.NotImplemented) as err:
            # onnxruntime's reason on one line, without its error code, the path again, or the source line and C++
            # function that raised it
            detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .*? failed:)?(\S+:\d+ .*?\) )?", "",
                            str(err))
            detail = " ".join(detail.split())
            raise ValueError(f"{path}: not an ONNX model that onnxruntime can load (a truncated or corrupted file, or "
                             f"another format): {detail}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if not meta.get("vocab"):
            raise ValueError(f"{path} has no vocabulary in its metadata: export it with `python -m lm export`")
        self.vocab = meta["vocab"].split("\n")
        self._h, self._c = self._check_graph(path)

    def _check_graph(self, path: str | os.PathLike) -> tuple[list[int], list[int]]:
        """The shapes (num_layers, batch, width) of h and c, once the graph is found to take what ``step`` feeds
        (``onnx_export.INPUTS``: ids int64, h and c float32, of fixed layers and widths) and to give what it reads
        (``onnx_export.OUTPUTS``: logits (batch, len(vocab)), h_out and c_out of h's and c's type, layers and widths,
        fed back at the next step); ValueError naming ``path`` otherwise."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if set(inputs) != set(INPUTS):
            raise ValueError(f"{path}: the graph has inputs {sorted(inputs)}, expected {', '.join(INPUTS[:-1])} and "
                             f"{INPUTS[-1]} (a step written by `python -m lm export`)")
        if not set(OUTPUTS) <= set(outputs):
            raise ValueError(f"{path}: the graph has outputs {list(outputs)}, expected {', '.join(OUTPUTS[:-1])} and "
                             f"{OUTPUTS[-1]} (a step written by `python -m lm export`)")
        for name, dtype in zip(INPUTS, ("tensor(int64)", "tensor(float)", "tensor(float)")):
            if inputs[name].type != dtype:
                raise ValueError(f"{path}: input {name!r} is {inputs[name].type}, expected {dtype}")
        for name in INPUTS[1:]:
            shape = inputs[name].shape
            if len(shape) != 3 or not all(type(n) is int and n > 0 for n in shape[::2]):
                raise ValueError(f"{path}: input {name!r} has shape {shape}, expected (layers, batch, width) with "
                                 "fixed layers and width")
        for name, out in zip(INPUTS[1:], OUTPUTS[1:]):
            fed, given = inputs[name], outputs[out]
            if given.type != fed.type or len(given.shape) != 3 or given.shape[::2] != fed.shape[::2]:
                raise ValueError(f"{path}: output {out!r} is {given.type} of shape {given.shape}, expected input "
                                 f"{name!r}'s {fed.type} of shape {fed.shape}: it is fed back as {name!r} at the next "
                                 "step")
        logits = outputs[OUTPUTS[0]].shape
        if len(logits) != 2 or logits[1] != len(self.vocab):
            raise ValueError(f"{path}: its logits have shape {logits}, expected (batch, {len(self.vocab)}): a score "
                             f"for each of the {len(self.vocab)} words of the vocabulary in its metadata")
        return inputs["h"].shape, inputs["c"].shape

    def initial_state(self, batch: int = 1) -> State:
        return (np.zeros((self._h[0], batch, self._h[2]), np.float32),
                np.zeros((self._c[0], batch, self._c[2]), np.float32))

    def step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        # fetched by name: a graph may list them in any order
        logits, h, c = self.session.run(OUTPUTS, {"ids": np.asarray(ids, np.int64), "h": state[0], "c": state[1]})
        return logits, (h, c)


Runtime = TorchRuntime | OnnxRuntime


def open_runtime(model: str | os.PathLike, runtime: str = "torch", threads: int = 1) -> Runtime:
    """``runtime`` "torch": what ``lm.load`` reads (a checkpoint, an artifact, a run directory);
    "onnx": an exported ``.onnx``, or such a model exported on the fly (float32, to a temporary file)."""
    from ..checkpoint import load

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    path = Path(model)
    if path.suffix == ".onnx":
        if runtime != "onnx":
            raise ValueError(f"{path} is an ONNX file: run it with runtime 'onnx'")
        return OnnxRuntime(path, threads)
    run = TorchRuntime(load(path), path)
    if runtime == "torch":
        return run
    import tempfile

    from .onnx_export import export_onnx

    _text_vocab(run)  # before the export, so that an error names the model's file rather than the temporary one
    with tempfile.TemporaryDirectory() as tmp:
        return OnnxRuntime(export_onnx(run.model, Path(tmp) / "model.onnx").path, threads)


def words_to_ids(text: str, vocab: list[str]) -> list[int]:
    """Lower-cased whitespace tokens as ids; unknown words as ``<unk>``."""
    index = {w: i for i, w in enumerate(vocab)}
    if UNK not in index:
        raise ValueError(f"the vocabulary has no {UNK!r} for out-of-vocabulary words")
    return [index.get(w, index[UNK]) for w in text.lower().split()]


def _text_vocab(runtime: Runtime) -> list[str]:
    """The runtime's vocabulary, once found to have the words that ``predict`` and ``score`` read text with
    (``<eos>``, ``<unk>``); ValueError naming the runtime's source (its file) otherwise."""
    missing = [word for word in (EOS, UNK) if word not in runtime.vocab]
    if missing:
        raise ValueError(f"{runtime.source}: its vocabulary has no {' or '.join(map(repr, missing))}: predict and "
                         f"score read a text as following a sentence end ({EOS!r}) and words outside the vocabulary "
                         f"as {UNK!r}")
    return runtime.vocab


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def predict(runtime: Runtime, text: str, top: int = 5) -> list[tuple[str, float]]:
    """The ``top`` likeliest next words after ``text`` (``<unk>`` left out), with their probabilities."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an int >= 1, got {top!r}")
    vocab = _text_vocab(runtime)
    ids = [vocab.index(EOS)] + words_to_ids(text, vocab)
    state = runtime.initial_state()
    for i in ids:
        logits, state = runtime.step(np.array([i], np.int64), state)
    logp = _log_softmax(logits[0])
    order = [int(i) for i in np.argsort(-logp, kind="stable") if vocab[i] != UNK][:top]
    return [(vocab[i], float(math.exp(logp[i]))) for i in order]


def stream_losses(runtime: Runtime, ids, desc: str | None = None) -> np.ndarray:
    """The negative log-likelihood (nats) of each of ``ids[1:]`` given everything before it: one step a
    token at batch 1 from the initial state (``lm.evaluate.token_losses``' order); a progress bar named
    ``desc`` when given."""
    from tqdm import tqdm

    ids = np.asarray(ids, np.int64)
    state, nll = runtime.initial_state(), np.empty(max(len(ids) - 1, 0))
    for t in tqdm(range(len(ids) - 1), desc=desc, disable=desc is None, mininterval=2.0, leave=False):
        logits, state = runtime.step(ids[t : t + 1], state)
        nll[t] = -_log_softmax(logits[0])[ids[t + 1]]
    return nll


def score(runtime: Runtime, text: str) -> dict:
    """Per-token perplexity of ``text`` (every word, then ``<eos>`` at each line end, as PTB reads a file).

    Returns ``{"tokens", "perplexity", "nll"}``: the token count, exp of the mean negative
    log-likelihood (nats), and the per-token negative log-likelihoods.
    """
    vocab = _text_vocab(runtime)
    eos = vocab.index(EOS)
    ids = [i for line in text.splitlines() for i in words_to_ids(line, vocab) + [eos]]
    if not ids:
        raise ValueError("the text has no words to score")
    nll = stream_losses(runtime, [eos] + ids).tolist()  # read as following a sentence end
    return {"tokens": len(ids), "perplexity": math.exp(sum(nll) / len(nll)), "nll": nll}


__all__ = ["TorchRuntime", "OnnxRuntime", "open_runtime", "predict", "score", "stream_losses", "words_to_ids"]
