"""LowRankLinear: a linear layer whose weight is a product of two thin matrices."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._tt_layout import check_features, check_float_input


class LowRankLinear(nn.Module):
    """``y = x @ (u @ v).T + b`` with ``u`` (out_features, rank) and ``v`` (rank, in_features).

    The input goes through ``v`` then ``u`` (rank * (in + out) multiply-adds per row instead
    of in * out). Input (*, in_features) -> output (*, out_features).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = check_features(in_features, "in_features")
        self.out_features = check_features(out_features, "out_features")
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be an int in [1, min(in_features, out_features)] = [1, {min(in_features, out_features)}], got {rank!r}")
        self.rank = int(rank)
        self.u = nn.Parameter(torch.empty(out_features, rank, **factory))
        self.v = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian factors whose product has ``nn.Linear``'s init variance 1 / (3 in_features)
        (each entry of u @ v sums ``rank`` products), and ``nn.Linear``'s bias init."""
        std = (1.0 / (3 * self.in_features * self.rank)) ** 0.25
        nn.init.normal_(self.u, 0.0, std)
        nn.init.normal_(self.v, 0.0, std)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> "LowRankLinear":
        """The truncated SVD of ``linear.weight`` (the best rank-``rank`` approximation in the
        Frobenius and spectral norms, Eckart-Young), split as u = U_r S_r^(1/2), v = S_r^(1/2) V_r^T."""
        weight = linear.weight.detach()
        out = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                  device=weight.device, dtype=weight.dtype)
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        root = s[:rank].sqrt()
        with torch.no_grad():
            out.u.copy_(u[:, :rank] * root)
            out.v.copy_(root[:, None] * vh[:rank])
            if linear.bias is not None:
                out.bias.copy_(linear.bias)
        return out

    def dense_weight(self) -> Tensor:
        """``u @ v``: (out_features, in_features)."""
        return self.u @ self.v

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            raise ValueError(f"LowRankLinear expects input (*, {self.in_features}), got shape {tuple(input.shape)}")
        check_float_input(input, self.v.dtype, "LowRankLinear")
        return F.linear(F.linear(input, self.v), self.u, self.bias)

    def extra_repr(self) -> str:
        ratio = self.in_features * self.out_features / (self.rank * (self.in_features + self.out_features))
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"compression={ratio:.1f}x, bias={self.bias is not None}")
