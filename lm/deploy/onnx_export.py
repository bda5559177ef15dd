"""ONNX export of a language model as a streaming step, float32, int8 or n-bit.

The exported graph is one step of next-word prediction, as a keyboard runs it:

    inputs   ids (batch,) int64, h (num_layers, batch, output_size), c (num_layers, batch, hidden_size)
    outputs  logits (batch, vocab_size), h_out, c_out        (feed h_out, c_out to the next step)

with a dynamic batch dimension. The vocabulary (newline-separated) and the model config
(JSON) travel in the file's metadata (``vocab``, ``config``), so one ``.onnx`` file is
all a runtime needs. The graph is made from ``lm.deploy.inference.inference_form`` (factorised
layers as products with constant matrices) through ``torch.onnx.export`` (dynamo path). TT layers
are stored as their cores and built when the runtime opens the file (``tt="load"``,
``lm.deploy.onnx_tt``), or as products with the cores at every step (``"cores"``), or built (``"dense"``).
A softmax tied to the embedding, which the exporter writes as two constants (the table and its
transpose), is stored once in float32 too: its transpose is built when the runtime opens the file.

``weights="int8"`` then runs onnxruntime's own dynamic quantizer
(``onnxruntime.quantization.quantize_dynamic``): every ``MatMul`` with a constant
weight becomes an int8 product (weights stored as int8 with a float scale per tensor,
activations quantized on the fly) and every ``Gather`` from a constant table (the
embedding, TT cores' slices) reads int8 rows. ``Gemm`` nodes, which that quantizer
skips, are first rewritten as ``MatMul`` + ``Add``. A softmax tied to the embedding, which the
exporter writes as two constants (the table and its transpose), is then stored once: the
softmax's int8 weight, quantized per word, from which the lookup gathers the word's column.

``weights="nbits"`` keeps a 2-, 3- or 4-bit model's weights as their codes instead, packed in 4 bits
a number (or 2, ``container=2``, for 2-bit weights: a smaller file, a slower kernel;
``lm.deploy.onnx_nbits``: onnxruntime's ``MatMulNBits``, and lookups of packed rows), its products
computed with the float activations, or with ``activations="int8"`` on int8-quantized ones (faster,
approximate).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..compression.export import LOW_BITS, model_from_artifact
from ..model import LanguageModel
from .inference import inference_form
from .onnx_nbits import ACTIVATIONS, check_widths, dequantized_cores, rewrite_nbits
from .onnx_tt import build_at_load, built_weights, holders, quantize_at_load

INPUTS = ("ids", "h", "c")
OUTPUTS = ("logits", "h_out", "c_out")


class StepModel(nn.Module):
    """One step of ``model``: ids (batch,), h, c -> logits (batch, vocab_size), h, c."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, (h, c) = self.model(ids[None], (h, c))
        return logits[0], h, c


def state_shapes(model: LanguageModel, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of h and c for ``batch`` streams."""
    lstm = model.lstm
    return ((lstm.num_layers, batch, getattr(lstm, "output_size", lstm.hidden_size)),
            (lstm.num_layers, batch, lstm.hidden_size))


WEIGHTS = ("float32", "int8", "nbits")
TT_ROUTES = ("load", "cores", "dense")  # how an exported graph holds its TT layers (see export_onnx)


@dataclass
class OnnxInfo:
    """What ``export_onnx`` wrote: the file, its size, how its weights are stored (``weights``, and ``bits``
    and ``container`` for n-bit weights, and the ``activations`` their products compute with) and the route
    of its TT layers."""

    path: Path
    bytes: int
    weights: str
    tt: str
    bits: int | None = None
    container: int | None = None  # n-bit weights: the bits a code is packed in (MatMulNBits' width)
    activations: str | None = None  # n-bit weights: "float32", or "int8" (inputs quantized: accuracy_level 4)

    @property
    def int8(self) -> bool:
        return self.weights == "int8"


def _fold_transposes(graph) -> None:
    """Replace every ``Transpose`` of a constant by the transposed constant. The exporter leaves one where
    a weight is shared (a softmax tied to the embedding reads it transposed): a runtime without constant
    folding would transpose the whole table at every step, and the quantizer would not see the product
    behind it. (A float32 export then puts the tied table's back, ``_transpose_at_load``.)"""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in inits:
            perm = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "perm"), None)
            value = np.transpose(numpy_helper.to_array(inits[node.input[0]]), perm)
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), node.output[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _tied_tables(graph) -> dict[str, str]:
    """{table: its transposed copy} for every constant (V, H) table that a ``Gather`` reads by rows and whose
    transpose, a constant (H, V), a ``MatMul`` multiplies by: a tied embedding and softmax, which the
    exporter writes as two constants."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    tables = {n.input[0] for n in graph.node if n.op_type == "Gather" and _axis(n) == 0 and n.input[0] in inits}
    weights = {n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    tied = {}
    for table in tables:
        if len(inits[table].dims) != 2:
            continue
        value = numpy_helper.to_array(inits[table])
        for weight in weights:
            if list(inits[weight].dims) == list(value.shape[::-1]) and np.array_equal(numpy_helper.to_array(inits[weight]), value.T):
                tied[table] = weight
    return tied


def _axis(node) -> int:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)


def _share_int8_table(graph, table: str, copy: str, weight) -> None:
    """After ``quantize_dynamic``: one int8 table for a tied embedding and softmax.

    The softmax's weight (H, V) is quantized again per word (column v: symmetric int8 with scale
    ``max|w_v| / 127``), in place of the quantizer's per-tensor codes, so that its integer product
    (``MatMulInteger``, its output scaled per column) stays as it is; the embedding's
    lookup gathers the word's column of those codes and its scale, ``float(codes[:, id]) * scale[id]``, and
    the quantizer's separate (V, H) table is dropped. ``weight``: the float (H, V) softmax weight.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    codes, scale, zero = f"{copy}_quantized", f"{copy}_scale", f"{copy}_zero_point"
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] == f"{table}_quantized"), None)
    dequantize = gather and next((n for n in graph.node if n.op_type == "DequantizeLinear"
                                  and n.input[0] == gather.output[0]), None)
    if dequantize is None or not {codes, scale, zero} <= set(inits) or inits[codes].data_type != TensorProto.INT8:
        raise RuntimeError(f"onnxruntime's quantizer did not produce the expected int8 {copy!r} and "
                           f"quantized Gather of {table!r}: cannot share the tied table")
    step = np.abs(weight).max(axis=0) / 127
    step = np.where(step > 0, step, 1).astype(np.float32)
    q = np.clip(np.rint(weight / step), -127, 127).astype(np.int8)
    if numpy_helper.to_array(inits[zero]).any():
        raise RuntimeError(f"onnxruntime's quantizer gave {copy!r} a nonzero zero point: expected symmetric int8")
    for name, value in ((codes, q), (scale, step)):  # the zero point stays the quantizer's scalar 0
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    out = dequantize.output[0]
    ids = gather.input[1]
    nodes = [
        helper.make_node("Reshape", [ids, out + "_flat_shape"], [out + "_flat_ids"], name=out + "_flat_ids"),
        helper.make_node("Gather", [codes, out + "_flat_ids"], [out + "_columns"], axis=1, name=out + "_columns"),
        helper.make_node("Cast", [out + "_columns"], [out + "_columns_float"], to=TensorProto.FLOAT, name=out + "_cast"),
        helper.make_node("Transpose", [out + "_columns_float"], [out + "_rows"], perm=[1, 0], name=out + "_rows"),
        helper.make_node("Gather", [scale, out + "_flat_ids"], [out + "_row_scales"], axis=0, name=out + "_scales"),
        helper.make_node("Unsqueeze", [out + "_row_scales", out + "_last_axis"], [out + "_row_scale"], name=out + "_unsq"),
        helper.make_node("Mul", [out + "_rows", out + "_row_scale"], [out + "_flat"], name=out + "_dequantize"),
        helper.make_node("Shape", [ids], [out + "_ids_shape"], name=out + "_ids_shape"),
        helper.make_node("Concat", [out + "_ids_shape", out + "_width"], [out + "_shape"], axis=0, name=out + "_concat"),
        helper.make_node("Reshape", [out + "_flat", out + "_shape"], [out], name=out + "_reshape"),
    ]
    graph.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), out + "_flat_shape"),
                              numpy_helper.from_array(np.array([-1], np.int64), out + "_last_axis"),
                              numpy_helper.from_array(np.array([weight.shape[0]], np.int64), out + "_width")])
    at = list(graph.node).index(gather)
    kept = [n for n in graph.node if n is not gather and n is not dequantize]
    kept[at:at] = nodes
    del graph.node[:]
    graph.node.extend(kept)
    for name in (f"{table}_quantized", f"{table}_scale", f"{table}_zero_point"):
        if name in inits and not any(name in n.input for n in graph.node):
            graph.initializer.remove(inits[name])


def _transpose_at_load(graph, table: str, copy: str) -> None:
    """A softmax tied to the embedding, in float32: the file holds the table once, and the softmax's (H, V)
    weight, the exporter's transposed copy, becomes a ``Transpose`` of it, which onnxruntime's constant
    folding evaluates once when it opens the file (as the TT weights of ``tt="load"``). The session's
    product then reads a constant of its own, which onnxruntime prepacks: read by the lookup as well, the
    table would not be (a ``Gemm`` by its rows, or a lookup of the copy's columns, ran a step slower)."""
    from onnx import helper

    graph.initializer.remove(next(t for t in graph.initializer if t.name == copy))
    graph.node.insert(0, helper.make_node("Transpose", [table], [copy], perm=[1, 0], name=copy + "_at_load"))


def _gemm_to_matmul(graph) -> None:
    """Rewrite ``Gemm(x, W, b)`` with constant W as ``MatMul(x, W')`` (+ ``Add(b)``), W' = W or W.T
    (alpha = beta = 1, transA = 0), so that the dynamic quantizer sees the product."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        name = node.input[1] + ("_t" if attrs.get("transB", 0) else "")
        if name not in inits:
            inits[name] = numpy_helper.from_array(weight.T.copy() if attrs.get("transB", 0) else weight, name)
            graph.initializer.append(inits[name])
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = node.output[0] + "_matmul" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=node.name + "_matmul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=node.name + "_bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph)


def _set_metadata(proto, model: LanguageModel, tt: str, weights: str, bits: int | None, container: int | None,
                  activations: str) -> None:
    from onnx import helper

    meta = {"vocab": "\n".join(model.vocab) if model.vocab is not None else "",
            "config": json.dumps(asdict(model.config)), "tt": tt, "weights": weights,
            "int8": str(weights == "int8").lower(),
            **({"bits": str(bits), "container": str(container), "activations": activations} if bits else {})}
    del proto.metadata_props[:]
    helper.set_model_props(proto, meta)


def _check_weights(weights: str, bits: int | None, container: int | None, int8: bool | None) -> tuple[str, int | None]:
    """``weights`` (the deprecated ``int8`` flag applied), and the container of n-bit weights (default 4)."""
    if int8 is not None:
        warnings.warn("export_onnx(int8=...) is deprecated: use weights='int8'", DeprecationWarning, stacklevel=3)
        weights = "int8" if int8 else weights
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if (weights == "nbits") != (bits is not None) or (container is not None and bits is None):
        raise ValueError(f"bits (2, 3 or 4) and container go with weights='nbits' and only with it; got "
                         f"weights={weights!r}, bits={bits!r}, container={container!r}")
    if bits is None:
        return weights, None
    container = 4 if container is None else container
    check_widths(bits, container)
    return weights, container


def _check_tt(tt: str | None, weights: str) -> str:
    if tt is None:
        return "load"
    if tt not in TT_ROUTES:
        raise ValueError(f"tt must be one of {TT_ROUTES}, got {tt!r}")
    if weights == "nbits" and tt == "dense":
        raise ValueError("weights='nbits' keeps the TT cores as their codes: tt must be 'load' or 'cores', got 'dense'")
    return tt


def _drop_unused(graph) -> None:
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def export_onnx(model: LanguageModel, path: str | os.PathLike, *, weights: str = "float32", bits: int | None = None,
                container: int | None = None, activations: str | None = None, tt: str | None = None,
                int8: bool | None = None) -> OnnxInfo:
    """Write the streaming step of ``model`` to ``path`` as ONNX (see the module docstring).

    Parameters
    ----------
    model : LanguageModel
        Any model ``lm.load`` returns (dense, low-rank, TT, GroupReduce maps).
    path : path
        The ``.onnx`` file to write.
    weights : {"float32", "int8", "nbits"}
        float32; int8 through ``onnxruntime.quantization.quantize_dynamic``; or ``bits``-bit weights
        (``lm.deploy.onnx_nbits``: the model's quantized weights, as decoded from a q2, q3 or q4 artifact,
        in ``MatMulNBits`` and packed lookups).
    bits : {2, 3, 4}, only with ``weights="nbits"``
        The width of the model's low-bit weights.
    container : {4, 2}, only with ``weights="nbits"``
        The bits each code is packed in (``MatMulNBits``' width), at least ``bits``. Default 4: onnxruntime's
        CPU kernel with float activations is fast at 4 bits only; 2 (for 2-bit weights) halves the codes' bytes.
    activations : {"float32", "int8"}, only with ``weights="nbits"``
        What the ``MatMulNBits`` products compute with: the float inputs (default), or the inputs quantized to
        int8 per block (``accuracy_level`` 4: onnxruntime's integer kernels, faster; an approximation whose
        perplexity is measured apart, ``lm score --runtime onnx``).
    tt : {"load", "cores", "dense"}, optional
        How TT layers are held: ``"load"`` stores the cores and builds each weight when the runtime opens the
        file (``lm.deploy.onnx_tt``: the TT size on disk, one product per step); ``"cores"`` runs the products
        with the cores at every step; ``"dense"`` stores the built weights. Default: ``"load"``. With
        ``weights="nbits"``, ``"load"`` stores the cores' codes and dequantizes them when the file is opened
        (``lm.deploy.onnx_nbits.dequantized_cores``), ``"cores"`` multiplies by them at every step (both keep the
        codes in the file; ``"dense"`` would not, and is refused).
    int8 : bool, deprecated
        ``int8=True`` is ``weights="int8"``.
    """
    import onnx

    weights, container = _check_weights(weights, bits, container, int8)
    if activations is not None and weights != "nbits":
        raise ValueError(f"activations goes with weights='nbits' (MatMulNBits' accuracy_level), got weights={weights!r}")
    if weights == "nbits":
        activations = activations or "float32"
    if activations is not None and activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {tuple(ACTIVATIONS)}, got {activations!r}")
    tt = _check_tt(tt, weights)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fuse = weights != "nbits"  # n-bit weights are found by value, one map at a time
    form = inference_form(model, "dense" if tt == "load" else tt, fuse=fuse)
    batch = torch.export.Dim("batch", min=1)
    h_shape, c_shape = state_shapes(form, 2)
    example = (torch.zeros(2, dtype=torch.long), torch.zeros(h_shape), torch.zeros(c_shape))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(StepModel(form).eval(), example, dynamo=True, input_names=list(INPUTS),
                                    output_names=list(OUTPUTS), verbose=False, optimize=True,
                                    dynamic_shapes={"ids": {0: batch}, "h": {1: batch}, "c": {1: batch}})
    proto = program.model_proto
    for node in proto.graph.node:  # the exporter's provenance of each node (stack traces, module paths): not deployed
        del node.metadata_props[:]
    _fold_transposes(proto.graph)
    _drop_unused(proto.graph)
    built = built_weights(model, fuse) if tt == "load" else []
    if weights == "nbits":
        _gemm_to_matmul(proto.graph)
        cores = dequantized_cores(model, bits, container) if tt == "load" else {}
        found = holders(proto.graph, built) if cores else {}  # the built TT weights, before anything moves
        rewrite_nbits(proto.graph, model, bits, container, skip=frozenset(cores), activations=activations)
        if cores:
            build_at_load(proto.graph, found, cores)
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    elif weights == "int8":
        from onnx import numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic

        _gemm_to_matmul(proto.graph)
        found = holders(proto.graph, built)
        floats = {t.name: t for t in proto.graph.initializer}
        tied = _tied_tables(proto.graph)
        tied = {table: (copy, numpy_helper.to_array(floats[copy])) for table, copy in tied.items()}
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / "float32.onnx"
            onnx.save(proto, plain)
            logging.disable(logging.WARNING)  # its advice to pre-process (shape inference) the graph first
            try:
                quantize_dynamic(plain, Path(tmp) / "int8.onnx", weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gather"], extra_options={"MatMulConstBOnly": True})
            finally:
                logging.disable(logging.NOTSET)
            proto = onnx.load(Path(tmp) / "int8.onnx")
        for table, (copy, weight) in tied.items():
            _share_int8_table(proto.graph, table, copy, weight)
        quantize_at_load(proto.graph, found)
    else:
        for table, copy in _tied_tables(proto.graph).items():
            _transpose_at_load(proto.graph, table, copy)
        if built:
            build_at_load(proto.graph, holders(proto.graph, built))
    _set_metadata(proto, model, tt, weights, bits, container, activations)
    tmp_path = path.with_name(path.name + ".tmp")
    onnx.save(proto, tmp_path)
    os.replace(tmp_path, path)
    return OnnxInfo(path, path.stat().st_size, weights, tt, bits, container, activations)


def artifact_bits(path: str | os.PathLike) -> int | None:
    """The width of the low-bit weights (2, 3 or 4) of the model file at ``path``, or None when it holds none
    (a checkpoint, a float32 or 8-bit artifact); what ``export_onnx(weights="nbits", bits=...)`` needs.

    An artifact's table is read only once the artifact loader (``model_from_artifact``) has checked it and
    decoded every tensor: a malformed one raises ``ModelFileError`` naming ``path``.
    """
    from .. import modelfile

    f = modelfile.read(path)
    if f.kind != "artifact":
        return None
    model_from_artifact(f, path)  # the table's checks: a mapping of entries, each with a known codec
    widths = {LOW_BITS[e["codec"]] for e in f.meta["tensors"].values() if e["codec"] in LOW_BITS}
    if len(widths) > 1:
        raise ValueError(f"{path} stores weights at several low-bit widths {sorted(widths)}: n-bit export needs one")
    return widths.pop() if widths else None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata ``export_onnx`` stored (``vocab``, ``config``, ``tt``, ``weights``, ``int8``, and ``bits``,
    ``container`` and ``activations`` for n-bit weights), without loading the weights."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


__all__ = ["TT_ROUTES", "WEIGHTS", "StepModel", "OnnxInfo", "artifact_bits", "export_onnx", "read_metadata", "state_shapes"]
