"""lm.study.pipeline.run: compress -> prune -> fine-tune -> export -> evaluate, every number the decoded artifact's."""

import copy

import pytest
import torch

from lm.study import pipeline
from lm.compression.export import load_artifact
from lm.evaluate import perplexity
from lm.study.methods import Prune


def test_run_compresses_a_copy_and_scores_the_shipped_artifact(tmp_path, tiny_lm):
    start = tiny_lm(vocab=50, hidden=12, layers=1, init=0.1)
    before = copy.deepcopy(start.state_dict())
    stream = torch.randint(0, 50, (300,), generator=torch.Generator().manual_seed(1))
    done = pipeline.run(start, tmp_path, valid=stream[:150], test=stream[150:], quant="q8",
                        layers={"decoder": {"type": "low_rank", "rank": 3}}, prune=Prune(0.5, ["embedding"]))
    assert all(torch.equal(v, before[k]) for k, v in start.state_dict().items())  # start untouched
    assert done.artifact.path == tmp_path / "artifact.safetensors" and done.artifact.path.stat().st_size == done.artifact.bytes
    decoded = load_artifact(done.artifact.path)
    assert decoded.config.decoder == {"type": "low_rank", "rank": 3}
    assert float((decoded.embedding.weight == 0).float().mean()) >= 0.5
    assert done.valid_ppl == perplexity(decoded, stream[:150]) and done.test_ppl == perplexity(decoded, stream[150:])
    assert done.valid_ppl != perplexity(start, stream[:150])  # the compressed model's, not the start's


def test_fine_tuning_needs_the_preset_it_trains_on(tmp_path, tiny_lm):
    with pytest.raises(ValueError, match="base="):
        pipeline.run(tiny_lm(vocab=50, hidden=12, layers=1, init=0.1), tmp_path, valid=torch.zeros(5, dtype=torch.long), test=torch.zeros(5, dtype=torch.long),
                     finetune=pipeline.Finetune(1, 0.5, 0.0))
