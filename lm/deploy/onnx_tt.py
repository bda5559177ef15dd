"""TT weights built when the runtime loads the file: the TT size on disk, one product per step.

A TT layer exported with its cores (``tt="cores"``) keeps the file small, but at batch 1 its d
small products and the reshapes between them cost a runtime more than one product with the
built weight; exported built (``tt="dense"``) it runs fast but the file holds the whole weight.
``tt="load"`` keeps both: the graph computes each built weight from the cores with constant
inputs only (per core a ``MatMul`` and a ``Reshape``, then one ``Transpose`` of the modes), which
onnxruntime's constant folding evaluates once when it opens the file; every step then runs the
product with the built weight. In int8, the built weight is quantized in the graph as well
(``QuantizeLinear`` with the scale and zero point that ``onnxruntime.quantization`` chose), so
the session holds int8 weights and fuses the product into its integer kernel. The cores are
stored in float32: a weight whose cores and build nodes take as many bytes in the file as its
built form (its int8 codes, in int8) stays built, so that the file is never larger than with
``tt="dense"``. A runtime without constant folding computes the same outputs, building the
weights at every step.

An LSTM layer whose two maps the export fuses into one product (``lm.deploy.inference.GateProduct``)
holds ``[W_ih, W_hh]``: with a TT map among them, that weight is built from its blocks (each TT block
from its cores) and concatenated, at load too.

``built_weights(model)`` lists the TT layers' built weights and their cores; ``holders(graph, weights)``
finds, by value, the constants of an exported graph that hold one of them (as it is, or transposed);
``build_at_load(graph, found)`` replaces those constants by their builds from the cores, and
``quantize_at_load(graph, found)`` the int8 codes that ``quantize_dynamic`` made of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ttlayers import LSTM, TTEmbedding, TTLinear

from ..model import LanguageModel
from .inference import fusable, tt_table


@dataclass
class BuiltWeight:
    """A TT layer's built weight ``value`` (rows, cols) and its cores (r_{k-1}, row_shape[k], col_shape[k], r_k):
    ``value[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ... G_d[:, i_d, j_d, :]`` up to the padding, with row
    ``zero_row`` zero (a ``TTEmbedding``'s ``padding_idx``) when it is set."""

    name: str
    value: np.ndarray
    cores: list[np.ndarray]
    zero_row: int | None = None


@dataclass
class GateWeight:
    """An LSTM layer's fused gate weight ``value = [W_ih, W_hh]`` (``lm.deploy.inference.GateProduct``) with a TT map
    among its ``blocks``: each a ``BuiltWeight`` or a dense matrix, side by side."""

    name: str
    value: np.ndarray
    blocks: list[BuiltWeight | np.ndarray]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).numpy().copy()


def _built(name: str, module: TTLinear | TTEmbedding) -> BuiltWeight:
    value, zero_row = (module.dense_weight(), None) if isinstance(module, TTLinear) else (tt_table(module), module.padding_idx)
    return BuiltWeight(name, _numpy(value), [_numpy(c) for c in module.current_cores()], zero_row)


@torch.no_grad()
def built_weights(model: LanguageModel, fuse: bool = True) -> list[BuiltWeight | GateWeight]:
    """The built weight of every ``TTLinear`` (W: out_features x in_features) and ``TTEmbedding`` (the table) of
    ``model``, and with ``fuse`` the fused gate weight of every LSTM layer with a TT map, as
    ``lm.deploy.inference.inference_form(model, "dense", fuse=fuse)`` stores them."""
    found, fused = [], set()
    for name, module in model.named_modules():
        if not (fuse and isinstance(module, LSTM)):
            continue
        for k, layer in enumerate(module.layers):
            maps = (layer.input_map, layer.recurrent_map)
            if not fusable(layer, "dense") or not any(isinstance(m, TTLinear) for m in maps):
                continue
            prefix = f"{name}.layers.{k}"
            blocks = [_built(f"{prefix}.{attr}", m) if isinstance(m, TTLinear) else _numpy(m.weight)
                      for attr, m in zip(("input_map", "recurrent_map"), maps)]
            value = np.concatenate([b.value if isinstance(b, BuiltWeight) else b for b in blocks], 1)
            found.append(GateWeight(f"{prefix}.gates", value, blocks))
            fused.update(id(m) for m in maps)
    for name, module in model.named_modules():
        if isinstance(module, (TTLinear, TTEmbedding)) and id(module) not in fused:
            found.append(_built(name, module))
    return found


def _build_nodes(weight: BuiltWeight | GateWeight, out: str, transposed: bool,
                 cores: list[str] | None = None) -> tuple[list, list]:
    """Nodes and initializers that compute ``weight.value`` (or its transpose) into ``out`` from the cores: stored
    in float32, or read from the graph's tensors named in ``cores`` (each core (r_{k-1}, m_k, n_k, r_k), computed
    by other nodes: ``lm.deploy.onnx_nbits.dequantized_cores``)."""
    from onnx import helper, numpy_helper

    if isinstance(weight, GateWeight):
        nodes, inits, parts = [], [], []
        for i, block in enumerate(weight.blocks):
            part = f"{out}_block{i}"
            if isinstance(block, BuiltWeight):
                more, consts = _build_nodes(block, part, False)
                nodes += more
                inits += consts
            else:
                inits.append(numpy_helper.from_array(np.ascontiguousarray(block), part))
            parts.append(part)
        gates = out + "_side_by_side" if transposed else out
        nodes.append(helper.make_node("Concat", parts, [gates], name=gates, axis=1))
        if transposed:
            nodes.append(helper.make_node("Transpose", [gates], [out], name=out, perm=[1, 0]))
        return nodes, inits

    rows, cols = weight.value.shape
    row_shape = [c.shape[1] for c in weight.cores]
    col_shape = [c.shape[2] for c in weight.cores]
    inits, nodes = [], []

    def const(suffix: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), out + suffix))
        return out + suffix

    def node(op: str, inputs: list[str], suffix: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out + suffix], name=out + suffix, **attrs))
        return out + suffix

    def core(k: int, shape: tuple[int, int]) -> str:  # core k as a (shape) matrix
        if stored is None:
            return const(f"_core{k}", weight.cores[k].reshape(shape))
        return node("Reshape", [stored[k], const(f"_core{k}_shape", np.array(shape, np.int64))], f"_core{k}")

    # running product: (i_1 j_1 .. i_k j_k, r_k); core k+1 as (r_k, i_{k+1} j_{k+1} r_{k+1})
    stored, shapes = cores, [c.shape for c in weight.cores]
    x = core(0, (-1, shapes[0][3]))
    for k, shape in enumerate(shapes[1:], start=1):
        x = node("MatMul", [x, core(k, (shape[0], -1))], f"_product{k}")
        x = node("Reshape", [x, const(f"_rank{k}", np.array([-1, shape[3]], np.int64))], f"_bond{k}")
    d = len(shapes)
    x = node("Reshape", [x, const("_modes", np.array([m for pair in zip(row_shape, col_shape) for m in pair], np.int64))],
             "_interleaved")
    x = node("Transpose", [x], "_grouped", perm=list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2)))
    full = (int(np.prod(row_shape)), int(np.prod(col_shape)))
    x = node("Reshape", [x, const("_full", np.array(full, np.int64))], "_padded")
    if full != (rows, cols):
        x = node("Slice", [x, const("_starts", np.array([0, 0], np.int64)), const("_ends", np.array([rows, cols], np.int64))],
                 "_sliced")
    if weight.zero_row is not None:
        x = node("ScatterND", [x, const("_zero_at", np.array([[weight.zero_row]], np.int64)),
                               const("_zeros", np.zeros((1, cols), np.float32))], "_zeroed")
    if transposed:
        x = node("Transpose", [x], "_transposed", perm=[1, 0])
    nodes[-1].output[0] = out
    return nodes, inits


def holders(graph, weights: list[BuiltWeight | GateWeight]) -> dict[str, tuple[BuiltWeight | GateWeight, bool]]:
    """{constant name: (the built weight it holds, transposed?)} for the constants of ``graph`` equal to one of
    ``weights`` or its transpose: what ``build_at_load`` and ``quantize_at_load`` replace."""
    from onnx import numpy_helper

    targets = [(weight, transposed, weight.value.T if transposed else weight.value)
               for weight in weights for transposed in (False, True)]
    found = {}
    for init in graph.initializer:
        candidates = [t for t in targets if tuple(init.dims) == t[2].shape]
        value = numpy_helper.to_array(init) if candidates else None  # read once, and only when a shape fits
        for weight, transposed, target in candidates:
            if np.array_equal(value, target):
                found[init.name] = (weight, transposed)
    return found


def _replace(graph, name: str, nodes: list, inits: list, smaller_only: bool = True) -> bool:
    """Replace the constant ``name`` by ``nodes`` and ``inits`` (when they take fewer bytes in the file, with
    ``smaller_only``)."""
    old = next(t for t in graph.initializer if t.name == name)
    if smaller_only and sum(x.ByteSize() for x in nodes + inits) >= old.ByteSize():
        return False
    graph.initializer.remove(old)
    graph.initializer.extend(inits)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)  # constants only: ahead of every node that reads them
    return True


def build_at_load(graph, found: dict[str, tuple[BuiltWeight | GateWeight, bool]],
                  cores: dict[str, tuple[list, list, str]] | None = None) -> list[str]:
    """Replace every constant of ``graph`` named in ``found`` (``holders``) by its build from the cores, where
    that takes fewer bytes. Returns the replaced constants' names; the rest of the graph is unchanged.

    ``cores`` (core name ``<layer>.cores.<k>`` -> nodes, initializers and the tensor they compute): the cores
    computed in the graph instead of stored in float32 (``lm.deploy.onnx_nbits.dequantized_cores``, n-bit
    codes), each computed once however many built weights read it."""
    if cores is None:
        return [name for name, (weight, transposed) in found.items()
                if _replace(graph, name, *_build_nodes(weight, name, transposed))]
    needed = []  # the cores the builds read, each computed once, ahead of every build
    for name, (weight, transposed) in found.items():
        if isinstance(weight, GateWeight):
            raise ValueError(f"{name}: a fused gate weight is built from float32 cores only (export it unfused)")
        keys = [f"{weight.name}.cores.{k}" for k in range(len(weight.cores))]
        _replace(graph, name, *_build_nodes(weight, name, transposed, [cores[key][2] for key in keys]),
                 smaller_only=False)  # the cores' codes: always fewer bytes than the float32 weight
        needed += [key for key in keys if key not in needed]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([n for key in needed for n in cores[key][0]] + rest)
    graph.initializer.extend(t for key in needed for t in cores[key][1])
    return list(found)


def quantize_at_load(graph, found: dict[str, tuple[BuiltWeight | GateWeight, bool]]) -> list[str]:
    """After ``onnxruntime.quantization.quantize_dynamic``: replace the int8 codes ``<name>_quantized`` of every
    constant ``name`` in ``found`` (``holders`` of the float graph) by ``QuantizeLinear`` of its build from the
    cores, with the quantizer's own ``<name>_scale`` and ``<name>_zero_point``, where that takes fewer bytes.
    Returns the replaced names."""
    from onnx import helper

    inits = {t.name for t in graph.initializer}
    replaced = []
    for name, (weight, transposed) in found.items():
        codes, scale, zero = f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"
        if not {codes, scale, zero} <= inits:
            continue  # not quantized (or stored shared): left as the quantizer wrote it
        nodes, new = _build_nodes(weight, f"{name}_built", transposed)
        nodes.append(helper.make_node("QuantizeLinear", [f"{name}_built", scale, zero], [codes], name=codes))
        if _replace(graph, codes, nodes, new):
            replaced.append(name)
    return replaced


__all__ = ["BuiltWeight", "GateWeight", "build_at_load", "built_weights", "holders", "quantize_at_load"]
