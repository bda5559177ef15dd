"""The compact model artifact: the bytes a compressed model would ship in.

Layout: ``b"LMZ1"``, a little-endian uint32 header length, a JSON header (model
config, tensor table), then the payload. Every tensor of the state dict is stored in
the cheapest of its allowed encodings:

* ``f32``: float32 values;
* ``q8``: the paper's 8-bit scheme, one byte per number plus ``lo`` and ``step``
  (float32) for the tensor; ``q8c``: the same per output row (a ``lo`` and a
  ``step`` per row);
* ``q2``, ``q3``, ``q4``: weights (``lm.compression.qat.row_axes``) in 2, 3 or 4 bits
  per number (``lm.compression.lowbit``): ``lo`` and ``hi`` (float16) of each row along
  the tensor's row ``axis`` (in its table entry), then the codes packed into bytes. A
  model trained with ``lm.compression.qat`` at that many bits is stored exactly;
* sparse: a bitmask of the nonzero entries (one bit per entry, ``numpy.packbits``)
  followed by the nonzero values only, as ``f32`` or ``q8``. Chosen whenever it is
  smaller than the dense encoding, which happens above ~3% zeros for float32 values.

The vocabulary (zlib-compressed, newline-separated) is part of the artifact, so the
size is what a user downloads to run the model. ``load_artifact`` decodes it back
into a ``LanguageModel``: the perplexities we report are those of the decoded model.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..model import LanguageModel
from . import lowbit, qat
from .quantize import dequantize, quantize_uniform

MAGIC = b"LMZ1"
LOW_BITS = {"q2": 2, "q3": 3, "q4": 4}
QUANT = (None, "q8", "q8c", *LOW_BITS)


@dataclass
class ArtifactInfo:
    """What ``export`` wrote: total bytes, and bytes per tensor (payload only)."""

    path: Path | None
    bytes: int
    tensor_bytes: dict[str, int] = field(default_factory=dict)
    encodings: dict[str, str] = field(default_factory=dict)


def _f32(t: Tensor) -> bytes:
    return t.detach().float().contiguous().numpy().astype("<f4").tobytes()


def _encode_values(values: Tensor, quant: str | None) -> tuple[str, bytes]:
    """Dense encoding of ``values`` (any shape): (codec, bytes)."""
    if quant is None:
        return "f32", _f32(values)
    per_channel = quant == "q8c" and values.dim() > 1
    codes, lo, step = quantize_uniform(values, per_channel)
    return ("q8c" if per_channel else "q8"), _f32(lo.reshape(-1)) + _f32(step.reshape(-1)) + codes.numpy().tobytes()


def encode_tensor(t: Tensor, quant: str | None = None, allow_sparse: bool = True,
                  axis: int | None = None) -> tuple[dict, bytes]:
    """The cheapest encoding of ``t``: (table entry without offset, payload bytes).

    With a low-bit ``quant`` (``"q2"``, ``"q3"``, ``"q4"``), a tensor with a row ``axis``
    (``lm.compression.qat.row_axes``) is stored as its packed codes and per-row scales,
    never sparse; one without (biases) in float32.
    """
    if quant not in QUANT:
        raise ValueError(f"quant must be one of {QUANT}, got {quant!r}")
    if not t.is_floating_point():
        raise ValueError(f"only floating-point tensors can be exported, got {t.dtype}")
    if quant in LOW_BITS:
        if axis is None:
            return encode_tensor(t, None, allow_sparse)
        packed, scale = lowbit.encode_rows(t, LOW_BITS[quant], axis)
        return ({"shape": list(t.shape), "codec": quant, "axis": axis, "sparse": False},
                scale.numpy().astype("<f2").tobytes() + packed.numpy().tobytes())
    codec, blob = _encode_values(t, quant)
    entry = {"shape": list(t.shape), "codec": codec, "sparse": False}
    if allow_sparse and t.numel() > 0:
        mask = t.detach() != 0
        nnz = int(mask.sum())
        if 0 < nnz < t.numel():
            # sparse values are quantized per tensor: rows of a bitmask-coded tensor have no fixed length
            s_codec, values = _encode_values(t.detach()[mask], None if quant is None else "q8")
            bits = np.packbits(mask.reshape(-1).numpy()).tobytes()
            if len(bits) + len(values) < len(blob):
                return {**entry, "codec": s_codec, "sparse": True, "nnz": nnz}, bits + values
    return entry, blob


def _decode_values(buf: memoryview, codec: str, count: int, rows: int) -> Tensor:
    if codec == "f32":
        return torch.from_numpy(np.frombuffer(buf, dtype="<f4", count=count).copy())
    n_scales = rows if codec == "q8c" else 1
    scales = np.frombuffer(buf, dtype="<f4", count=2 * n_scales).copy()
    codes = torch.from_numpy(np.frombuffer(buf, dtype=np.uint8, count=count, offset=8 * n_scales).copy())
    lo, step = torch.from_numpy(scales[:n_scales]), torch.from_numpy(scales[n_scales:])
    if codec == "q8c":
        return dequantize(codes.view(rows, -1), lo, step).reshape(-1)
    return dequantize(codes, lo[0], step[0])


def decode_tensor(entry: dict, buf: memoryview) -> Tensor:
    """Inverse of ``encode_tensor`` (float32)."""
    shape = entry["shape"]
    numel = int(np.prod(shape)) if shape else 1
    if entry["sparse"]:
        nbits = (numel + 7) // 8
        mask = torch.from_numpy(np.unpackbits(np.frombuffer(buf, dtype=np.uint8, count=nbits))[:numel].astype(bool))
        out = torch.zeros(numel)
        out[mask] = _decode_values(buf[nbits:], entry["codec"], entry["nnz"], 1)
        return out.view(shape)
    if entry["codec"] in LOW_BITS:
        rows = shape[entry["axis"]]
        scale = torch.from_numpy(np.frombuffer(buf, dtype="<f2", count=2 * rows).copy()).view(2, rows)
        packed = torch.from_numpy(np.frombuffer(buf, dtype=np.uint8, offset=4 * rows).copy())
        return lowbit.decode_rows(packed, scale, LOW_BITS[entry["codec"]], tuple(shape), entry["axis"])
    rows = shape[0] if shape else 1
    return _decode_values(buf, entry["codec"], numel, rows).view(shape)


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
    table, chunks, offset = [], [], 0
    info = ArtifactInfo(None, 0)
    seen: dict[tuple[int, tuple], str] = {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:  # tied weights are stored once
            table.append({"name": name, "alias": seen[key]})
            continue
        seen[key] = name
        entry, blob = encode_tensor(t, quant, allow_sparse, axes.get(name))
        table.append({"name": name, **entry, "offset": offset, "nbytes": len(blob)})
        chunks.append(blob)
        offset += len(blob)
        info.tensor_bytes[name] = len(blob)
        info.encodings[name] = ("sparse " if entry["sparse"] else "") + entry["codec"]
    vocab = zlib.compress("\n".join(model.vocab).encode(), 9) if model.vocab is not None else b""
    header = {"format": 1, "config": asdict(model.config), "tensors": table,
              "vocab": {"offset": offset, "nbytes": len(vocab)} if vocab else None}
    head = json.dumps(header, separators=(",", ":")).encode()
    data = MAGIC + struct.pack("<I", len(head)) + head + b"".join(chunks) + vocab
    info.bytes = len(data)
    return data, info


def export(model: LanguageModel, path: str | os.PathLike, quant: str | None = None,
           allow_sparse: bool = True) -> ArtifactInfo:
    """Write the compact artifact of ``model`` to ``path``; ``quant`` is None, ``"q8"``, ``"q8c"``, or
    ``"q2"`` / ``"q3"`` / ``"q4"`` (weights in packed codes with per-row ranges, biases float32)."""
    data, info = export_bytes(model, quant, allow_sparse)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    info.path = path
    return info


def decode(data: bytes) -> LanguageModel:
    """The ``LanguageModel`` held by an artifact's bytes, in eval mode (float32)."""
    if data[:4] != MAGIC:
        raise ValueError("not an lm compact artifact (bad magic bytes)")
    (head_len,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + head_len])
    payload = memoryview(data)[8 + head_len :]
    vocab = None
    if header["vocab"]:
        v = header["vocab"]
        vocab = zlib.decompress(payload[v["offset"] : v["offset"] + v["nbytes"]]).decode().split("\n")
    model = LanguageModel(ModelConfig(**header["config"]), vocab)
    state: dict[str, Tensor] = {}
    for entry in header["tensors"]:
        if "alias" in entry:
            state[entry["name"]] = state[entry["alias"]]
        else:
            state[entry["name"]] = decode_tensor(entry, payload[entry["offset"] : entry["offset"] + entry["nbytes"]])
    model.load_state_dict(state)
    return model.eval()


def load_artifact(path: str | os.PathLike) -> LanguageModel:
    """The model stored by ``export`` at ``path``, in eval mode."""
    return decode(Path(path).read_bytes())


def artifact_size(model: LanguageModel, quant: str | None = None) -> int:
    """Bytes of the artifact ``export`` would write, without writing it."""
    return export_bytes(model, quant)[1].bytes


__all__ = ["ArtifactInfo", "export", "export_bytes", "decode", "load_artifact", "artifact_size", "encode_tensor",
           "decode_tensor"]
