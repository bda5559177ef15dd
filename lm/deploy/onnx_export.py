"""ONNX export of a language model as a streaming step, float32 or int8.

The exported graph is one step of next-word prediction, as a keyboard runs it:

    inputs   ids (batch,) int64, h (num_layers, batch, output_size), c (num_layers, batch, hidden_size)
    outputs  logits (batch, vocab_size), h_out, c_out        (feed h_out, c_out to the next step)

with a dynamic batch dimension. The vocabulary (newline-separated) and the model config
(JSON) travel in the file's metadata (``vocab``, ``config``), so one ``.onnx`` file is
all a runtime needs. The graph is made from ``lm.deploy.inference.inference_form`` (factorised
layers as products with constant matrices) through ``torch.onnx.export`` (dynamo path).

``int8=True`` then runs onnxruntime's own dynamic quantizer
(``onnxruntime.quantization.quantize_dynamic``): every ``MatMul`` with a constant
weight becomes an int8 product (weights stored as int8 with a float scale per tensor,
activations quantized on the fly) and every ``Gather`` from a constant table (the
embedding, TT cores' slices) reads int8 rows. ``Gemm`` nodes, which that quantizer
skips, are first rewritten as ``MatMul`` + ``Add``.
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

from .inference import inference_form
from ..model import LanguageModel

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


@dataclass
class OnnxInfo:
    """What ``export_onnx`` wrote."""

    path: Path
    bytes: int
    int8: bool
    tt: str


def _fold_transposes(graph) -> None:
    """Replace every ``Transpose`` of a constant by the transposed constant. The exporter leaves one where
    a weight is shared (a softmax tied to the embedding reads it transposed): it would transpose the
    whole table at every step, and the quantizer would not see the product behind it."""
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
    used = {i for n in graph.node for i in n.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)


def _set_metadata(proto, model: LanguageModel, tt: str, int8: bool) -> None:
    from onnx import helper

    meta = {"vocab": "\n".join(model.vocab) if model.vocab is not None else "",
            "config": json.dumps(asdict(model.config)), "tt": tt, "int8": str(int8).lower()}
    del proto.metadata_props[:]
    helper.set_model_props(proto, meta)


def export_onnx(model: LanguageModel, path: str | os.PathLike, *, int8: bool = False, tt: str = "cores") -> OnnxInfo:
    """Write the streaming step of ``model`` to ``path`` as ONNX (see the module docstring).

    Parameters
    ----------
    model : LanguageModel
        Any model ``lm.load`` returns (dense, low-rank, TT, GroupReduce maps).
    path : path
        The ``.onnx`` file to write.
    int8 : bool
        Quantize with ``onnxruntime.quantization.quantize_dynamic`` (needs onnxruntime).
    tt : {"cores", "dense"}
        TT layers as products with their cores (the TT size) or with their built weights.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    form = inference_form(model, tt)
    batch = torch.export.Dim("batch", min=1)
    h_shape, c_shape = state_shapes(form, 2)
    example = (torch.zeros(2, dtype=torch.long), torch.zeros(h_shape), torch.zeros(c_shape))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(StepModel(form).eval(), example, dynamo=True, input_names=list(INPUTS),
                                    output_names=list(OUTPUTS), verbose=False, optimize=True,
                                    dynamic_shapes={"ids": {0: batch}, "h": {1: batch}, "c": {1: batch}})
    proto = program.model_proto
    _fold_transposes(proto.graph)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        _gemm_to_matmul(proto.graph)
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
    _set_metadata(proto, model, tt, int8)
    tmp_path = path.with_name(path.name + ".tmp")
    onnx.save(proto, tmp_path)
    os.replace(tmp_path, path)
    return OnnxInfo(path, path.stat().st_size, int8, tt)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata ``export_onnx`` stored (``vocab``, ``config``, ``tt``, ``int8``), without loading the weights."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


__all__ = ["StepModel", "OnnxInfo", "export_onnx", "read_metadata", "state_shapes"]
