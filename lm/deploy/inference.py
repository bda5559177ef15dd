"""Inference forms of the factorised layers: the same maps as plain products with constant matrices.

A deployment runtime (onnxruntime, a phone's) runs a graph of ``MatMul`` and ``Gather``
nodes with constant weights fast, and its int8 quantizers (``onnxruntime.quantization``)
quantize exactly those nodes. ``inference_form(model)`` returns a copy of a language
model in which every factorised layer is such a graph, computing the same function:

* ``TTLinear`` -> ``TTMatMuls`` (``tt="cores"``): the cores, each reshaped once into a
  2-D matrix, applied to the input one after the other (d products, the TT size kept);
  or -> ``nn.Linear`` with the built weight (``tt="dense"``: one product, the dense size);
* ``TTEmbedding`` -> ``TTRows`` (cores: one gathered slice per core, chained by small
  batched products) or ``nn.Embedding`` (the built table);
* ``BlockLowRankEmbedding`` (GroupReduce) -> ``BlockRows``: every block looked up with
  clamped ids and masked, no data-dependent control flow;
* ``ttlayers.LSTM`` -> ``UnrolledLSTM``: the steps written out, each layer's two maps and
  its cell, so that a traced step is plain products (no fused kernel, no ``scan`` loop). Where
  both maps of a layer are products with one matrix (``nn.Linear``, or ``TTLinear`` built), they
  are one product, ``[x, h] @ [W_ih, W_hh].T`` with the two biases summed (``GateProduct``):
  half the products (and in int8 half the activation quantizations) per step.

Dense maps, ``LowRankLinear`` (two products) and ``BlockLowRankLinear`` are left as they are.
The forms hold buffers, not parameters: they are for inference only.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from ttlayers import LSTM, TTEmbedding, TTLinear

from ..compression.groupreduce import BlockLowRankEmbedding
from ..model import LanguageModel

TT_ROUTES = ("cores", "dense")


class TTMatMuls(nn.Module):
    """``TTLinear``'s map as d matrix products with its cores, right to left.

    Core k (r_{k-1}, m_k, n_k, r_k) is stored as the matrix (n_k r_k, r_{k-1} m_k). The
    running tensor is kept as (batch, N_<k, M_>k, n_k, r_k), with N_<k the input modes
    still to contract and M_>k the output modes already made, so that every product
    contracts its two trailing dimensions with one core matrix.

    Input (*, in_features) -> output (*, out_features).
    """

    def __init__(self, layer: TTLinear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.in_shape, self.out_shape, self.ranks = tuple(layer.in_shape), tuple(layer.out_shape), tuple(layer.ranks)
        with torch.no_grad():
            for k, core in enumerate(layer.cores):
                r0, m, n, r1 = core.shape
                self.register_buffer(f"core{k}", core.detach().permute(2, 3, 0, 1).reshape(n * r1, r0 * m).clone())
            self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def forward(self, input: Tensor) -> Tensor:
        lead = input.shape[:-1]
        x = input.reshape(-1, self.in_features)
        pad = math.prod(self.in_shape) - self.in_features
        if pad:
            x = nn.functional.pad(x, (0, pad))
        d, made = len(self.in_shape), 1
        x = x.reshape(-1, self.in_shape[-1] * self.ranks[-1])  # rows: (batch, N_<d, M_>d = 1)
        for k in reversed(range(d)):
            n_before = math.prod(self.in_shape[:k])
            y = x @ getattr(self, f"core{k}")  # (batch * N_<k * M_>k, r_{k-1} m_k)
            if k == 0:
                x = y.reshape(-1, made, self.out_shape[0]).transpose(1, 2)  # (batch, m_1, M_>1)
                break
            # (batch, N_<k-1, n_{k-1}, M_>k, r_{k-1}, m_k) -> (batch, N_<k-1, m_k, M_>k, n_{k-1}, r_{k-1})
            y = y.reshape(-1, n_before // self.in_shape[k - 1], self.in_shape[k - 1], made, self.ranks[k],
                          self.out_shape[k])
            x = y.permute(0, 1, 5, 3, 2, 4).reshape(-1, self.in_shape[k - 1] * self.ranks[k])
            made *= self.out_shape[k]
        out = x.reshape(-1, math.prod(self.out_shape))[:, : self.out_features]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, ranks={self.ranks}"


class TTRows(nn.Module):
    """``TTEmbedding``'s lookup: per core, the slice of the id's digit (a ``Gather`` from the
    core stored as a (n_k, r_{k-1} d_k r_k) table), the slices chained by batched products.

    Input: ids of any shape (*) -> (*, embedding_dim).
    """

    def __init__(self, layer: TTEmbedding) -> None:
        super().__init__()
        if layer.padding_idx is not None:
            raise ValueError("TTRows has no padding_idx; build the TTEmbedding's table instead (tt='dense')")
        self.num_embeddings, self.embedding_dim = layer.num_embeddings, layer.embedding_dim
        self.num_shape, self.dim_shape, self.ranks = tuple(layer.num_shape), tuple(layer.dim_shape), tuple(layer.ranks)
        with torch.no_grad():
            for k, core in enumerate(layer.cores):
                self.register_buffer(f"core{k}", core.detach().transpose(0, 1).reshape(core.shape[1], -1).clone())

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        rows = None
        for k, n in enumerate(self.num_shape):
            digit = torch.div(flat, math.prod(self.num_shape[k + 1:]), rounding_mode="floor") % n
            piece = getattr(self, f"core{k}")[digit].reshape(-1, self.ranks[k], self.dim_shape[k] * self.ranks[k + 1])
            # (batch, D, r_{k}) @ (batch, r_k, d_k r_{k+1}) -> (batch, D d_k, r_{k+1})
            rows = piece if rows is None else torch.bmm(rows, piece)
            rows = rows.reshape(flat.shape[0], -1, self.ranks[k + 1])
        return rows.reshape(flat.shape[0], -1)[:, : self.embedding_dim].reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, ranks={self.ranks}"


class BlockRows(nn.Module):
    """``BlockLowRankEmbedding``'s lookup without data-dependent control flow: every block
    looks up the ids clamped to its range, and the rows outside it are masked to zero."""

    def __init__(self, layer: BlockLowRankEmbedding) -> None:
        super().__init__()
        self.embedding_dim = layer.embedding_dim
        self.boundaries = list(layer.boundaries)
        with torch.no_grad():
            for g, (u, v) in enumerate(zip(layer.u, layer.v)):
                self.register_buffer(f"u{g}", u.detach().clone())
                self.register_buffer(f"v{g}", v.detach().clone())

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        out = None
        for g, (a, b) in enumerate(zip(self.boundaries, self.boundaries[1:])):
            local = (flat - a).clamp(0, b - a - 1)
            rows = getattr(self, f"u{g}")[local] @ getattr(self, f"v{g}")
            rows = rows * ((flat >= a) & (flat < b)).unsqueeze(-1).to(rows.dtype)
            out = rows if out is None else out + rows
        return out.reshape(*ids.shape, self.embedding_dim)


def fusable(layer, tt: str) -> bool:
    """Whether both maps of an LSTM layer are products with one matrix on route ``tt`` (``nn.Linear``; ``TTLinear``
    unless ``tt="cores"``), with a bias each or neither."""
    maps = (layer.input_map, layer.recurrent_map)
    single = (nn.Linear,) if tt == "cores" else (nn.Linear, TTLinear)
    return all(isinstance(m, single) for m in maps) and (maps[0].bias is None) == (maps[1].bias is None)


class GateProduct(nn.Module):
    """An LSTM layer's two maps (``fusable``) as one product: ``gates = [x, h] @ [W_ih, W_hh].T + (b_ih + b_hh)``."""

    def __init__(self, layer) -> None:
        super().__init__()
        maps = (layer.input_map, layer.recurrent_map)
        with torch.no_grad():
            weight = torch.cat([m.dense_weight() if isinstance(m, TTLinear) else m.weight for m in maps], 1)
            self.product = nn.Linear(weight.shape[1], weight.shape[0], bias=maps[0].bias is not None)
            self.product.weight.copy_(weight)
            if self.product.bias is not None:
                self.product.bias.copy_(maps[0].bias + maps[1].bias)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return self.product(torch.cat([x, h], -1))


class UnrolledLSTM(nn.Module):
    """``ttlayers.LSTM`` (eval mode) with its time steps unrolled: per step and layer,
    ``gates = input_map(x_t) + recurrent_map(h)`` (one ``GateProduct`` where ``fuse`` and both maps
    are products with one matrix on TT route ``tt``), torch's (i, f, g, o) cell, and the projection
    if any. Traced for one step, the graph is the layers' products and the gate arithmetic.

    ``forward(input (seq_len, batch, input_size), (h_0, c_0) or None)`` -> ``output, (h_n, c_n)`` as ``LSTM``.
    """

    def __init__(self, lstm: LSTM, fuse: bool = True, tt: str = "cores") -> None:
        super().__init__()
        if lstm.batch_first:
            raise ValueError("UnrolledLSTM takes (seq_len, batch, features) inputs; got a batch_first LSTM")
        self.layers = lstm.layers
        self.num_layers, self.hidden_size, self.output_size = lstm.num_layers, lstm.hidden_size, lstm.output_size
        self.gates = nn.ModuleList([GateProduct(layer) if fuse and fusable(layer, tt) else nn.Identity()
                                    for layer in lstm.layers])

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if hx is None:
            batch = input.shape[1]
            hx = (input.new_zeros(self.num_layers, batch, self.output_size),
                  input.new_zeros(self.num_layers, batch, self.hidden_size))
        hs, cs = list(hx[0].unbind(0)), list(hx[1].unbind(0))
        outputs = []
        for x in input.unbind(0):
            for k, layer in enumerate(self.layers):
                fused = self.gates[k]
                gates = (fused(x, hs[k]) if isinstance(fused, GateProduct)
                         else layer.input_map(x) + layer.recurrent_map(hs[k]))
                i, f, g, o = gates.chunk(4, dim=-1)
                cs[k] = torch.sigmoid(f) * cs[k] + torch.sigmoid(i) * torch.tanh(g)
                x = torch.sigmoid(o) * torch.tanh(cs[k])
                if layer.proj_size:
                    x = layer.projection(x)
                hs[k] = x
            outputs.append(x)
        return torch.stack(outputs), (torch.stack(hs), torch.stack(cs))


def _dense_linear(layer: TTLinear) -> nn.Linear:
    out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        out.weight.copy_(layer.dense_weight())
        if layer.bias is not None:
            out.bias.copy_(layer.bias)
    return out


def _dense_embedding(layer: TTEmbedding) -> nn.Embedding:
    table = tt_table(layer)
    return nn.Embedding.from_pretrained(table, freeze=True, padding_idx=layer.padding_idx)


def tt_table(layer: TTEmbedding) -> Tensor:
    """The (num_embeddings, embedding_dim) table of a ``TTEmbedding``."""
    with torch.no_grad():
        return layer(torch.arange(layer.num_embeddings))


def _replacement(module: nn.Module, tt: str, unroll: bool, fuse: bool) -> nn.Module | None:
    if isinstance(module, TTLinear):
        return TTMatMuls(module) if tt == "cores" else _dense_linear(module)
    if isinstance(module, TTEmbedding):
        return TTRows(module) if tt == "cores" and module.padding_idx is None else _dense_embedding(module)
    if isinstance(module, BlockLowRankEmbedding):
        return BlockRows(module)
    if isinstance(module, LSTM) and unroll:
        return UnrolledLSTM(module, fuse, tt)
    return None


@torch.no_grad()
def inference_form(model: LanguageModel, tt: str = "cores", unroll: bool = True, fuse: bool = True) -> LanguageModel:
    """A copy of ``model`` (eval mode) whose factorised layers are products with constant
    matrices (see the module docstring); ``tt`` is ``"cores"`` (keep the TT cores) or
    ``"dense"`` (build each TT weight once); ``unroll=False`` keeps the ``ttlayers.LSTM`` (with
    the maps replaced), which eager torch and ``torch.ao`` run with their own kernels;
    ``fuse=False`` keeps each unrolled layer's two maps as two products."""
    if tt not in TT_ROUTES:
        raise ValueError(f"tt must be one of {TT_ROUTES}, got {tt!r}")
    form = copy.deepcopy(model).eval()
    for name, module in list(form.named_modules()):
        new = _replacement(module, tt, unroll, fuse)
        if new is not None:
            parent, _, attr = name.rpartition(".")
            setattr(form.get_submodule(parent) if parent else form, attr, new)
    return form
