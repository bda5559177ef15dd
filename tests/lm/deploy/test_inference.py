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
            got, _ = inference_form(model, tt)(tokens)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


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
