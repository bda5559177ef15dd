"""Low-bit weights in an exported graph: onnxruntime's ``MatMulNBits`` and lookups of packed rows.

The study's 2-, 3- and 4-bit models (``lm.compression.lowbit``) store each weight row ``i`` as codes
``q`` in ``[0, 2**bits)`` on the grid ``w = lo_i + q * step_i``. onnxruntime's ``MatMulNBits``
(``com.microsoft``, bits 2, 4 or 8) multiplies by a weight held as packed codes, dequantized as
``(q - zero_point) * scale`` per block of ``block_size`` numbers of an output row. It accepts
float zero points (``-lo_i / step_i``), but its CPU kernel then dequantizes the whole weight at
every call instead of running its packed kernels; so the default zero point
``z = 2**(container - 1)`` is used, with ``scale = step_i``, and the rest of each row is added back:

    w_ik = (q_ik - z) * step_i + c_i,  c_i = lo_i + z * step_i,   so  (x W^T)_i = MatMulNBits(x)_i + c_i * sum_k x_k,

the artifact's weights up to float32 rounding. The codes are packed in ``container`` bits a number
(``MatMulNBits``' ``bits``, 2 or 4, at least the weights' ``bits``): a 3-bit code fits a 4-bit
container, and so does a 2-bit one, because onnxruntime's CPU kernel for float activations is
fast at 4 bits only (``python -m lm.benchmarks.deploy`` times 2-bit containers beside 4-bit ones;
2-bit containers give the smaller file). The file keeps the codes, rows padded to whole blocks,
a float32 scale per block and ``c_i`` per row; ``_block_size`` picks the block size with the
fewest bytes.

``rewrite_nbits(graph, model, bits)`` finds, by value, every constant of the exported graph that
holds one of the model's quantized weights (``lm.compression.qat.row_axes``):

* a ``MatMul`` by ``W.T`` (a dense or low-rank map's weight, a softmax), or by a TT core as
  ``lm.deploy.inference.TTMatMuls`` stores it (``tt="cores"``), becomes ``MatMulNBits``;
* a lookup of rows of a table (an embedding, a TT embedding core's slices: ``Gather``, ``GatherND``)
  reads the packed rows, unpacks them (``BitShift``, ``BitwiseAnd``) and dequantizes only those rows.

GroupReduce's block embedding multiplies by its blocks' ``v`` untransposed (a weight's rows along
the product's inner dimension, where ``MatMulNBits`` wants one scale per block of 16 or more):
it is refused.

A weight used both ways (an embedding tied to the softmax) is stored once.

``activations="int8"`` sets ``MatMulNBits``' ``accuracy_level`` to 4: onnxruntime quantizes each
product's input to int8 per block (symmetric, a scale per block of ``block_size`` numbers) and
multiplies in integers. That is activation quantization, an approximation on top of the weights' codes
(the default, ``"float32"``, computes with the float activations): its perplexity is reported apart.
The lookups and the TT cores built at load are unchanged. (onnxruntime 1.32 runs 2-bit containers with
float products all the same where a product's inner dimension is small: below 64 in our probes.)

TT cores exported with their weights built at load (``tt="load"``, ``lm.deploy.onnx_tt``) are stored the
same way, rows along the core's output mode, and ``dequantized_cores`` gives the nodes that unpack and
dequantize them, from constants only, for the builds to read.
"""

from __future__ import annotations

import numpy as np
import torch

from ttlayers import TTEmbedding, TTLinear

from ..compression import lowbit, qat
from ..model import LanguageModel

NBITS = (2, 4)  # the containers: MatMulNBits' widths that hold the study's low-bit codes (it also has 8)
ACTIVATIONS = {"float32": 0, "int8": 4}  # MatMulNBits' accuracy_level: 0 computes in the input's float type
WIDTHS = (2, 3, 4)  # the study's low-bit widths (lm.compression.lowbit)


def check_widths(bits: int, container: int) -> None:
    """Refuse a weights' width that is not one of ``WIDTHS``, or a container that is not one of ``NBITS``
    holding at least ``bits`` bits."""
    if isinstance(bits, bool) or bits not in WIDTHS:
        raise ValueError(f"bits must be one of {WIDTHS} (the study's low-bit widths), got {bits!r}")
    if isinstance(container, bool) or container not in NBITS or container < bits:
        raise ValueError(f"container must be one of {NBITS} (MatMulNBits' widths) and hold the {bits}-bit codes, "
                         f"got {container!r}")


def _block_size(k: int, bits: int) -> int:
    """The power of two >= 16 with the fewest bytes for a row of ``k`` codes: codes padded to whole blocks,
    and a float32 scale per block."""
    sizes = [16]
    while sizes[-1] < k:
        sizes.append(2 * sizes[-1])
    return min(sizes, key=lambda b: (-(-k // b) * (b * bits // 8 + 4), b))


class _Rows:
    """A quantized weight as rows (N, K) of codes on per-row grids, packed as ``MatMulNBits`` reads them."""

    def __init__(self, codes: np.ndarray, lo: np.ndarray, step: np.ndarray, bits: int) -> None:
        """``codes`` (N, K) below ``2**bits``, packed in ``bits`` bits a number (``MatMulNBits``' width)."""
        n, k = codes.shape
        self.n, self.k, self.bits = n, k, bits
        self.block = _block_size(k, bits)
        blocks = -(-k // self.block)
        padded = np.zeros((n, blocks * self.block), np.uint8)
        padded[:, :k] = codes
        self.packed = lowbit.pack_codes(torch.from_numpy(padded), bits).numpy().reshape(n, blocks, -1)
        safe = np.where(step > 0, step, 1).astype(np.float32)  # a constant row: codes 0, w = c
        self.scales = np.repeat(safe[:, None], blocks, axis=1)
        self.offsets = (lo + 2 ** (bits - 1) * safe).astype(np.float32)  # c: w = (q - z) * step + c


def _on_grid(weight: torch.Tensor, bits: int, axis: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes (weight's shape), lo and step (rows,) of a weight that lies on its ``bits``-bit row grids."""
    codes, lo, hi = lowbit.quantize_rows(weight, bits, axis)
    if not torch.equal(lowbit.dequantize_rows(codes, lo, hi, bits, axis), weight.detach().float()):
        raise ValueError(f"{name} is not on a {bits}-bit grid per row: n-bit weights export a model decoded from "
                         f"a q{bits} artifact (or baked from {bits}-bit QAT) exactly, and nothing else")
    return codes.numpy(), lo.numpy(), ((hi - lo) / (2**bits - 1)).numpy()


def _uses(weight: torch.Tensor, bits: int, axis: int, name: str, container: int) -> tuple[dict, dict]:
    """{"matmul": (B as the graph holds it (K, N), rows (N, K))} and {"gather": (table (N, K), rows)}, for
    the ways an exported graph holds ``weight``: a 2-D weight W (rows along axis 0) is multiplied as W.T and
    gathered as W; a TT core (r0, m, n, r1) (rows along m) is multiplied as (n r1, r0 m) and gathered as
    (m, r0 n r1) (``TTMatMuls``, ``TTRows``). The rows pack the codes in ``container`` bits."""
    codes, lo, step = _on_grid(weight, bits, axis, name)
    value = weight.detach().float().numpy()
    if weight.dim() == 2 and axis == 0:
        rows = _Rows(codes, lo, step, container)
        return {"matmul": (value.T, rows), "gather": (value, rows)}
    if weight.dim() == 4 and axis == 1:
        r0, m, n, r1 = weight.shape
        as_matmul = lambda t: t.transpose(2, 3, 0, 1).reshape(n * r1, r0 * m)  # noqa: E731
        row_of = np.tile(np.arange(m), r0)  # row (r0_i, m_j) of the product's B.T has the grid of m_j
        matmul = _Rows(as_matmul(codes).T, lo[row_of], step[row_of], container)
        as_table = lambda t: t.transpose(1, 0, 2, 3).reshape(m, -1)  # noqa: E731
        return {"matmul": (as_matmul(value), matmul),
                "gather": (as_table(value), _Rows(as_table(codes), lo, step, container))}
    raise ValueError(f"{name}: no n-bit export for a {weight.dim()}-D weight quantized along axis {axis}")


def _attr(node, name: str, default=None):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _store(graph, name: str, rows: _Rows, stored: dict) -> tuple[str, str, str]:
    """The initializers of ``rows`` (packed codes, scales, row offsets), added once under ``name``."""
    from onnx import numpy_helper

    key = id(rows)
    if key not in stored:
        names = (f"{name}_nbits", f"{name}_nbits_scales", f"{name}_nbits_offsets")
        for n, v in zip(names, (rows.packed, rows.scales, rows.offsets)):
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(v), n))
        stored[key] = names
    return stored[key]


def _matmul(node, names: tuple[str, str, str], rows: _Rows, graph, accuracy_level: int = 0) -> list:
    """``MatMulNBits(x)`` plus each row's offset times the sum of ``x``."""
    from onnx import helper, numpy_helper

    packed, scales, offsets = names
    x, out = node.input[0], node.output[0]
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), out + "_last"))
    return [helper.make_node("MatMulNBits", [x, packed, scales], [out + "_nbits"], name=out + "_nbits",
                             domain="com.microsoft", K=rows.k, N=rows.n, bits=rows.bits, block_size=rows.block,
                             **({"accuracy_level": accuracy_level} if accuracy_level else {})),
            helper.make_node("ReduceSum", [x, out + "_last"], [out + "_sum"], keepdims=1, name=out + "_sum"),
            helper.make_node("Mul", [out + "_sum", offsets], [out + "_offset"], name=out + "_offset"),
            helper.make_node("Add", [out + "_nbits", out + "_offset"], [out], name=out + "_add")]


def _decode(out: str, packed: str, scale: str, offset: str, rows: _Rows) -> tuple[list, dict]:
    """Nodes that unpack the codes of the packed rows ``packed`` (n, blocks, blob) and dequantize them with each
    row's ``scale`` and ``offset`` (n, 1) into ``out + "_rows"`` (n, k) float32, and the constants they read
    (to be stored under ``out + key``)."""
    from onnx import TensorProto, helper

    per_byte = 8 // rows.bits
    consts = {"_shifts": (np.arange(per_byte) * rows.bits).astype(np.uint8), "_mask": np.array(2**rows.bits - 1, np.uint8),
              "_last": np.array([-1], np.int64), "_row_shape": np.array([0, -1], np.int64),
              "_starts": np.array([0], np.int64), "_ends": np.array([rows.k], np.int64),
              "_axis1": np.array([1], np.int64), "_z": np.array(2 ** (rows.bits - 1), np.float32)}
    n = lambda op, inputs, output, **kw: helper.make_node(op, inputs, [out + output], name=out + output, **kw)  # noqa: E731
    return [
        n("Unsqueeze", [packed, out + "_last"], "_bytes1"),
        n("BitShift", [out + "_bytes1", out + "_shifts"], "_shifted", direction="RIGHT"),
        n("BitwiseAnd", [out + "_shifted", out + "_mask"], "_codes8"),             # (n, blocks, blob, per_byte)
        n("Reshape", [out + "_codes8", out + "_row_shape"], "_padded"),
        n("Slice", [out + "_padded", out + "_starts", out + "_ends", out + "_axis1"], "_codes"),
        n("Cast", [out + "_codes"], "_float", to=TensorProto.FLOAT),
        n("Sub", [out + "_float", out + "_z"], "_centred"),
        n("Mul", [out + "_centred", scale], "_scaled"),
        n("Add", [out + "_scaled", offset], "_rows"),
    ], consts


def _gather(node, names: tuple[str, str, str], rows: _Rows, graph) -> list:
    """Nodes that gather packed rows by ``node``'s ids (a ``Gather`` on axis 0, or a ``GatherND`` by ids of
    shape (..., 1)), unpack their codes and dequantize them."""
    from onnx import helper, numpy_helper

    packed, scales, offsets = names
    out, ids = node.output[0], node.input[1]
    decode, consts = _decode(out, out + "_bytes", out + "_scale", out + "_offset", rows)
    consts.update({"_flat": np.array([-1], np.int64), "_one": np.array([1], np.int64),
                   "_width": np.array([rows.k], np.int64)})
    graph.initializer.extend(numpy_helper.from_array(v, out + k) for k, v in consts.items())
    n = lambda op, inputs, output, **kw: helper.make_node(op, inputs, [out + output], name=out + output, **kw)  # noqa: E731
    return [
        n("Reshape", [ids, out + "_flat"], "_ids"),
        n("Gather", [packed, out + "_ids"], "_bytes", axis=0),                      # (n, blocks, blob) uint8
        n("Gather", [scales, out + "_ids"], "_scs", axis=0),
        n("Slice", [out + "_scs", out + "_starts", out + "_one", out + "_axis1"], "_scale"),
        n("Gather", [offsets, out + "_ids"], "_offs", axis=0),
        n("Unsqueeze", [out + "_offs", out + "_last"], "_offset"),
        *decode,
        n("Shape", [ids], "_ids_shape", **({"end": -1} if node.op_type == "GatherND" else {})),
        n("Concat", [out + "_ids_shape", out + "_width"], "_shape", axis=0),
        helper.make_node("Reshape", [out + "_rows", out + "_shape"], [out], name=out + "_reshape"),
    ]


def dequantized_cores(model: LanguageModel, bits: int, container: int = 4) -> dict[str, tuple[list, list, str]]:
    """For every TT core of ``model`` (``TTLinear``, ``TTEmbedding``), on its ``bits``-bit row grids (rows along
    its output mode, ``lm.compression.qat.row_axes``): ``{core name: (nodes, initializers, output)}``, the
    core's codes packed in ``container`` bits a number (laid out as a lookup reads them, ``_uses``), a float32
    scale and offset per row, and
    the nodes that unpack and dequantize all of them into ``output``, the core (r_{k-1}, m_k, n_k, r_k) in
    float32. Every input is a constant, so onnxruntime's constant folding runs them once, when it opens the
    file (``lm.deploy.onnx_tt``'s ``tt="load"``)."""
    from onnx import helper, numpy_helper

    check_widths(bits, container)
    tt = {id(m.cores) for m in model.modules() if isinstance(m, (TTLinear, TTEmbedding))}
    found = {}
    for prefix, module in model.named_modules():
        if id(module) not in tt:
            continue
        for k, core in enumerate(module.parameters(recurse=False)):
            name = f"{prefix}.{k}"
            r0, m, n, r1 = core.shape
            rows = _uses(core.detach(), bits, 1, name, container)["gather"][1]  # (m, r0 n r1)
            decode, consts = _decode(name, name + "_nbits", name + "_nbits_scales", name + "_nbits_offsets", rows)
            consts.update({"_nbits": rows.packed, "_nbits_scales": rows.scales[:, :1],
                           "_nbits_offsets": rows.offsets[:, None], "_modes": np.array([m, r0, n, r1], np.int64)})
            inits = [numpy_helper.from_array(np.ascontiguousarray(v), name + key) for key, v in consts.items()]
            nodes = decode + [
                helper.make_node("Reshape", [name + "_rows", name + "_modes"], [name + "_by_mode"], name=name + "_by_mode"),
                helper.make_node("Transpose", [name + "_by_mode"], [name + "_dequantized"], name=name + "_dequantized",
                                 perm=[1, 0, 2, 3]),                                   # (r0, m, n, r1)
            ]
            found[name] = (nodes, inits, name + "_dequantized")
    return found


def rewrite_nbits(graph, model: LanguageModel, bits: int, container: int = 4,
                  skip: frozenset[str] = frozenset(), activations: str = "float32") -> dict[str, str]:
    """Replace, in ``graph`` (an exported step of ``model`` with ``Gemm`` rewritten as ``MatMul``), the
    products by and the lookups in ``model``'s quantized weights with their ``bits``-bit codes packed in
    ``container`` bits, the products computed with ``activations`` (see the module docstring). Returns
    {weight name: "matmul", "gather" or "matmul+gather"}.

    The weights named in ``skip`` are left to the caller (TT cores built at load: ``dequantized_cores``).

    Raises ``ValueError`` when ``bits`` is not one of ``WIDTHS``, ``container`` one of ``NBITS`` at least
    ``bits`` or ``activations`` one of ``ACTIVATIONS``, when a weight is not on its ``bits``-bit grids, or when a quantized weight is not found in the
    graph (e.g. TT weights built: ``tt="dense"``).
    """
    from onnx import numpy_helper

    check_widths(bits, container)
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {tuple(ACTIVATIONS)}, got {activations!r}")
    state = model.state_dict(keep_vars=True)
    weights, seen = {}, set()
    for name, axis in qat.row_axes(model).items():
        if name not in skip and id(state[name]) not in seen:  # a tied weight once
            seen.add(id(state[name]))
            weights[name] = _uses(state[name].detach(), bits, axis, name, container)
    inits = {t.name: t for t in graph.initializer}
    arrays = {}

    def value(name: str) -> np.ndarray | None:
        if name not in inits:
            return None
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    def find(kind: str, constant: np.ndarray | None):
        for name, uses in weights.items():
            target, rows = uses[kind]
            if constant is not None and constant.shape == target.shape and np.array_equal(constant, target):
                return name, rows
        return None

    stored, found, nodes = {}, {}, []
    for node in graph.node:
        hit = None
        if node.op_type == "MatMul":
            hit = find("matmul", value(node.input[1]))
        elif (node.op_type == "Gather" and _attr(node, "axis", 0) == 0) or (
                node.op_type == "GatherND" and _attr(node, "batch_dims", 0) == 0):  # rows by ids (..., 1)
            hit = find("gather", value(node.input[0]))
        if hit is None:
            nodes.append(node)
            continue
        name, rows = hit
        kind = "matmul" if node.op_type == "MatMul" else "gather"
        names = _store(graph, name, rows, stored)
        nodes.extend(_matmul(node, names, rows, graph, ACTIVATIONS[activations]) if kind == "matmul"
                     else _gather(node, names, rows, graph))
        found[name] = "+".join(sorted({*found.get(name, "").split("+"), kind} - {""}))
    missing = sorted(set(weights) - set(found))
    if missing:
        raise ValueError(f"quantized weights not found as the weight of a product or the table of a lookup in the "
                         f"exported graph: {missing}. n-bit export keeps dense, low-rank and TT maps and "
                         "dense and TT embeddings (TT cores built at load or kept); GroupReduce's blocks are not supported")
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    return found


__all__ = ["ACTIVATIONS", "NBITS", "WIDTHS", "check_widths", "dequantized_cores", "rewrite_nbits"]
