"""``lr_lstm``, ``lr_decoder`` and ``tt_lstm``: an ``nn.LSTM`` (and its decoder) turned into a
``ttlayers.LSTM`` with low-rank projections or TT-matrix maps."""

import pytest
import torch
from torch import nn

from tests.ttlayers.test_lstm import assert_same, run_both
from ttlayers import TTLinear, lr_decoder, lr_lstm, tt_lstm


def _low_rank_lstm(hidden: int, rank: int, layers: int, vocab: int):
    """An nn.LSTM whose [W_{l+1}; V_l] (and [D; V_L]) have rank <= ``rank``, and its decoder."""
    ref = nn.LSTM(5, hidden, layers, dtype=torch.float64)
    decoder = nn.Linear(hidden, vocab, dtype=torch.float64)
    with torch.no_grad():
        for k in range(layers):
            basis = torch.randn(rank, hidden, dtype=torch.float64) / hidden**0.5
            getattr(ref, f"weight_hh_l{k}").copy_(torch.randn(4 * hidden, rank, dtype=torch.float64) @ basis)
            reader = getattr(ref, f"weight_ih_l{k + 1}") if k + 1 < layers else decoder.weight
            reader.copy_(torch.randn(reader.shape[0], rank, dtype=torch.float64) @ basis)
    return ref, decoder


def test_lr_lstm_is_exact_when_the_stacked_weights_have_that_rank():
    torch.manual_seed(3)
    ref, decoder = _low_rank_lstm(hidden=8, rank=3, layers=2, vocab=11)
    lr = lr_lstm(ref, 3, decoder=decoder)
    new_decoder = lr_decoder(decoder, lr)
    assert lr.proj_size == 3 and lr.output_size == 3 and new_decoder.in_features == 3
    assert all(layer.is_dense for layer in lr.layers)  # runs on the fused kernel
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    out_ref, _ = ref(x)
    out_lr, _ = lr(x)
    torch.testing.assert_close(new_decoder(out_lr), decoder(out_ref))
    assert sum(p.numel() for p in lr.parameters()) < sum(p.numel() for p in ref.parameters())


def test_lr_lstm_matches_torch_projection_lstm_and_has_orthonormal_projections():
    torch.manual_seed(4)
    ref = nn.LSTM(5, 8, 2)
    lr = lr_lstm(ref, 4)
    for layer in lr.layers:
        u = layer.projection.weight
        torch.testing.assert_close(u @ u.T, torch.eye(4), atol=1e-5, rtol=0)
    torch_proj = nn.LSTM(5, 8, 2, proj_size=4)
    torch_proj.load_state_dict({f"{kind}_l{k}": t for k in range(2) for kind, t in zip(
        ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"), lr.layers[k].flat_weights())})
    x = torch.randn(4, 3, 5)
    assert_same(torch_proj(x), lr(x))


@pytest.mark.filterwarnings("ignore:the exact TT-matrix")  # exact copies are the point here
def test_tt_lstm_full_rank_is_exact_and_low_rank_is_smaller():
    torch.manual_seed(5)
    ref = nn.LSTM(6, 4, 2, dtype=torch.float64)
    exact = tt_lstm(ref)
    assert all(isinstance(m, TTLinear) for layer in exact.layers for m in (layer.input_map, layer.recurrent_map))
    assert_same(*run_both(ref, exact, False, True, torch.float64), atol=1e-10, rtol=1e-8)
    small = tt_lstm(nn.LSTM(64, 64, 1), rank=2)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in nn.LSTM(64, 64, 1).parameters()) / 10


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="rank"):
        lr_lstm(nn.LSTM(4, 6, 2), 6)
    with pytest.raises(ValueError, match="without projections"):
        tt_lstm(nn.LSTM(4, 6, 1, proj_size=2))
