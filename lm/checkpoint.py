"""Checkpoints: the model (config, vocabulary, weights) and the training state, as safe files.

``lm.load(path)`` is the loading contract other code relies on: it returns the
``LanguageModel`` in eval mode, with ``model.vocab`` the list of words by id. It opens a
checkpoint (``save_model``) and a compact artifact (``lm.compression.export``) alike, by
their contents, and a run directory holding one of them. Both are ``lm.modelfile`` files;
the model is built only after its config has been checked against limits and its tensors'
shapes against the config (on the meta device, which allocates nothing). A file lm cannot
trust raises ``ModelFileError`` (a ``ValueError``) naming it and what is wrong.

Nothing here unpickles a file. ``convert_legacy`` reads a checkpoint of the retired
``torch.save`` format with ``torch.load(weights_only=True)`` (tensors and plain containers
only), for a user who asks for it (``lm convert --legacy``).
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from . import modelfile
from .config import ModelConfig
from .model import LanguageModel
from .modelfile import ModelFileError, expect

MODEL_FILE = "model.safetensors"
ARTIFACT_FILE = "artifact.safetensors"
TRAIN_STATE_FILE = "train_state.safetensors"
MAX_WORD_BYTES = 256  # longest vocabulary entry (UTF-8 bytes)
VOCAB_RATIO = 64  # most a stored vocabulary may inflate
LIMITS = {"vocab_size": 10_000_000, "hidden_size": 1_000_000, "num_layers": 64, "embedding_size": 1_000_000}
MAX_INT, MAX_LIST, MAX_DEPTH = 10**8, 4096, 8  # any integer, list length and nesting depth in a layer spec


# -- the model's parts ---------------------------------------------------------------------------
def encode_vocab(vocab: list[str] | None) -> dict[str, Tensor]:
    """The vocabulary as a zlib-compressed uint8 tensor (none for a model without one)."""
    if vocab is None:
        return {}
    for word in vocab:  # what decode_vocab accepts, checked here rather than when the file is read
        if not isinstance(word, str) or "\n" in word or len(word.encode()) > MAX_WORD_BYTES:
            raise ValueError(f"a vocabulary word must be a string of at most {MAX_WORD_BYTES} UTF-8 bytes without "
                             f"a newline, got {word!r:.80}")
    text = "\n".join(vocab).encode()
    data = zlib.compress(text, 9)
    if len(text) > VOCAB_RATIO * len(data) + 4096:
        raise ValueError(f"the vocabulary compresses more than {VOCAB_RATIO}-fold, which a model file refuses to "
                         "inflate")
    return {"__vocab__": torch.frombuffer(bytearray(data), dtype=torch.uint8)}


def decode_vocab(tensors: dict[str, Tensor], vocab_size: int, name: str | os.PathLike) -> list[str] | None:
    """Inverse of ``encode_vocab``; the decompression stops at what ``vocab_size`` words can take."""
    t = tensors.pop("__vocab__", None)
    if t is None:
        return None
    if t.dtype != torch.uint8 or t.dim() != 1:
        raise ModelFileError(name, f"the vocabulary tensor is {t.dtype} {tuple(t.shape)}, expected 1-D uint8")
    # a word list compresses a few times, never a thousandfold: the bound keeps a zlib bomb small
    limit = min(vocab_size * (MAX_WORD_BYTES + 1), VOCAB_RATIO * t.numel() + 4096)
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(t.numpy().tobytes(), limit)
    except zlib.error as err:
        raise ModelFileError(name, f"the vocabulary does not decompress ({err})") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise ModelFileError(name, f"the vocabulary inflates beyond {limit} bytes, or is truncated")
    try:
        vocab = text.decode().split("\n")
    except UnicodeDecodeError:
        raise ModelFileError(name, "the vocabulary is not UTF-8") from None
    if len(vocab) != vocab_size:
        raise ModelFileError(name, f"the vocabulary has {len(vocab)} words, the config says {vocab_size}")
    return vocab


def _check_spec(value, where: str, name, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ModelFileError(name, f"config {where} is nested deeper than {MAX_DEPTH}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_spec(v, f"{where}.{k}", name, depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_LIST:
            raise ModelFileError(name, f"config {where} has {len(value)} entries, more than {MAX_LIST}")
        for i, v in enumerate(value):
            _check_spec(v, f"{where}[{i}]", name, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ModelFileError(name, f"config {where} = {value} is beyond {MAX_INT}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ModelFileError(name, f"config {where} = {value} is not finite")


def model_config(d, name: str | os.PathLike) -> ModelConfig:
    """A ``ModelConfig`` from a file's JSON, its fields' types and sizes checked against ``LIMITS``."""
    known = {f.name: f for f in fields(ModelConfig)}
    if not isinstance(d, dict):
        raise ModelFileError(name, f"the model config is missing or not a mapping ({type(d).__name__})")
    if set(d) - set(known):
        raise ModelFileError(name, f"the model config has fields this lm does not know: {sorted(set(d) - set(known))}")
    for key, value in d.items():
        default = known[key].default
        if key in LIMITS:
            ok = (value is None and key == "embedding_size") or (
                type(value) is int and 1 <= value <= LIMITS[key])
            if not ok:
                raise ModelFileError(name, f"config {key} = {value!r}, expected an integer in 1..{LIMITS[key]}")
        elif key == "dropout":
            if type(value) not in (int, float) or not 0 <= value < 1:
                raise ModelFileError(name, f"config dropout = {value!r}, expected a number in [0, 1)")
        elif isinstance(default, bool) and type(value) is not bool:
            raise ModelFileError(name, f"config {key} = {value!r}, expected true or false")
        elif key in ("embedding", "lstm", "decoder"):
            if not isinstance(value, dict) or not isinstance(value.get("type", "dense"), str):
                raise ModelFileError(name, f"config {key} = {value!r} is not a layer spec")
        _check_spec(value, key, name)
    return ModelConfig(**d)


def build(config: dict, tensors: dict[str, Tensor], aliases: dict, vocab: list[str] | None,
          name: str | os.PathLike) -> LanguageModel:
    """The model of ``config`` holding ``tensors`` (float32, one per parameter, tied ones in
    ``aliases``), in eval mode; everything is checked before the model is allocated."""
    cfg = model_config(config, name)
    try:
        with torch.device("meta"):  # shapes without allocation
            shapes = {k: (tuple(v.shape), v.dtype) for k, v in LanguageModel(cfg).state_dict().items()}
    except Exception as err:  # noqa: BLE001 - any failure of an untrusted spec is the file's fault
        raise ModelFileError(name, f"the model config does not build a model ({type(err).__name__}: {err})") from None
    if not isinstance(aliases, dict) or not all(
            isinstance(a, str) and isinstance(b, str) and b in tensors and a not in tensors for a, b in aliases.items()):
        raise ModelFileError(name, "malformed alias table")
    state = {**tensors, **{a: tensors[b] for a, b in aliases.items()}}
    if set(state) != set(shapes):
        missing, extra = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
        raise ModelFileError(name, f"the tensors do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, (shape, dtype) in shapes.items():
        expect(state, key, dtype, shape, name)
    model = LanguageModel(cfg, vocab)
    model.load_state_dict(state)
    return model.eval()


def _identity(t: Tensor) -> tuple:
    """What makes two tensors one (a tied weight): the same view of the same memory."""
    return t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride()


def dedupe(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tied tensors stored once: (distinct tensors, alias -> stored name)."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in state.items():
        key = _identity(t)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t
    return tensors, aliases


# -- checkpoints ---------------------------------------------------------------------------------
@torch.no_grad()
def _computed_state(model: LanguageModel) -> dict[str, Tensor]:
    """``model.state_dict()`` with each parametrized weight replaced by its computed value under
    its own name (a weight tied to it, the same tensor)."""
    state = model.state_dict()
    computed: dict[int, Tensor] = {}
    for prefix, m in model.named_modules():
        if not parametrize.is_parametrized(m):
            continue
        head = f"{prefix}." if prefix else ""
        for name, plist in m.parametrizations.items():
            for key in [k for k in state if k.startswith(f"{head}parametrizations.{name}.")]:
                del state[key]
            state[head + name] = computed.setdefault(id(plist.original), getattr(m, name).detach())
    return state


def save_model(model: LanguageModel, path: str | os.PathLike) -> int:
    """Save the model as a checkpoint (float32 weights, config, vocabulary); returns its size in bytes.

    A parametrized weight (``torch.nn.utils.parametrize``, e.g. the fake-quantizers of
    ``lm.compression.qat``) is saved as the value the model computes with, so that the
    checkpoint loads as a plain model; a training state keeps the parametrization to resume.
    """
    tensors, aliases = dedupe(_computed_state(model))
    other = sorted(k for k, t in tensors.items() if t.dtype != torch.float32)
    if other:
        raise ValueError(f"a checkpoint holds float32 weights; {other[0]} is {tensors[other[0]].dtype} "
                         "(save model.float())")
    meta = {"config": asdict(model.config), "aliases": aliases}
    return modelfile.write(path, "checkpoint", meta, {**tensors, **encode_vocab(model.vocab)})


# model-file kind -> reader(file, name) of the kinds other than checkpoints; lm.compression.export registers
# "artifact" (importing lm imports it)
READERS: dict[str, Callable[[modelfile.ModelFile, str | os.PathLike], LanguageModel]] = {}


def model_from_file(f: modelfile.ModelFile, name: str | os.PathLike) -> LanguageModel:
    """The model held by a checkpoint or an artifact that ``modelfile`` has read."""
    if f.kind in READERS:
        return READERS[f.kind](f, name)
    if f.kind != "checkpoint":
        raise ModelFileError(name, f"is a {f.kind}, not a model (load the {MODEL_FILE} beside it)")
    config = f.meta.get("config")
    vocab = decode_vocab(f.tensors, model_config(config, name).vocab_size, name)
    return build(config, f.tensors, f.meta.get("aliases", {}), vocab, name)


def resolve(path: str | os.PathLike) -> Path:
    """``path``, or the model file in the run directory ``path``."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in (MODEL_FILE, ARTIFACT_FILE) if (path / n).is_file()]
        if not found:
            raise ModelFileError(path, f"is a directory without a model file ({MODEL_FILE} or {ARTIFACT_FILE})")
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LanguageModel:
    """The language model saved at ``path`` (a checkpoint, an artifact or a run directory), in eval mode."""
    path = resolve(path)
    model = model_from_file(modelfile.read(path, ("checkpoint", "artifact", "train_state")), path)
    return model.to(map_location)


# -- training state ------------------------------------------------------------------------------
def _flatten(obj, tensors: dict[str, Tensor], seen: dict | None = None):
    """A JSON-able tree of ``obj``; tensors move to ``tensors`` (tuples and non-string keys are tagged).
    A tensor met again (a tied weight, under both its names) is stored once and referenced twice."""
    seen = {} if seen is None else seen
    if isinstance(obj, Tensor):
        alias = _identity(obj)
        if alias not in seen:
            seen[alias] = f"t{len(tensors)}"
            tensors[seen[alias]] = obj
        return {"__tensor__": seen[alias]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, tensors, seen) for k, v in obj.items()}
        bad = [k for k in obj if not (k is None or isinstance(k, (str, int, float, bool)))]  # what _unflatten reads
        if bad:
            raise TypeError(f"a training state's keys are strings and numbers, not {bad[0]!r}")
        return {"__items__": [[_flatten(k, tensors, seen), _flatten(v, tensors, seen)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors, seen) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors, seen) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"a training state holds tensors, containers and numbers, not {type(obj).__name__}")


def _unflatten(tree, tensors: dict[str, Tensor], used: set[str], name, depth: int = 0):
    """``_flatten``'s inverse; the keys of ``tensors`` it references go into ``used``."""
    if depth > 32:
        raise ModelFileError(name, "training state nested too deeply")
    if isinstance(tree, list):
        return [_unflatten(v, tensors, used, name, depth + 1) for v in tree]
    if not isinstance(tree, dict):
        return tree
    tags = [k for k in tree if k.startswith("__")]
    if not tags:
        return {k: _unflatten(v, tensors, used, name, depth + 1) for k, v in tree.items()}
    if len(tree) != 1:
        raise ModelFileError(name, f"malformed training state (tags {tags} among other keys)")
    tag, value = next(iter(tree.items()))
    if tag == "__tensor__" and isinstance(value, str) and value in tensors:
        used.add(value)
        return tensors[value]  # a tensor referenced twice (a tied weight) is one tensor again
    if tag == "__tuple__" and isinstance(value, list):
        return tuple(_unflatten(v, tensors, used, name, depth + 1) for v in value)
    if tag == "__items__" and isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        out = {}
        for k, v in value:
            k = _unflatten(k, tensors, used, name, depth + 1)
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise ModelFileError(name, "malformed training state (a key that is not a number or a string)")
            out[k] = _unflatten(v, tensors, used, name, depth + 1)
        return out
    raise ModelFileError(name, f"malformed training state (bad {tag} entry)")


TRAIN_STATE_KEYS = {"config": dict, "model": dict, "optimizer": dict, "rng": Tensor, "epoch": int, "history": list,
                    "elapsed": float}


def save_train_state(state: dict, path: str | os.PathLike) -> int:
    """Save what resuming needs (config, model and optimizer state, RNG, epoch, history; and ``partial``, the epoch in
    progress, when saved within it); returns the bytes."""
    tensors: dict[str, Tensor] = {}
    tree = _flatten(state, tensors)
    return modelfile.write(path, "train_state", {"state": tree}, tensors)


def _check_train_state(state, name: str | os.PathLike) -> dict:
    """``state`` if it is a training state as ``save_train_state`` writes it (ModelFileError naming ``name`` otherwise)."""
    if not isinstance(state, dict):
        raise ModelFileError(name, "malformed training state (not a mapping)")
    for key, kind in TRAIN_STATE_KEYS.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is float and not math.isfinite(value)):
            raise ModelFileError(name, f"training state {key!r} is missing or not a {kind.__name__}")
    partial = state.get("partial")
    if state["rng"].dtype != torch.uint8 or state["rng"].dim() != 1 or state["epoch"] < (-1 if partial else 0):
        raise ModelFileError(name, "training state has a malformed RNG state or epoch")
    if partial is not None and not (
            isinstance(partial, dict) and partial.get("epoch") == state["epoch"] + 1
            and all(isinstance(partial.get(k), int) and not isinstance(partial.get(k), bool) and partial[k] > 0
                    for k in ("step", "count"))
            and all(isinstance(partial.get(k), float) and math.isfinite(partial[k]) for k in ("total", "seconds"))):
        raise ModelFileError(name, "training state has a malformed 'partial' (the epoch in progress)")
    if not all(isinstance(t, Tensor) for t in state["model"].values()):
        raise ModelFileError(name, "training state 'model' is not a state dict of tensors")
    return state


def load_train_state(path: str | os.PathLike) -> dict:
    """The training state saved at ``path``, its structure checked (ModelFileError otherwise)."""
    f = modelfile.read(path, ("train_state",))
    used: set[str] = set()
    state = _unflatten(f.meta.get("state"), f.tensors, used, path)
    if used != f.tensors.keys():
        raise ModelFileError(path, f"unreferenced tensors {sorted(f.tensors.keys() - used)[:3]}")
    return _check_train_state(state, path)


# -- the retired format --------------------------------------------------------------------------
def _described(value, item: type, key: type | None = None) -> str:
    """What ``value`` is, where a list of ``item`` (given ``key``: a mapping of ``key`` to ``item``) was expected."""
    if key is not None and isinstance(value, dict):
        k, v = next((k, v) for k, v in value.items() if not (isinstance(k, key) and isinstance(v, item)))
        return f"a dict with the entry {k!r:.40}: {type(v).__name__}"
    if key is None and isinstance(value, list):
        v = next(v for v in value if not isinstance(v, item))
        return f"a list holding {type(v).__name__} {v!r:.40}"
    return type(value).__name__


def _legacy_vocab(vocab, vocab_size: int, src: str | os.PathLike) -> list[str] | None:
    """A legacy checkpoint's vocabulary, checked to be absent or ``vocab_size`` strings that a model file can hold."""
    if vocab is None:
        return None
    if not isinstance(vocab, list) or not all(isinstance(word, str) for word in vocab):
        raise ModelFileError(src, f"the vocabulary must be a list of strings, got {_described(vocab, str)}")
    if len(vocab) != vocab_size:
        raise ModelFileError(src, f"the vocabulary has {len(vocab)} words, the config says {vocab_size}")
    try:
        encode_vocab(vocab)
    except ValueError as err:
        raise ModelFileError(src, str(err)) from None
    return vocab


def convert_legacy(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Convert a ``torch.save`` checkpoint of an earlier lm (``{"config", "vocab", "state_dict"}``) or
    training state into this format; returns the new file's size.

    Read with ``torch.load(weights_only=True)``, which restores tensors and plain containers
    only and refuses anything else; convert only files you trust all the same.
    """
    try:
        blob = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch refuses, the user must hear which file
        raise ModelFileError(src, f"not a legacy lm checkpoint torch can read safely ({type(err).__name__}: {err})") from None
    if isinstance(blob, dict) and {"config", "state_dict"} <= set(blob):
        state = blob["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(t, Tensor) for k, t in state.items()):
            raise ModelFileError(src, f"the state_dict must be a mapping of parameter names to tensors, got "
                                      f"{_described(state, Tensor, str)}")
        vocab = _legacy_vocab(blob.get("vocab"), model_config(blob["config"], src).vocab_size, src)
        return save_model(build(blob["config"], state, {}, vocab, src), dst)
    if isinstance(blob, dict) and set(TRAIN_STATE_KEYS) <= set(blob):
        _check_train_state(blob, src)
        try:
            return save_train_state(blob, dst)
        except TypeError as err:  # a value _flatten cannot store (a set, a dtype ...)
            raise ModelFileError(src, f"the training state cannot be stored: {err}") from None
    raise ModelFileError(src, "not a legacy lm checkpoint or training state")


__all__ = ["load", "save_model", "save_train_state", "load_train_state", "convert_legacy", "resolve", "build",
           "model_config", "encode_vocab", "decode_vocab", "dedupe", "MODEL_FILE", "ARTIFACT_FILE", "TRAIN_STATE_FILE",
           "ModelFileError"]
