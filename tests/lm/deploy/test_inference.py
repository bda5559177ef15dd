"""lm.deploy.inference: the inference forms compute the same model."""

import pytest
import torch

from lm.deploy.inference import inference_form


@pytest.mark.parametrize("kind", ["dense", "tt", "lr", "tt_softmax", "lr_tied"])
def test_inference_form_computes_the_same_model(kind, tiny):
    model = tiny(kind)
    tokens = torch.randint(0, 60, (5, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = model(tokens)
        for tt in ("cores", "dense"):
            for fuse in (True, False):
                got, _ = inference_form(model, tt, fuse=fuse)(tokens)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("maps, tt, fused", [
    (("linear", "linear"), "cores", True),
    (("tt", "tt"), "dense", True),
    (("tt", "linear"), "dense", True),  # a TT map beside a dense one: built, then side by side
    (("tt", "linear"), "cores", False),  # TT cores kept: its product stays its own
    (("low_rank", "linear"), "dense", False),  # two products: not one matrix
])
def test_an_unrolled_layer_fuses_its_two_maps_when_both_are_one_matrix(maps, tt, fused):
    from ttlayers import LSTM, LowRankLinear, TTLinear
    from ttlayers.lstm import LSTMLayer

    from lm.deploy.inference import GateProduct, UnrolledLSTM

    torch.manual_seed(0)
    make = {"linear": lambda i: torch.nn.Linear(i, 32), "tt": lambda i: TTLinear(i, 32, rank=3),
            "low_rank": lambda i: LowRankLinear(i, 32, rank=3)}
    layers = [LSTMLayer(i, 8, input_map=make[maps[0]](i), recurrent_map=make[maps[1]](8)) for i in (6, 8)]
    lstm = LSTM(6, 8, num_layers=2, layers=layers).eval()
    unrolled = UnrolledLSTM(lstm, fuse=True, tt=tt)
    assert [isinstance(g, GateProduct) for g in unrolled.gates] == [fused, fused]
    x = torch.randn(4, 3, 6)
    with torch.no_grad():
        want, (h, c) = lstm(x)
        got, (h2, c2) = unrolled(x)
    for a, b in ((got, want), (h2, h), (c2, c)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tt_weights_built_keep_a_model_torch_int8_runs(tiny):
    from lm.compression.quantize import int8_dynamic

    model = tiny("tt")
    built = inference_form(model, "dense", unroll=False)
    tokens = torch.randint(0, 60, (4, 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(built(tokens)[0], model(tokens)[0], rtol=1e-5, atol=1e-5)
        assert int8_dynamic(built)(tokens)[0].shape == (4, 2, 60)


def test_an_unknown_tt_route_is_refused(tiny):
    with pytest.raises(ValueError, match="tt must be"):
        inference_form(tiny("dense"), "fused")
