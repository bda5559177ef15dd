import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ttlayers.tt_matrix_module
from ttlayers import TTEmbedding, factorize

SETTINGS = settings(max_examples=30, deadline=None)


@SETTINGS
@given(num=st.integers(1, 60), dim=st.integers(1, 20), d=st.integers(1, 3), rank=st.integers(1, 5),
       lead=st.lists(st.integers(0, 5), min_size=0, max_size=2), seed=st.integers(0, 999))
def test_lookup_and_gradients_match_dense_table(num, dim, d, rank, lead, seed):
    torch.manual_seed(seed)
    layer = TTEmbedding(num, dim, rank, num_shape=factorize(num, d), dtype=torch.float64)
    idx = torch.randint(0, num, lead)
    out = layer(idx)
    table = layer.dense_weight()
    ref = table[idx]
    assert out.shape == (*lead, dim)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-9)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, list(layer.cores), g, allow_unused=True),
                    torch.autograd.grad(ref, list(layer.cores), g, allow_unused=True)):
        torch.testing.assert_close(a if a is not None else torch.zeros_like(b), b, atol=1e-12, rtol=1e-9)


def test_lookups_never_build_the_table(monkeypatch):
    layer = TTEmbedding(1000, 30, 4)

    def forbidden(*args):
        raise AssertionError("the full table was built")

    monkeypatch.setattr(ttlayers.tt_matrix_module, "tt_matrix_to_dense", forbidden)
    assert layer(torch.tensor([[3, 3, 999], [0, 3, 5]])).shape == (2, 3, 30)


@pytest.mark.parametrize("indices", [torch.arange(400), torch.randint(0, 400, (2000,)), torch.zeros(50, dtype=torch.long)],
                         ids=["distinct", "repeats", "one"])
def test_lookup_paths_and_the_eval_cache_follow_the_cores(indices):
    torch.manual_seed(0)
    layer = TTEmbedding(400, 12, 3, dtype=torch.float64).eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(indices), layer.dense_weight()[indices])
        layer.cores[-1].mul_(2.0)  # an in-place change must drop the cached product of trailing cores
        torch.testing.assert_close(layer(indices), layer.dense_weight()[indices])
    layer.cores[1] = nn.Parameter(torch.randn_like(layer.cores[1]))  # so must a replaced core
    with torch.no_grad():
        torch.testing.assert_close(layer(indices), layer.dense_weight()[indices])


@pytest.mark.filterwarnings("ignore:the exact TT-matrix")  # exact copies are the point here
@SETTINGS
@given(num=st.integers(1, 50), dim=st.integers(1, 20), d=st.integers(1, 3), seed=st.integers(0, 999))
def test_from_embedding_full_rank_is_exact(num, dim, d, seed):
    torch.manual_seed(seed)
    emb = nn.Embedding(num, dim).double()
    layer = TTEmbedding.from_embedding(emb, num_shape=factorize(num, d), dim_shape=factorize(dim, d))
    torch.testing.assert_close(layer.dense_weight(), emb.weight, atol=1e-10, rtol=0)
    idx = torch.arange(num)
    torch.testing.assert_close(layer(idx), emb(idx), atol=1e-10, rtol=0)


@SETTINGS
@given(num=st.integers(8, 80), dim=st.integers(4, 30), eps=st.floats(0.01, 0.9), seed=st.integers(0, 999))
def test_from_embedding_rel_eps_bound(num, dim, eps, seed):
    torch.manual_seed(seed)
    emb = nn.Embedding(num, dim).double()
    layer = TTEmbedding.from_embedding(emb, rel_eps=eps)
    assert torch.linalg.norm(layer.dense_weight() - emb.weight) <= eps * torch.linalg.norm(emb.weight) * (1 + 1e-9)


@pytest.mark.parametrize("rank", [2, 8, 32])
def test_init_variance_matches_nn_embedding(rank):
    torch.manual_seed(rank)
    layer = TTEmbedding(4096, 512, rank)
    assert 0.5 < layer.dense_weight().var().item() < 2.0  # nn.Embedding: N(0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_state_dict_round_trip(dtype):
    torch.manual_seed(0)
    layer = TTEmbedding(100, 12, 3, dtype=dtype)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    copy = TTEmbedding(100, 12, 3, dtype=dtype)
    copy.load_state_dict(torch.load(buffer))
    idx = torch.tensor([1, 50, 99, 1])
    assert copy(idx).dtype == dtype
    torch.testing.assert_close(copy(idx), layer.dense_weight()[idx])


def test_padded_sizes():
    torch.manual_seed(0)
    layer = TTEmbedding(10007, 13, 3)
    assert layer.dense_weight().shape == (10007, 13)
    idx = torch.tensor([0, 10006, 5000])
    torch.testing.assert_close(layer(idx), layer.dense_weight()[idx])


def test_extra_repr():
    text = repr(TTEmbedding(10000, 650, 16))
    assert "num_shape=(25, 20, 20)" in text and "dim_shape=(13, 10, 5)" in text and "compression=" in text


def test_bad_input_names_the_problem():
    layer = TTEmbedding(10, 4, 2)
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        layer(torch.tensor([3, 10]))
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        layer(torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer indices"):
        layer(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="rank"):
        TTEmbedding(10, 4, 0)
    with pytest.raises(ValueError, match="num_shape"):
        TTEmbedding(100, 4, 2, num_shape=(3, 3))
    with pytest.raises(ValueError, match=r"^rank must be >= 1"):
        TTEmbedding.from_embedding(nn.Embedding(10, 4), rank=0)
    with pytest.raises(TypeError, match="embedding must be a torch.nn.Embedding"):
        TTEmbedding.from_embedding(nn.Linear(4, 10), rank=2)


@pytest.mark.filterwarnings("ignore:the exact TT-matrix")
def test_padding_idx_looks_up_zeros_without_gradient():
    source = nn.Embedding(30, 6, padding_idx=-1)
    layer = TTEmbedding.from_embedding(source)
    assert layer.padding_idx == 29 and "padding_idx=29" in repr(layer)
    idx = torch.tensor([[29, 3], [29, 29]])
    out = layer(idx)
    assert torch.equal(out[idx == 29], torch.zeros(3, 6))
    torch.testing.assert_close(out, layer.dense_weight()[idx])
    torch.testing.assert_close(layer.dense_weight(), source.weight.detach(), atol=1e-5, rtol=1e-5)
    out[idx == 29].sum().backward()
    assert all(c.grad is None or not c.grad.any() for c in layer.cores)
    with pytest.raises(ValueError, match="padding_idx"):
        TTEmbedding(30, 6, 2, padding_idx=30)


def test_an_embedding_whose_lookups_tt_cannot_reproduce_is_refused():
    for kwargs in ({"max_norm": 1.0}, {"scale_grad_by_freq": True}, {"sparse": True}):
        with pytest.raises(ValueError, match=f"TTEmbedding has no {next(iter(kwargs))}="):
            TTEmbedding.from_embedding(nn.Embedding(27, 8, **kwargs), rank=2)


def test_indices_that_are_not_an_integer_tensor_are_a_type_error():
    layer = TTEmbedding(24, 8, 2)
    with pytest.raises(TypeError, match="a torch.Tensor of integer indices, got list"):
        layer([1, 2])
    with pytest.raises(TypeError, match="integer indices, got dtype torch.float32"):
        layer(torch.tensor([1.0]))
