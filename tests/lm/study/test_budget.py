"""Compression to a size budget: the search for the mildest setting of each family that fits, and
the ``compress`` command end to end on a shrunken corpus."""

import json

import pytest
import torch

from lm.__main__ import main
from lm.checkpoint import save_model
from lm.compression.export import artifact_size, load_artifact
from lm.compression.prune import finalized_copy
from lm.config import ModelConfig
from lm.model import LanguageModel
from lm.study.budget import families, fit
from lm.study.report import MB


@pytest.mark.slow
def test_compress_to_a_budget(tmp_path, short_corpus, capsys):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(hidden_size=24, num_layers=1), short_corpus.vocab)
    model.init_uniform(0.1)
    save_model(model, tmp_path / "dense.safetensors")
    dense_mb = sum(p.numel() for p in model.parameters()) * 4 / MB
    budget = round(dense_mb / 6, 3)
    main(["compress", str(tmp_path / "dense.safetensors"), "--budget-mb", str(budget), "--out", str(tmp_path / "out"),
          "--finetune-epochs", "1", "--search-tokens", "500", "--quiet"])
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["size_bytes"] <= budget * MB
    assert (tmp_path / "out" / "artifact.safetensors").stat().st_size == result["size_bytes"]
    assert {c["family"] for c in result["candidates"]} >= {"pruned", "groupreduce"}
    assert load_artifact(tmp_path / "out" / "artifact.safetensors").vocab == short_corpus.vocab
    assert '"size_mb"' in capsys.readouterr().out


@pytest.mark.parametrize("quant", [None, "q8"])
def test_budget_search_finds_the_mildest_fitting_setting(quant, tiny_lm):
    model = tiny_lm(vocab=300, hidden=16, layers=1, init=0.1)
    counts = torch.arange(300, 0, -1)
    dense_bytes = artifact_size(model, quant)
    budget = dense_bytes // 3
    for family in families(16, 300):
        found = fit(family, model, counts, budget, quant)
        if found is None:  # even the strongest setting is too large
            assert artifact_size(finalized_copy(family.build(model, family.lo, counts)), quant) > budget
            continue
        keep, compressed, size = found
        assert size <= budget and artifact_size(finalized_copy(compressed), quant) == size
        if keep < family.hi:  # a little milder no longer fits
            step = 1 if family.integer else keep * 0.3
            milder = family.build(model, min(family.hi, keep + step), counts)
            assert artifact_size(finalized_copy(milder), quant) > budget
