"""The decompositions' guarantees on ill-conditioned inputs, in float32 and float64, at any scale:
the working precision, scale and round-off contract of ``ttlayers._precision``, checked on every
decomposition that computes under it (``tt_svd``, ``tt_round``, ``tt_matrix_svd``, ``TTLinear.from_linear``).

Inputs: TT tensors and matrices whose singular values decay geometrically down to 1e-12 of the
largest, smooth functions on grids, Hilbert-like matrices, shapes with modes of size one, and
scales over many orders of magnitude. Errors are measured on the returned cores multiplied out
in float64 (scaled by powers of two so that nothing overflows), against:

* ``rel_eps``: ``||A - TT||_F <= rel_eps ||A||_F``;
* ``max_rank``: the error of a float64 numpy TT-SVD with the same cap, plus round-off;
* neither: round-off;
* scale ``c``: the ranks and relative error of the same input at scale 1.

Round-off is ``allowance(dtype, shape)``: what every bond may drop as numerically zero
(``ttlayers._precision.roundoff``), summed over the bonds, plus storing the cores in the dtype.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ttlayers import TTLinear, tt_matrix_svd, tt_round, tt_svd
from ttlayers._backend import TTMatrix, TTTensor
from ttlayers._precision import roundoff, storage_roundoff

SETTINGS = settings(max_examples=20, deadline=None)
DTYPES = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2 ** 31 - 1)


# ---------------------------------------------------------------- exact arithmetic on cores

def scaled_full(cores) -> tuple[np.ndarray, int]:
    """``(F, e)`` with the full tensor equal to ``F * 2**e``, computed in float64 from cores of any
    scale (each core is first divided by a power of two)."""
    exponent, out = 0, np.ones((1, 1))
    for core in cores:
        core = np.asarray(core.cpu() if torch.is_tensor(core) else core, dtype=np.float64)
        peak = np.abs(core).max()
        e = math.frexp(peak)[1] if peak > 0 else 0
        exponent += e
        core = np.ldexp(core, -e)
        out = (out @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
    return out.reshape([np.asarray(c).shape[1] if not torch.is_tensor(c) else c.shape[1] for c in cores]), exponent


def rel_error(tt, tensor) -> float:
    """``||tensor - tt||_F / ||tensor||_F`` in float64, for tensors of any scale."""
    full, e = scaled_full(tt.factors)
    tensor = np.asarray(tensor, dtype=np.float64)
    peak = np.abs(tensor).max()
    if peak == 0:
        return float(np.linalg.norm(full))
    t = math.frexp(peak)[1]
    diff = np.ldexp(full.reshape(tensor.shape), e - t) - np.ldexp(tensor, -t)
    return float(np.linalg.norm(diff) / np.linalg.norm(np.ldexp(tensor, -t)))


def numpy_tt_svd_error(tensor, cap) -> float:
    """Relative error of a plain float64 numpy TT-SVD (full SVDs) with rank cap ``cap``."""
    a = np.asarray(tensor, dtype=np.float64)
    a = a / np.abs(a).max()
    shape, rest, rank, discarded = a.shape, a, 1, 0.0
    for k in range(len(shape) - 1):
        u, s, vt = np.linalg.svd(rest.reshape(rank * shape[k], -1), full_matrices=False)
        r = min(cap, len(s))
        discarded += float(np.sum(s[r:] ** 2))
        rest, rank = s[:r, None] * vt[:r], r
    return math.sqrt(discarded) / np.linalg.norm(a)


def allowance(dtype, shape) -> float:
    """Round-off of a decomposition of a tensor of ``shape`` in ``dtype``: the numerically zero
    energy every bond may drop, plus storing the cores."""
    torch_dtype = torch.float32 if dtype == np.float32 else torch.float64
    d = len(shape)
    return math.sqrt(max(d - 1, 0)) * roundoff(torch_dtype, math.prod(shape)) + 2 * storage_roundoff(torch_dtype, d)


# ---------------------------------------------------------------- ill-conditioned inputs

@st.composite
def shapes(draw, max_size=20000):
    """2 to 5 modes of sizes from 1 (some of size one) up to what keeps ``max_size`` entries."""
    d = draw(st.integers(2, 5))
    largest = min(30, int(max_size ** (1 / d)))
    return tuple(draw(st.lists(st.integers(1, largest), min_size=d, max_size=d)))


def decaying_tt(shape, seed, floor_exp):
    """A TT tensor whose bond spectra decay geometrically from 1 to ``10**floor_exp``: random
    left-orthonormal cores with a diagonal of geometric weights at every bond (ranks 6)."""
    rng = np.random.default_rng(seed)
    rank, out = 1, np.ones((1, 1))
    for k, n in enumerate(shape):
        r_next = 1 if k == len(shape) - 1 else 6
        core = rng.standard_normal((rank * n, r_next))
        if r_next <= rank * n:
            core = np.linalg.qr(core)[0]
        if k < len(shape) - 1:
            core = core * np.logspace(0, floor_exp, r_next)
        out = (out @ core.reshape(rank, -1)).reshape(-1, r_next)
        rank = r_next
    return out.reshape(shape)


def smooth(shape, seed):
    """A smooth function sampled on a grid of [0, 1]^d (exponentially decaying spectra)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    weights = rng.uniform(0.2, 2, len(shape))
    kind = rng.integers(3)
    s = sum(w * x for w, x in zip(weights, grid))
    if kind == 0:
        return 1.0 / (1.0 + s)
    if kind == 1:
        return np.exp(-sum(w * x ** 2 for w, x in zip(weights, grid)))
    return np.sqrt(1.0 + s) + np.sin(s)


@st.composite
def ill_tensors(draw):
    """``(tensor as float64 numpy, shape)``: decaying TT, or smooth function on a grid."""
    shape, seed = draw(shapes()), draw(seeds)
    if draw(st.booleans()):
        return decaying_tt(shape, seed, draw(st.sampled_from([-4, -8, -12]))), shape
    return smooth(shape, seed), shape


def ill_matrix(rows, cols, seed, kind, floor_exp=-12):
    """Geometric singular values 1 .. 10**floor_exp, or a Hilbert-like matrix 1 / (i + j + shift)."""
    rng = np.random.default_rng(seed)
    if kind == "hilbert":
        i, j = np.arange(rows)[:, None], np.arange(cols)[None, :]
        return 1.0 / (i + j + rng.uniform(0.5, 2))
    k = min(rows, cols)
    u = np.linalg.qr(rng.standard_normal((rows, k)))[0]
    v = np.linalg.qr(rng.standard_normal((cols, k)))[0]
    return (u * np.logspace(0, floor_exp, k)) @ v.T


def scale_of(dtype, exponent_fraction):
    """A scale ``10**x`` over the dtype's range (float32: 1e-30 .. 1e30, float64: 1e-300 .. 1e300)."""
    return 10.0 ** (exponent_fraction * (30 if dtype == np.float32 else 300))


rel_epses = st.one_of(st.sampled_from([1e-5, 3e-5, 1e-4]), st.floats(-5, math.log10(0.5)).map(lambda x: 10 ** x))


# ---------------------------------------------------------------- tt_svd

@SETTINGS
@given(ill_tensors(), DTYPES, rel_epses)
def test_tt_svd_rel_eps_bound(case, dtype, rel_eps):
    tensor, shape = case
    tensor = tensor.astype(dtype)
    tt = tt_svd(tensor, rel_eps=rel_eps)
    assert rel_error(tt, tensor) <= rel_eps * (1 + 1e-9)


@SETTINGS
@given(ill_tensors(), DTYPES, st.integers(1, 10))
def test_tt_svd_max_rank_is_a_truncated_svd(case, dtype, cap):
    tensor, shape = case
    tensor = tensor.astype(dtype)
    tt = tt_svd(tensor, max_rank=cap)
    assert max(tt.rank) <= cap
    assert rel_error(tt, tensor) <= numpy_tt_svd_error(tensor, cap) + allowance(dtype, shape)


@SETTINGS
@given(ill_tensors(), DTYPES)
def test_tt_svd_exact_to_roundoff(case, dtype):
    tensor, shape = case
    tensor = tensor.astype(dtype)
    assert rel_error(tt_svd(tensor), tensor) <= allowance(dtype, shape)


@SETTINGS
@given(ill_tensors(), DTYPES, st.floats(-1, 1), st.sampled_from([{}, {"max_rank": 3}, {"rel_eps": 1e-4}]))
def test_tt_svd_scale_invariance(case, dtype, exponent_fraction, kwargs):
    tensor, shape = case
    tensor = tensor.astype(dtype)
    scaled = tensor * dtype(scale_of(dtype, exponent_fraction))
    reference, tt = tt_svd(tensor, **kwargs), tt_svd(scaled, **kwargs)
    assert tt.rank == reference.rank
    assert rel_error(tt, scaled) == pytest.approx(rel_error(reference, tensor), rel=1e-3, abs=allowance(dtype, shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tt_svd_of_a_subnormal_vector_is_the_vector(dtype):
    """d = 1: the one core is the input, even below the dtype's normal range (no core can hold a larger
    share of the scale)."""
    tiny = np.finfo(dtype).tiny
    vector = (np.random.default_rng(3).standard_normal(7) * tiny / 64).astype(dtype)
    assert np.abs(vector).max() < tiny
    np.testing.assert_array_equal(np.asarray(tt_svd(vector).factors[0]).reshape(7), vector)


def issue_matrix():
    """10 x 20000, float32, singular values 1, .03, .01, .001 (issue 13)."""
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.standard_normal((10, 4)))[0]
    v = np.linalg.qr(rng.standard_normal((20000, 4)))[0]
    return ((u * [1, 0.03, 0.01, 0.001]) @ v.T).astype(np.float32)


def issue_smooth():
    """1 / (1 + x_1 + ... + x_6) on a 10^6 grid of [0, 1]^6, float32 (issue 13)."""
    grid = np.meshgrid(*[np.linspace(0, 1, 10)] * 6, indexing="ij")
    return (1.0 / (1.0 + sum(grid))).astype(np.float32)


@pytest.mark.parametrize("make, kwargs", [(issue_matrix, {"rel_eps": 1e-5}), (issue_matrix, {}),
                                          (issue_smooth, {"rel_eps": 1e-4}), (issue_smooth, {"max_rank": 8})])
def test_issue_examples(make, kwargs):
    tensor = make()
    tt = tt_svd(tensor, **kwargs)
    bound = kwargs.get("rel_eps", 0) * (1 + 1e-9)
    if "max_rank" in kwargs:
        bound = numpy_tt_svd_error(tensor, kwargs["max_rank"]) + allowance(np.float32, tensor.shape)
    elif not kwargs:
        bound = allowance(np.float32, tensor.shape)
    assert rel_error(tt, tensor) <= bound


# ---------------------------------------------------------------- tt_round

@st.composite
def ill_tts(draw):
    """``(tt, full tensor)``: an ill-conditioned tensor as an exact TT (float64 TT-SVD, redundant
    ranks kept), its cores cast to a dtype and scaled by random powers of ten (their product may
    be far outside the dtype's range)."""
    (tensor, shape), dtype = draw(ill_tensors()), draw(DTYPES)
    cores = [np.asarray(c) for c in tt_svd(tensor).factors]
    scales = [scale_of(dtype, draw(st.floats(-1, 1))) for _ in cores]
    cores = [(c * s).astype(dtype) for c, s in zip(cores, scales)]
    return TTTensor(cores), shape, dtype


@SETTINGS
@given(ill_tts(), rel_epses)
def test_tt_round_rel_eps_bound(case, rel_eps):
    tt, shape, dtype = case
    full, e = scaled_full(tt.factors)
    rounded = tt_round(tt, rel_eps=rel_eps)
    out, e_out = scaled_full(rounded.factors)
    assert all(r <= s for r, s in zip(rounded.rank, tt.rank))
    assert np.linalg.norm(np.ldexp(out, e_out - e) - full) <= rel_eps * (1 + 1e-9) * np.linalg.norm(full)


@SETTINGS
@given(ill_tts(), st.integers(1, 8))
def test_tt_round_max_rank_is_a_truncated_svd(case, cap):
    tt, shape, dtype = case
    full, e = scaled_full(tt.factors)
    rounded = tt_round(tt, max_rank=cap)
    out, e_out = scaled_full(rounded.factors)
    error = np.linalg.norm(np.ldexp(out, e_out - e) - full) / np.linalg.norm(full)
    assert error <= numpy_tt_svd_error(full, cap) + allowance(dtype, shape)


# ---------------------------------------------------------------- tt_matrix_svd and from_linear

@st.composite
def ill_matrices(draw):
    """``(matrix, row_shape, col_shape)``: 1 to 3 modes of sizes 1 to 6 each side."""
    d = draw(st.integers(1, 3))
    rows = tuple(draw(st.lists(st.integers(1, 6), min_size=d, max_size=d)))
    cols = tuple(draw(st.lists(st.integers(1, 6), min_size=d, max_size=d)))
    kind = draw(st.sampled_from(["geometric", "hilbert"]))
    return ill_matrix(math.prod(rows), math.prod(cols), draw(seeds), kind), rows, cols


def tensorised(matrix, rows, cols):
    d = len(rows)
    t = matrix.reshape(*rows, *cols).transpose([a for k in range(d) for a in (k, d + k)])
    return t.reshape([m * n for m, n in zip(rows, cols)])


@SETTINGS
@given(ill_matrices(), DTYPES, rel_epses, st.floats(-1, 1))
def test_tt_matrix_svd_bound_at_any_scale(case, dtype, rel_eps, exponent_fraction):
    matrix, rows, cols = case
    matrix = (matrix * scale_of(dtype, exponent_fraction)).astype(dtype)
    ttm = tt_matrix_svd(matrix, rows, cols, rel_eps=rel_eps)
    assert isinstance(ttm, TTMatrix)
    cores = [c.reshape(c.shape[0], -1, c.shape[-1]) for c in ttm.factors]
    assert rel_error(TTTensor(cores), tensorised(matrix, rows, cols)) <= rel_eps * (1 + 1e-9)


@SETTINGS
@given(ill_matrices(), DTYPES, st.integers(1, 8))
def test_tt_matrix_svd_max_rank_is_a_truncated_svd(case, dtype, cap):
    matrix, rows, cols = case
    matrix = matrix.astype(dtype)
    ttm = tt_matrix_svd(matrix, rows, cols, max_rank=cap)
    cores = [c.reshape(c.shape[0], -1, c.shape[-1]) for c in ttm.factors]
    tensor = tensorised(matrix, rows, cols)
    assert rel_error(TTTensor(cores), tensor) <= numpy_tt_svd_error(tensor, cap) + allowance(dtype, tensor.shape)


@st.composite
def weights(draw):
    """``(matrix, row_shape, col_shape)`` of a layer: 3 modes of sizes 2 to 8 each side."""
    rows = tuple(draw(st.lists(st.integers(2, 8), min_size=3, max_size=3)))
    cols = tuple(draw(st.lists(st.integers(2, 8), min_size=3, max_size=3)))
    kind = draw(st.sampled_from(["geometric", "hilbert"]))
    return ill_matrix(math.prod(rows), math.prod(cols), draw(seeds), kind, draw(st.sampled_from([-4, -8]))), rows, cols


@settings(max_examples=10, deadline=None)
@given(weights(), st.sampled_from([1e-3, 1e-4, 1e-5]))
def test_from_linear_float32_keeps_the_bound_and_the_ranks_of_float64(case, rel_eps):
    """A float32 layer of an ill-conditioned weight: the bound holds, and its ranks are not
    smaller than those the same weight gets in float64 (less one, for weights on the edge)."""
    matrix, rows, cols = case
    layers = {}
    for dtype in (torch.float32, torch.float64):
        linear = nn.Linear(math.prod(cols), math.prod(rows), dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(matrix))
        layers[dtype] = TTLinear.from_linear(linear, rel_eps=rel_eps, in_shape=cols, out_shape=rows)
    weight = np.asarray(matrix, dtype=np.float32)
    cores = [c.detach().reshape(c.shape[0], -1, c.shape[-1]).numpy() for c in layers[torch.float32].cores]
    assert rel_error(TTTensor(cores), tensorised(weight, rows, cols)) <= rel_eps * (1 + 1e-9)
    ranks32, ranks64 = layers[torch.float32].ranks, layers[torch.float64].ranks
    assert all(a >= b - 1 for a, b in zip(ranks32, ranks64)), (ranks32, ranks64)
