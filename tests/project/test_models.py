"""The models shipped in models/ load, match their manifest, and evaluate to its perplexities
(the shipping tool itself: tests/lm/study/test_ship.py)."""

import json
from pathlib import Path

import pytest

from lm.checkpoint import load
from lm.evaluate import perplexity
from lm.study.ship import MODELS, NOT_ON_DISK, front_models, verify

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = json.loads((MODELS / "manifest.json").read_text())


def test_the_manifest_lists_the_front():
    front = json.loads((ROOT / "results" / "study_front.json").read_text())
    assert [e["name"] for e in MANIFEST["models"]] == [r["name"] for r in front_models(front)]
    for e in MANIFEST["models"]:
        assert e["file"] or e["note"] == NOT_ON_DISK


@pytest.mark.parametrize("entry", MANIFEST["models"], ids=[e["name"] for e in MANIFEST["models"]])
def test_shipped_model_matches_its_manifest(entry, corpus):
    if entry["file"] is None:
        pytest.skip(f"{entry['name']}: {entry['note']}")
    verify(entry, MODELS, corpus)


@pytest.mark.slow
@pytest.mark.parametrize("entry", MANIFEST["models"], ids=[e["name"] for e in MANIFEST["models"]])
def test_shipped_model_gives_the_reports_perplexities(entry, corpus):
    if entry["file"] is None:
        pytest.skip(f"{entry['name']}: {entry['note']}")
    model = load(MODELS / entry["file"])
    assert perplexity(model, corpus.test) == pytest.approx(entry["test_ppl"], rel=1e-6)
    assert perplexity(model, corpus.valid) == pytest.approx(entry["valid_ppl"], rel=1e-6)
