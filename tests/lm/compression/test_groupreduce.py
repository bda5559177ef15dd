import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.compression.groupreduce import (BlockLowRankEmbedding, BlockLowRankLinear, allocate_ranks,
                                        frequency_boundaries, word_weights)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 300), groups=st.integers(1, 6))
def test_frequency_boundaries(n, groups):
    groups = min(groups, n)
    b = frequency_boundaries(n, groups)
    assert b[0] == 0 and b[-1] == n and all(x < y for x, y in zip(b, b[1:]))
    sizes = [y - x for x, y in zip(b, b[1:])]
    assert len(sizes) == groups and sizes == sorted(sizes)  # few frequent words, many rare ones


def test_frequency_boundaries_keep_the_study_edges():
    # the study's GroupReduce (10000 words, 6 groups) keeps the plain rounded geometric edges its
    # cached runs used; the repair of small vocabularies (3 words in 2 groups: [0, 1, 3], not
    # [0, 2, 3]) does not touch them
    n, groups = 10000, 6
    assert frequency_boundaries(n, groups) == [0] + [round(n ** (g / groups)) for g in range(1, groups)] + [n]
    assert frequency_boundaries(3, 2) == [0, 1, 3]
    assert frequency_boundaries(6, 6) == list(range(7))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), groups=st.integers(1, 4), ratio=st.floats(1.5, 8.0))
def test_weighted_svd_factors_and_budget(seed, groups, ratio):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(40, 6, generator=g, dtype=torch.float64)
    counts = torch.randint(0, 50, (40,), generator=g).sort(descending=True).values
    rw = word_weights(counts)
    b = frequency_boundaries(40, groups)
    budget = int(40 * 6 / ratio)
    try:
        ranks = allocate_ranks(w, b, budget, rw)
    except ValueError:
        assert budget < sum(min(1, y - x) * (y - x + 6) for x, y in zip(b, b[1:]))
        return
    assert sum(r * (y - x + 6) for r, x, y in zip(ranks, b, b[1:])) <= budget
    emb = BlockLowRankEmbedding(40, 6, b, ranks, dtype=torch.float64)
    emb.set_from(w, rw)
    err = ((emb.dense_weight() - w) ** 2 * rw[:, None]).sum()
    # the weighted error is the sum of the discarded weighted squared singular values, block by block
    expected = sum(torch.linalg.svdvals(rw[x:y].sqrt()[:, None] * w[x:y])[r:].pow(2).sum()
                   for r, x, y in zip(ranks, b, b[1:]))
    torch.testing.assert_close(err, expected)


def test_forward_matches_dense_and_gradients_flow():
    torch.manual_seed(0)
    b, ranks = [0, 3, 12, 50], [3, 4, 2]
    emb = BlockLowRankEmbedding(50, 8, b, ranks)
    ids = torch.tensor([[0, 2, 5], [49, 11, 3]])
    torch.testing.assert_close(emb(ids), emb.dense_weight()[ids])
    emb(ids).sum().backward()
    assert all(u.grad is not None for u in emb.u) and emb.v[0].grad is not None
    lin = BlockLowRankLinear(8, 50, b, ranks)
    x = torch.randn(4, 2, 8)
    torch.testing.assert_close(lin(x), x @ lin.dense_weight().T + lin.bias)
    full = BlockLowRankEmbedding(50, 8, [0, 50], [8])
    w = torch.randn(50, 8)
    full.set_from(w)
    torch.testing.assert_close(full.dense_weight(), w, atol=1e-5, rtol=1e-5)


def test_bad_blocks():
    with pytest.raises(ValueError, match="boundaries"):
        BlockLowRankEmbedding(10, 4, [0, 5, 9], [1, 1])
    with pytest.raises(ValueError, match="rank"):
        BlockLowRankLinear(4, 10, [0, 2, 10], [3, 1])
    with pytest.raises(ValueError, match="one rank per block"):
        BlockLowRankLinear(4, 10, [0, 2, 10], [1])
    with pytest.raises(ValueError, match="groups"):
        frequency_boundaries(5, 6)
