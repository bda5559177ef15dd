"""The builders of compressed layers from a resolved spec: registered in ``lm.model``'s registries,
they rebuild the architecture of a compressed model from its config alone."""

import pytest
import torch

from lm.compression import builders
from lm.compression.surgery import compress_model
from lm.config import ModelConfig
from lm.model import DECODERS, EMBEDDINGS, LSTMS, LanguageModel
from tests.lm.compression.test_surgery import CASES, COUNTS  # every compressed architecture


def test_every_compressed_type_is_registered():
    assert {EMBEDDINGS[k] for k in ("low_rank", "groupreduce", "tt")} == {builders.build_embedding}
    assert {DECODERS[k] for k in ("low_rank", "groupreduce", "tt")} == {builders.build_decoder}
    assert {LSTMS[k] for k in ("lr_lstm", "tt_lstm")} == {builders.build_lstm}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_config_of_a_compressed_model_rebuilds_its_architecture(case, tiny_lm):
    compressed = compress_model(tiny_lm(vocab=120, hidden=16, init=0.3), counts=COUNTS, **CASES[case])
    rebuilt = LanguageModel(compressed.config)
    for part in ("embedding", "lstm", "decoder"):
        assert type(getattr(rebuilt, part)) is type(getattr(compressed, part))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in compressed.state_dict().items()}
    rebuilt.load_state_dict(compressed.state_dict())
    tokens = torch.randint(0, 120, (5, 2))
    torch.testing.assert_close(rebuilt.eval()(tokens)[0], compressed.eval()(tokens)[0], rtol=0, atol=0)


def test_tt_specs_record_the_ranks_and_shapes_they_were_built_with(tiny_lm):
    compressed = compress_model(tiny_lm(vocab=120, hidden=16), embedding={"type": "tt", "rank": 3},
                                decoder={"type": "tt", "rank": 2}, lstm={"type": "tt_lstm", "rank": 3})
    c = compressed.config
    assert c.embedding["ranks"] == list(compressed.embedding.ranks[1:-1])
    assert c.decoder["in_shape"] == list(compressed.decoder.in_shape)
    maps = c.lstm["maps"]
    assert len(maps) == 2 and all(len(layer) == 2 and "type" not in m for layer in maps for m in layer)
    assert maps[1][0]["in_features"] == 16 and maps[0][1]["ranks"] == list(compressed.lstm.layers[0].recurrent_map.ranks[1:-1])


@pytest.mark.parametrize("build, spec, message", [
    (lambda c, s: builders.build_embedding(c, s), {"type": "bogus"}, "unknown embedding type 'bogus'"),
    (lambda c, s: builders.build_decoder(c, 8, s), {"type": "dense"}, "unknown decoder type 'dense'"),
    (lambda c, s: builders.build_lstm(c, s), {"type": "tt"}, "unknown lstm type 'tt'"),
])
def test_an_unknown_type_is_refused(build, spec, message):
    with pytest.raises(ValueError, match=message):
        build(ModelConfig(vocab_size=20, hidden_size=8), spec)
