"""The one file format of lm's models: safetensors, with a format version and a checksum.

Every model file lm writes (a checkpoint, a compact artifact, a training state) is a
`safetensors <https://github.com/huggingface/safetensors>`_ file: an 8-byte header
length, a JSON header (each tensor's dtype, shape and byte range, and a string
``__metadata__``), then the raw tensor bytes. Nothing in it is executable, and reading it
runs no code of its author. lm writes the header canonically (compact JSON, keys sorted,
padded with spaces to a multiple of 8 bytes), so that the same contents always give the
same bytes. lm's metadata:

* ``format``: ``"lm"``; ``kind``: ``"checkpoint"``, ``"artifact"`` or ``"train_state"``;
  ``version``: ``VERSION``;
* ``meta``: a JSON document (model config, tensor table, history ...), read by the kind's loader;
* ``sha256``: the SHA-256 of the canonical header without this key (sorted keys, no
  spaces) followed by the tensor bytes. It covers what the header says, not its whitespace:
  the reader also requires the header's bytes to be its compact JSON, in the file's key
  order, then spaces (the layout of the files lm writes, and of those safetensors wrote for
  it before), so that a flipped byte anywhere, in the header's padding as well, is caught.

``read`` checks, in this order and before any allocation larger than the file: the file
size, the header length against the file and ``MAX_HEADER_BYTES``, the header's JSON,
format, version and kind, the checksum, the header's layout, then the tensor table
(safetensors refuses offsets that do not tile the data exactly). Whatever is wrong is raised
as ``ModelFileError``, a ``ValueError`` naming the file. Writes are atomic: a temporary file
in the same directory, fsynced, then ``os.replace``, so that a kill leaves the old file or
the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

VERSION = 1
KINDS = ("checkpoint", "artifact", "train_state")
MAX_FILE_BYTES = 1 << 33  # 8 GiB: the large preset's training state is well below
MAX_HEADER_BYTES = 1 << 24  # 16 MiB: a header holds a tensor table and a config, not data


class ModelFileError(ValueError):
    """A file that is not a valid lm model file: truncated, corrupted, of another version or foreign."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class ModelFile:
    """What ``read`` found: the kind, its metadata document and its tensors (on the CPU)."""

    kind: str
    meta: dict
    tensors: dict[str, Tensor]
    bytes: int


def _canonical(header: dict) -> bytes:
    head = dict(header)
    head["__metadata__"] = {k: v for k, v in head.get("__metadata__", {}).items() if k != "sha256"}
    return json.dumps(head, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(header: dict, data: memoryview) -> str:
    h = hashlib.sha256(_canonical(header))
    h.update(data)
    return h.hexdigest()


def _layout(header: dict, sort_keys: bool = False) -> bytes:
    """The header's bytes in a model file: compact JSON (its keys sorted at every level, or in the header's order),
    then spaces up to a multiple of 8 bytes (as safetensors pads, so that the tensor data stays aligned)."""
    text = json.dumps(header, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (-len(text) % 8)


def _header(blob: bytes) -> tuple[dict, int]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), 8 + n


def dumps(kind: str, meta: dict, tensors: dict[str, Tensor]) -> bytes:
    """The bytes of a model file of ``kind`` holding ``meta`` (JSON-able) and ``tensors``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tensors = {k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()}
    metadata = {"format": "lm", "kind": kind, "version": str(VERSION), "meta": json.dumps(meta, sort_keys=True, separators=(",", ":"))}
    draft = safetensors.torch.save(tensors, metadata=metadata)
    header, start = _header(draft)
    header["__metadata__"]["sha256"] = _digest(header, memoryview(draft)[start:])
    # safetensors writes its metadata in hash order, a new one at each save: the header is laid out again, canonically
    head = _layout(header, sort_keys=True)
    return len(head).to_bytes(8, "little") + head + draft[start:]


def write_atomic(path: str | os.PathLike, data: bytes) -> int:
    """Write ``data`` to ``path`` through a fsynced temporary file and ``os.replace``; returns its size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # one writer per file (rank 0); a killed write's leftover is overwritten
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return len(data)


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of the file at ``path`` (hex), read a MiB at a time: what a manifest or a history records of it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write(path: str | os.PathLike, kind: str, meta: dict, tensors: dict[str, Tensor]) -> int:
    """Write a model file atomically; returns its size in bytes."""
    return write_atomic(path, dumps(kind, meta, tensors))


def _foreign(blob: bytes, name: str | os.PathLike) -> str | None:
    """What a file that is not safetensors looks like, where it is recognisable (by its contents, or an ONNX
    file's name)."""
    if blob[:1] == b"\x80" or blob[:4] == b"PK\x03\x04":
        return ("a torch.save (pickle) file, which lm does not open because unpickling runs code from the file; "
                "convert a checkpoint you trust with `lm convert --legacy OLD NEW`")
    if blob[:4] == b"LMZ1":
        return "an artifact of lm's retired LMZ1 format; export the model again"
    # an ONNX ModelProto: its ir_version (field 1, a small varint), then one of its fields 2 to 8 (producer ... opsets)
    if Path(name).suffix == ".onnx" or (len(blob) > 2 and blob[0] == 0x08 and 0 < blob[1] < 0x80
                                        and blob[2] in b"\x12\x1a\x22\x28\x32\x3a\x42"):
        return ("an ONNX file (as `lm export` writes), which lm runs with onnxruntime: `lm eval`, `lm predict` or "
                "`lm score` with `--runtime onnx`")
    return None


def loads(blob: bytes, name: str | os.PathLike = "<bytes>", kinds: tuple[str, ...] = KINDS) -> ModelFile:
    """Parse and verify the bytes of a model file; ``name`` is used in errors."""

    def fail(reason: str) -> ModelFileError:
        return ModelFileError(name, reason)

    if isinstance(blob, (bytearray, memoryview)):
        blob = bytes(blob)
    if not isinstance(blob, bytes):
        raise TypeError(f"a model file's bytes are bytes, bytearray or memoryview, not {type(blob).__name__}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    n = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else -1
    try:
        if not 2 <= n <= min(MAX_HEADER_BYTES, len(blob) - 8):
            raise ValueError(f"header length {n}, file {len(blob)} bytes, header limit {MAX_HEADER_BYTES}")
        header = json.loads(blob[8 : 8 + n])
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        foreign = _foreign(blob, name)
        raise fail(f"not an lm model file: {foreign}" if foreign else f"truncated or corrupted header ({err})") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise fail("corrupted header (its metadata is not a mapping of strings)")
    if meta.get("format") != "lm":
        raise fail("not an lm model file (a safetensors file without format 'lm' in its metadata)")
    if meta.get("version") != str(VERSION):
        raise fail(f"format version {meta.get('version')!r}; this lm reads version {VERSION}")
    if meta.get("kind") not in kinds:
        raise fail(f"holds a {meta.get('kind')!r}, expected {' or '.join(kinds)}")
    if meta.get("sha256") != _digest(header, memoryview(blob)[8 + n :]):
        raise fail("corrupted: the checksum (sha256) does not match the contents")
    if blob[8 : 8 + n] != _layout(header):  # what the checksum does not cover: the header's whitespace
        raise fail("corrupted: the header's spacing or padding is not the compact JSON and spaces of a model file")
    try:
        document = json.loads(meta.get("meta", ""))
        tensors = safetensors.torch.load(blob)
    except (ValueError, RecursionError, safetensors.SafetensorError) as err:
        raise fail(f"malformed contents ({err})") from None
    except (TypeError, RuntimeError) as err:  # a dtype this torch lacks
        raise fail(f"malformed tensor table ({err})") from None
    if not isinstance(document, dict):
        raise fail("malformed metadata (not a JSON object)")
    return ModelFile(meta["kind"], document, tensors, len(blob))


def read(path: str | os.PathLike, kinds: tuple[str, ...] = KINDS) -> ModelFile:
    """Read and verify the model file at ``path`` (see the module docstring for what is checked)."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(path, "is a directory, not a model file")
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ModelFileError(path, f"{size} bytes, more than the {MAX_FILE_BYTES} a model file may have")
    return loads(path.read_bytes(), path, kinds)


def expect(tensors: dict[str, Tensor], key: str, dtype: torch.dtype, shape: tuple[int, ...], name: str,
           what: str | None = None) -> Tensor:
    """``tensors[key]``, checked to be of ``dtype`` and ``shape``; ModelFileError naming ``name`` (the file)
    and ``what`` (default: ``tensor '<key>'``) otherwise."""
    t = tensors.get(key)
    what = what or f"tensor {key!r}"
    if not isinstance(t, Tensor):
        raise ModelFileError(name, f"{what} is missing")
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise ModelFileError(name, f"{what} is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
    return t


__all__ = ["ModelFileError", "ModelFile", "VERSION", "KINDS", "dumps", "loads", "read", "sha256", "write", "write_atomic",
           "expect"]
