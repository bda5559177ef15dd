"""The compiled pairwise products agree with torch.einsum, values and gradients."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ttlayers.tt_contract import Pairwise

SYMBOLS = "abcdefg"


@st.composite
def pair_equations(draw):
    """Two operands over disjoint or shared indices; shared ones are summed or kept (batch)."""
    roles = draw(st.lists(st.sampled_from(["left", "right", "summed", "batch"]), min_size=1, max_size=6))
    symbols = SYMBOLS[: len(roles)]
    left = [s for s, r in zip(symbols, roles) if r != "right"]
    right = [s for s, r in zip(symbols, roles) if r != "left"]
    result = [s for s, r in zip(symbols, roles) if r != "summed"]
    left, right, result = (draw(st.permutations(x)) for x in (left, right, result))
    sizes = {s: draw(st.integers(1, 4)) for s in symbols}
    return "".join(left) + "," + "".join(right) + "->" + "".join(result), sizes


@settings(max_examples=60, deadline=None)
@given(pair_equations(), st.integers(0, 999))
def test_pairwise_matches_einsum(case, seed):
    equation, sizes = case
    terms = equation.split("->")[0].split(",")
    torch.manual_seed(seed)
    a, b = (torch.randn([sizes[s] for s in t], dtype=torch.float64, requires_grad=True) for t in terms)
    ours, ref = Pairwise.compile(equation)(a, b), torch.einsum(equation, a, b)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    for x, y in zip(torch.autograd.grad(ours, (a, b), g), torch.autograd.grad(ref, (a, b), g)):
        torch.testing.assert_close(x, y)


def test_an_index_of_one_operand_only_must_be_kept():
    with pytest.raises(ValueError, match="one matmul"):
        Pairwise.compile("ab,bc->c")
