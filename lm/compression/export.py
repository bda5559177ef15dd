"""The compact model artifact: the bytes a compressed model would ship in.

An artifact is an ``lm.modelfile`` file of kind ``"artifact"`` (safetensors, with a
format version and a checksum; nothing in it runs code). Every tensor of the state dict
is stored in the cheapest of its allowed encodings, as one or more safetensors tensors:

* ``f32``: the float32 values, under the tensor's name;
* ``q8``: the paper's 8-bit scheme, one byte per number (``NAME:codes``, uint8) plus
  ``NAME:scale`` (float32 ``lo`` and ``step``, shape (2, 1)); ``q8c``: the same per output
  row (``NAME:scale`` of shape (2, rows));
* ``q2``, ``q3``, ``q4``: weights (``lm.compression.qat.row_axes``) in 2, 3 or 4 bits per
  number (``lm.compression.lowbit``): ``NAME:codes``, the codes packed into bytes (uint8,
  ``ceil(n * bits / 8)``), and ``NAME:scale``, each row's ``lo`` and ``hi`` (float16,
  shape (2, rows)) along the row ``axis`` given in the table; never sparse. The codes and
  ranges are settled (``lm.compression.lowbit.quantize_rows``): the decoded weights quantize to
  them again, so a decoded artifact exports to the same tensors bit for bit, and a model
  trained with ``lm.compression.qat`` at that many bits (baked) is stored exactly. Tensors
  without a row axis (biases) stay ``f32``;
* sparse: a bitmask of the nonzero entries (``NAME:mask``, one bit per entry,
  ``numpy.packbits``) and the nonzero values only (``NAME:values`` as ``f32``, or
  ``NAME:codes`` and ``NAME:scale`` as ``q8``). Chosen whenever it is smaller than the dense
  encoding, which happens above ~3% zeros for float32 values.

The metadata holds the model config and the table of encodings (tied tensors are stored
once, as aliases); the vocabulary is a zlib-compressed uint8 tensor, so the size is what a
user downloads to run the model. ``lm.load`` (or ``load_artifact``) decodes it back into a
``LanguageModel``, checking every part's dtype and shape against the table (and refusing a
part its tensor's encoding does not read) and the table against the config first: the
perplexities we report are those of the decoded model.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .. import modelfile
from ..checkpoint import READERS, build, dedupe, encode_vocab, decode_vocab, model_config
from ..model import LanguageModel
from ..modelfile import ModelFileError
from . import lowbit, qat
from .quantize import dequantize, quantize_uniform

LOW_BITS = {"q2": 2, "q3": 3, "q4": 4}
QUANT = (None, "q8", "q8c", *LOW_BITS)
CODECS = ("f32", "q8", "q8c", *LOW_BITS)


@dataclass
class ArtifactInfo:
    """What ``export`` wrote: total bytes, and bytes per tensor (its parts' data only)."""

    path: Path | None
    bytes: int
    tensor_bytes: dict[str, int] = field(default_factory=dict)
    encodings: dict[str, str] = field(default_factory=dict)


def _encode_values(values: Tensor, quant: str | None) -> tuple[str, dict[str, Tensor]]:
    """Dense encoding of ``values`` (any shape): (codec, parts by suffix)."""
    values = values.detach().float()
    if quant is None:
        return "f32", {"": values}
    per_channel = quant == "q8c" and values.dim() > 1
    codes, lo, step = quantize_uniform(values, per_channel)
    return ("q8c" if per_channel else "q8"), {":codes": codes, ":scale": torch.stack([lo.reshape(-1), step.reshape(-1)])}


def _nbytes(parts: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


def encode_tensor(t: Tensor, quant: str | None = None, allow_sparse: bool = True,
                  axis: int | None = None) -> tuple[dict, dict[str, Tensor]]:
    """The cheapest encoding of ``t``: (table entry, parts: tensors keyed by the suffix they get after its name).

    With a low-bit ``quant`` (``"q2"``, ``"q3"``, ``"q4"``), a tensor with a row ``axis``
    (``lm.compression.qat.row_axes``) is stored as its packed codes and per-row ranges; one
    without (a bias) as with ``quant=None``.
    """
    if quant not in QUANT:
        raise ValueError(f"quant must be one of {QUANT}, got {quant!r}")
    if not t.is_floating_point():
        raise ValueError(f"only floating-point tensors can be exported, got {t.dtype}")
    if quant in LOW_BITS:
        if axis is None:
            return encode_tensor(t, None, allow_sparse)
        packed, scale = lowbit.encode_rows(t, LOW_BITS[quant], axis)
        return {"shape": list(t.shape), "codec": quant, "axis": axis, "sparse": False}, {":codes": packed, ":scale": scale}
    codec, parts = _encode_values(t, quant)
    entry = {"shape": list(t.shape), "codec": codec, "sparse": False}
    if allow_sparse and t.numel() > 0:
        mask = t.detach() != 0
        nnz = int(mask.sum())
        if 0 < nnz < t.numel():
            # sparse values are quantized per tensor: rows of a bitmask-coded tensor have no fixed length
            s_codec, values = _encode_values(t.detach()[mask], None if quant is None else "q8")
            bits = torch.from_numpy(np.packbits(mask.reshape(-1).numpy()))
            if bits.numel() + _nbytes(values) < _nbytes(parts):
                return ({**entry, "codec": s_codec, "sparse": True, "nnz": nnz},
                        {":mask": bits, **({":values": values[""]} if s_codec == "f32" else values)})
    return entry, parts


def _part(parts: dict[str, Tensor], suffix: str, dtype: torch.dtype, shape: tuple[int, ...], key: str,
          path: str) -> Tensor:
    """``parts[suffix]`` of tensor ``key``, checked to be of ``dtype`` and ``shape`` (``modelfile.expect``, naming
    the tensor and the part)."""
    return modelfile.expect(parts, suffix, dtype, shape, path,
                            f"tensor {key!r}" + (f" (part {suffix!r})" if suffix else ""))


def _decode_values(parts: dict[str, Tensor], codec: str, shape: tuple[int, ...], sparse: bool, key: str,
                   path: str) -> Tensor:
    """float32 values of ``shape`` from the parts of one encoding of tensor ``key`` (the nonzero values of a
    ``sparse`` one), each checked first."""
    if codec == "f32":
        return _part(parts, ":values" if sparse else "", torch.float32, shape, key, path).clone()
    rows = shape[0] if codec == "q8c" else 1
    codes = _part(parts, ":codes", torch.uint8, shape, key, path)
    lo, step = _part(parts, ":scale", torch.float32, (2, rows), key, path)
    if not (torch.isfinite(lo).all() and torch.isfinite(step).all() and (step >= 0).all()):
        raise ModelFileError(path, f"tensor {key!r} (part ':scale'): a scale that is not finite, or a negative step")
    if codec == "q8c":
        return dequantize(codes.view(rows, -1), lo, step).reshape(shape)
    return dequantize(codes, lo[0], step[0])


def decode_tensor(entry: dict, parts: dict[str, Tensor], key: str = "<tensor>", path: str = "<artifact>") -> Tensor:
    """Inverse of ``encode_tensor`` (float32): tensor ``key`` of the artifact at ``path``, from its table entry and
    its parts (keyed by suffix); a bad entry, a part missing or of the wrong dtype or shape, or a part its
    encoding does not read, raises ``ModelFileError`` naming the tensor (and the part)."""
    shape = tuple(entry["shape"])
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    codec = entry.get("codec")
    if codec not in CODECS or (codec == "q8c" and (len(shape) < 2 or entry["sparse"])):
        raise ModelFileError(path, f"tensor {key!r}: unknown encoding {codec!r} for shape {list(shape)}")
    sparse = entry["sparse"]
    reads = ({":mask"} if sparse else set()) | ({":values" if sparse else ""} if codec == "f32" else {":codes", ":scale"})
    unread = sorted(set(parts) - reads)
    if unread:
        raise ModelFileError(path, f"tensor {key!r} (part {unread[0]!r}): {key + unread[0]!r} is not read by its "
                                   f"encoding ({'sparse ' if sparse else ''}{codec})")
    if codec in LOW_BITS:
        axis = entry.get("axis")
        if entry["sparse"] or type(axis) is not int or not 0 <= axis < len(shape):
            raise ModelFileError(path, f"tensor {key!r}: encoding {codec!r} needs a dense tensor and a row axis of "
                                       f"{list(shape)}, got axis {axis!r}")
        bits = LOW_BITS[codec]
        packed = _part(parts, ":codes", torch.uint8, (lowbit.packed_bytes(numel, bits),), key, path)
        scale = _part(parts, ":scale", torch.float16, (2, shape[axis]), key, path)
        if not (torch.isfinite(scale).all() and (scale[0] <= scale[1]).all()):
            raise ModelFileError(path, f"tensor {key!r} (part ':scale'): a row range that is not finite, or whose "
                                       "low end exceeds its high end")
        return lowbit.decode_rows(packed, scale, bits, shape, axis)
    if not entry["sparse"]:
        return _decode_values(parts, codec, shape, False, key, path)
    bits = _part(parts, ":mask", torch.uint8, ((numel + 7) // 8,), key, path)
    unpacked = np.unpackbits(bits.numpy())
    nnz = int(unpacked[:numel].sum())
    if unpacked[numel:].any() or nnz != entry.get("nnz"):
        raise ModelFileError(path, f"tensor {key!r} (part ':mask'): the sparse mask of {entry.get('nnz')} entries "
                                   f"sets {nnz} (or padding bits)")
    out = torch.zeros(numel)
    out[torch.from_numpy(unpacked[:numel].astype(bool))] = _decode_values(parts, codec, (nnz,), True, key, path)
    return out.view(shape)


def _check_exportable(model: nn.Module) -> None:
    reparam = [k for k in model.state_dict() if k.endswith("_orig") or k.endswith("_mask")]
    if reparam:
        raise ValueError(f"the model still holds pruning masks ({reparam[0]}, ...): "
                         "call lm.compression.prune.finalize(model) before exporting")


def export_bytes(model: LanguageModel, quant: str | None = None, allow_sparse: bool = True) -> tuple[bytes, ArtifactInfo]:
    """The artifact of ``model`` as bytes, and its accounting."""
    _check_exportable(model)
    if qat.is_qat(model):
        raise ValueError("the model is in QAT mode: call lm.compression.qat.bake(model) before exporting")
    axes = qat.row_axes(model)
    stored, aliases = dedupe(model.state_dict())  # tied weights are stored once
    table, tensors = {}, {}
    info = ArtifactInfo(None, 0)
    for name, t in stored.items():
        entry, parts = encode_tensor(t, quant, allow_sparse, axes.get(name))
        table[name] = entry
        tensors.update({name + suffix: part for suffix, part in parts.items()})
        info.tensor_bytes[name] = _nbytes(parts)
        info.encodings[name] = ("sparse " if entry["sparse"] else "") + entry["codec"]
    meta = {"config": asdict(model.config), "tensors": table, "aliases": aliases}
    data = modelfile.dumps("artifact", meta, {**tensors, **encode_vocab(model.vocab)})
    info.bytes = len(data)
    return data, info


def export(model: LanguageModel, path: str | os.PathLike, quant: str | None = None,
           allow_sparse: bool = True) -> ArtifactInfo:
    """Write the compact artifact of ``model`` to ``path`` (atomically); ``quant`` is None, ``"q8"``, ``"q8c"``,
    or ``"q2"`` / ``"q3"`` / ``"q4"`` (weights as packed codes with per-row ranges, biases float32)."""
    data, info = export_bytes(model, quant, allow_sparse)
    info.path = Path(path)
    modelfile.write_atomic(path, data)
    return info


PART_SUFFIXES = frozenset({"", ":values", ":codes", ":scale", ":mask"})  # what encode_tensor's encodings write


def model_from_artifact(f: modelfile.ModelFile, name: str | os.PathLike) -> LanguageModel:
    """The model of an artifact ``modelfile`` has read; the table is checked against the config
    (shapes from the meta device) before any tensor is decoded."""
    config = model_config(f.meta.get("config"), name)
    vocab = decode_vocab(f.tensors, config.vocab_size, name)
    table = f.meta.get("tensors")
    if not isinstance(table, dict):
        raise ModelFileError(name, "malformed tensor table")
    try:
        with torch.device("meta"):
            shapes = {k: list(v.shape) for k, v in LanguageModel(config).state_dict().items()}
    except Exception as err:  # noqa: BLE001 - any failure of an untrusted spec is the file's fault
        raise ModelFileError(name, f"the model config does not build a model ({type(err).__name__}: {err})") from None
    state, used = {}, set()
    for key, entry in table.items():
        if (key not in shapes or not isinstance(entry, dict) or not isinstance(entry.get("shape"), list)
                or not all(type(n) is int for n in entry["shape"]) or shapes[key] != entry["shape"]
                or type(entry.get("sparse")) is not bool):
            raise ModelFileError(name, f"table entry {key!r} does not match the config's {shapes.get(key)}")
        parts = {k[len(key):]: t for k, t in f.tensors.items() if k == key or k.startswith(key + ":")}
        if not set(parts) <= PART_SUFFIXES:
            raise ModelFileError(name, f"table entry {key!r} has parts no encoding writes: "
                                       f"{sorted(set(parts) - PART_SUFFIXES)[:3]}")
        used.update(key + suffix for suffix in parts)
        state[key] = decode_tensor(entry, parts, key, str(name))
    if used != set(f.tensors):
        raise ModelFileError(name, f"tensors outside the table: {sorted(set(f.tensors) - used)[:3]}")
    return build(asdict(config), state, f.meta.get("aliases", {}), vocab, name)


def decode(data: bytes, name: str = "<artifact>") -> LanguageModel:
    """The ``LanguageModel`` held by an artifact's bytes, in eval mode (float32)."""
    return model_from_artifact(modelfile.loads(data, name, ("artifact",)), name)


def load_artifact(path: str | os.PathLike) -> LanguageModel:
    """The model stored by ``export`` at ``path``, in eval mode."""
    return model_from_artifact(modelfile.read(path, ("artifact",)), path)


def artifact_size(model: LanguageModel, quant: str | None = None) -> int:
    """Bytes of the artifact ``export`` would write, without writing it."""
    return export_bytes(model, quant)[1].bytes


READERS["artifact"] = model_from_artifact  # lm.load and the CLI read artifacts through lm.checkpoint

__all__ = ["ArtifactInfo", "export", "export_bytes", "decode", "load_artifact", "artifact_size", "encode_tensor",
           "decode_tensor", "model_from_artifact"]
