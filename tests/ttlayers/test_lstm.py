import copy
import io

import pytest
import torch
from torch import nn

from ttlayers import LSTM, LowRankLinear, TTLinear, tt_lstm
from ttlayers.lstm import LSTMLayer, is_plain_linear


def run_both(ref: nn.LSTM, ours: LSTM, batch_first: bool, with_state: bool, dtype):
    seq, batch = 5, 3
    x = torch.randn((batch, seq, ref.input_size) if batch_first else (seq, batch, ref.input_size), dtype=dtype)
    hx = None
    if with_state:
        h_size = ref.proj_size or ref.hidden_size
        hx = (torch.randn(ref.num_layers, batch, h_size, dtype=dtype), torch.randn(ref.num_layers, batch, ref.hidden_size, dtype=dtype))
    return ref(x, hx), ours(x, hx)


def assert_same(a, b, **tol):
    (out_a, (h_a, c_a)), (out_b, (h_b, c_b)) = a, b
    for p, q in ((out_a, out_b), (h_a, h_b), (c_a, c_b)):
        torch.testing.assert_close(p, q, **tol)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_from_torch_reproduces_nn_lstm(batch_first, with_state, proj_size, dtype):
    torch.manual_seed(0)
    ref = nn.LSTM(4, 6, num_layers=2, batch_first=batch_first, proj_size=proj_size, dtype=dtype)
    ours = LSTM.from_torch(ref)
    assert ours.output_size == (proj_size or 6)
    assert_same(*run_both(ref, ours, batch_first, with_state, dtype))


@pytest.mark.parametrize("proj_size", [0, 3])
def test_one_step_at_a_time_reproduces_nn_lstm_forward_and_gradients(proj_size, monkeypatch):
    """Token-by-token steps skip the fused kernel (dense and TT stacks alike) and still match
    nn.LSTM on the whole sequence, outputs, state and weight gradients."""
    torch.manual_seed(2)
    ref = nn.LSTM(4, 6, num_layers=2, proj_size=proj_size, dtype=torch.float64)
    ours = LSTM.from_torch(ref)
    kernel, calls = torch.lstm, []
    monkeypatch.setattr(torch, "lstm", lambda *args: calls.append(1) or kernel(*args))
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    expected = ref(x)
    state, outs = None, []
    for step in x:
        out, state = ours(step[None], state)
        outs.append(out)
    assert_same(expected, (torch.cat(outs), state))
    assert not calls
    (expected[0].square().sum() + expected[1][1].sum()).backward()
    (torch.cat(outs).square().sum() + state[1].sum()).backward()
    names = {"input_map.weight": "weight_ih", "input_map.bias": "bias_ih", "recurrent_map.weight": "weight_hh",
             "recurrent_map.bias": "bias_hh", "projection.weight": "weight_hr"}
    grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():  # layers.K.<map>.<param> is nn.LSTM's <param>_lK
        _, k, rest = name.split(".", 2)
        torch.testing.assert_close(p.grad, grads[f"{names[rest]}_l{k}"].grad)


def test_unbatched_input():
    torch.manual_seed(1)
    ref = nn.LSTM(4, 6, num_layers=2)
    ours = LSTM.from_torch(ref)
    x = torch.randn(5, 4)
    hx = (torch.randn(2, 6), torch.randn(2, 6))
    assert_same(ref(x, hx), ours(x, hx))


def test_per_step_path_matches_dense_reconstruction():
    """Factored maps (the per-step loop; the fused kernel where a TT recurrent map builds its
    weight) must equal nn.LSTM with the reconstructed weights."""
    torch.manual_seed(2)
    layers = [
        LSTMLayer(8, 6, TTLinear(8, 24, 2, dtype=torch.float64), LowRankLinear(6, 24, 3, dtype=torch.float64)),
        LSTMLayer(6, 6, nn.Linear(6, 24, dtype=torch.float64), TTLinear(6, 24, 3, dtype=torch.float64)),
    ]
    ours = LSTM(8, 6, 2, layers=layers)
    ref = nn.LSTM(8, 6, 2, dtype=torch.float64)
    with torch.no_grad():
        for k, layer in enumerate(layers):
            for name, m in (("ih", layer.input_map), ("hh", layer.recurrent_map)):
                getattr(ref, f"weight_{name}_l{k}").copy_(m.weight if isinstance(m, nn.Linear) else m.dense_weight())
                getattr(ref, f"bias_{name}_l{k}").copy_(m.bias)
    a, b = run_both(ref, ours, False, True, torch.float64)
    assert_same(a, b)
    (b[0].sum() + b[1][1].sum()).backward()  # gradients flow through the loop
    assert all(p.grad is not None for p in ours.parameters())


def test_tt_recurrent_map_builds_its_weight_once_per_sequence():
    """At the small model's sizes, 35 steps of TT contractions cost more than building W once;
    the loop must take one build per layer and still equal the reconstructed nn.LSTM."""
    torch.manual_seed(5)
    ref = nn.LSTM(200, 200, 2, dtype=torch.float64)
    ours = tt_lstm(LSTM.from_torch(ref), rank=16)
    with torch.no_grad():
        for k, layer in enumerate(ours.layers):
            for name, m in (("ih", layer.input_map), ("hh", layer.recurrent_map)):
                getattr(ref, f"weight_{name}_l{k}").copy_(m.dense_weight())
    builds = [0, 0]
    for k, layer in enumerate(ours.layers):
        full_matrix = layer.recurrent_map.full_matrix

        def counted(k=k, full_matrix=full_matrix):
            builds[k] += 1
            return full_matrix()
        layer.recurrent_map.full_matrix = counted
    x = torch.randn(35, 20, 200, dtype=torch.float64)
    out, _ = ours(x)
    assert builds == [1, 1]
    torch.testing.assert_close(out, ref(x)[0])


def test_tt_lstm_runs_the_fused_kernel_on_built_weights_with_the_loops_gradients(monkeypatch):
    """Where the recurrent map's plan builds W for the call (the small model's sizes), the layer
    builds the input map's W too and runs torch.lstm: same outputs, state and core gradients
    as the per-step loop."""
    torch.manual_seed(6)
    fused = tt_lstm(LSTM(200, 200, 2, dtype=torch.float64), rank=16)
    loop = copy.deepcopy(fused)
    for layer in loop.layers:
        monkeypatch.setattr(layer, "built_weights", lambda batch, seq_len: None)
    kernel, calls = torch.lstm, []
    monkeypatch.setattr(torch, "lstm", lambda *args: calls.append(len(args[2])) or kernel(*args))
    x = torch.randn(35, 20, 200, dtype=torch.float64)
    results = []
    for model in (fused, loop):
        out, (h, c) = model(x)
        (out.square().sum() + c.sum()).backward()
        results.append([out, h, c] + [p.grad for p in model.parameters()])
    assert calls == [4, 4]  # one fused call per layer, [w_ih, w_hh, b_ih, b_hh]; the loop made none
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


class Doubled(nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("proj_size", [0, 3])
def test_parametrized_linear_maps_keep_the_fused_kernel_and_match_nn_lstm(proj_size, monkeypatch):
    """A weight computed by torch.nn.utils.parametrize (QAT's fake quantizer, here a doubling) leaves a
    map a plain nn.Linear: the whole stack runs in one fused call, with nn.LSTM's outputs on the computed
    weights and the gradients reaching the stored ones through the parametrization. A subclass of
    nn.Linear, whose forward may differ, is not plain."""
    torch.manual_seed(3)
    ref = nn.LSTM(4, 6, num_layers=2, proj_size=proj_size, dtype=torch.float64)
    ours = LSTM.from_torch(ref)
    for layer in ours.layers:
        for m in layer.maps():
            nn.utils.parametrize.register_parametrization(m, "weight", Doubled())
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("weight"):
                p.mul_(2)
    assert all(is_plain_linear(m) for layer in ours.layers for m in layer.maps())
    assert not is_plain_linear(type("Sub", (nn.Linear,), {})(2, 3))
    kernel, calls = torch.lstm, []
    monkeypatch.setattr(torch, "lstm", lambda *args: calls.append(1) or kernel(*args))
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    expected, got = ref(x), ours(x)
    assert calls == [1]  # one call for the whole stack (nn.LSTM calls the kernel through _VF)
    assert_same(expected, got)
    (expected[0].square().sum() + expected[1][1].sum()).backward()
    (got[0].square().sum() + got[1][1].sum()).backward()
    original = ours.layers[1].recurrent_map.parametrizations.weight.original
    torch.testing.assert_close(original.grad, 2 * ref.weight_hh_l1.grad)  # d(2W)/dW = 2


def test_dense_state_dict_keys_are_unchanged_and_round_trip():
    ours = LSTM(4, 6, 2)
    keys = [f"layers.{k}.{m}.{p}" for k in range(2) for m in ("input_map", "recurrent_map") for p in ("weight", "bias")]
    assert sorted(ours.state_dict()) == sorted(keys)
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    copy = LSTM(4, 6, 2)
    copy.load_state_dict(torch.load(buffer))
    x = torch.randn(3, 2, 4)
    assert_same(ours(x), copy(x))


def test_bad_input_names_the_problem():
    ours = LSTM(4, 6, 2)
    with pytest.raises(ValueError, match="input features 4"):
        ours(torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="hx must be"):
        ours(torch.randn(3, 2, 4), (torch.zeros(1, 2, 6), torch.zeros(1, 2, 6)))
    with pytest.raises(ValueError, match="proj_size"):
        LSTM(4, 6, 1, proj_size=6)
    with pytest.raises(TypeError, match="LSTM holds torch.float32 parameters"):
        ours(torch.randn(3, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="hx must have the input's dtype and device"):
        ours(torch.randn(3, 2, 4), (torch.zeros(2, 2, 6, dtype=torch.float64), torch.zeros(2, 2, 6)))
    with pytest.raises(ValueError, match="sequence length of at least 1, got 0"):
        ours(torch.randn(0, 2, 4))


def test_prebuilt_layers_must_fit_the_stack():
    """Layers that do not chain, or whose biases the stack's fused kernel would misread (NaN outputs), are refused."""
    with pytest.raises(ValueError, match=r"read \[4, 4\] input features, but are fed \[4, 8\]"):
        LSTM(4, 8, 2, layers=[LSTMLayer(4, 8), LSTMLayer(4, 8)])
    with pytest.raises(ValueError, match="layer 0's maps have biases, but the LSTM has bias=False"):
        LSTM(4, 8, 2, bias=False, layers=[LSTMLayer(4, 8), LSTMLayer(8, 8)])
    with pytest.raises(ValueError, match="layer 0's maps lack biases, but the LSTM has bias=True"):
        LSTM(4, 8, layers=[LSTMLayer(4, 8, bias=False)])
    fitting = LSTM(4, 8, 2, bias=False, layers=[LSTMLayer(4, 8, bias=False), LSTMLayer(8, 8, bias=False)])
    assert torch.isfinite(fitting(torch.randn(3, 2, 4))[0]).all()


def test_reset_parameters_redraws_every_layer_within_nn_lstm_bound():
    ours = LSTM(4, 16, 2)
    before = [p.clone() for p in ours.parameters()]
    ours.reset_parameters()
    for old, new in zip(before, ours.parameters()):
        assert not torch.equal(old, new) and new.abs().max() <= 0.25  # 1 / sqrt(16)


def test_a_map_that_declares_the_planned_map_protocol_is_planned_for_all_steps():
    """Any module with PlannedMap's methods, not only TTLinear, gets one ``repeated`` call per sequence."""
    from ttlayers import PlannedMap

    class Planned(nn.Linear):
        def __init__(self, *args):
            super().__init__(*args)
            self.calls = []

        def dense_weight(self):
            return self.weight

        def uses_dense_weight(self, batch, calls=1):
            return False

        def repeated(self, batch, calls=1):
            self.calls.append((batch, calls))
            return self

    recurrent = Planned(6, 24)
    assert isinstance(recurrent, PlannedMap) and not isinstance(nn.Linear(6, 24), PlannedMap)
    layer = LSTMLayer(4, 6, LowRankLinear(4, 24, 2), recurrent)
    layer(torch.randn(5, 3, 4), (torch.zeros(3, 6), torch.zeros(3, 6)))
    assert recurrent.calls == [(3, 5)]
