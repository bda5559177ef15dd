"""Fixtures shared by the whole suite (pytest finds them here; test files import nothing from
each other), and the hypothesis profile.

Under CI (``CI=true``), hypothesis draws the same examples on every run, so that a red build
points at a change and not at a newly drawn example; locally it keeps exploring.

``corpus``: the PTB corpus for the lm tests, read once per session through PTB_DIR. Without the
data the tests are skipped locally but fail on CI, where .ci/run sets PTB_DIR.

``tiny_lm``: a builder of small seeded language models, for the tests that need a model but no
training.

``checkout``: a git checkout with one commit, of a code file and a file in each folder that runs write
(results, benchmark results, docs, models, the README), for the tests of the commit stamps.

The suite runs with freed memory retained (``lm.allocator``), as the ``lm`` command does.
"""

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from lm.allocator import retain_freed_memory
from lm.config import ModelConfig
from lm.data import Corpus, DataError
from lm.model import LanguageModel

retain_freed_memory()
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    try:
        return Corpus.load()
    except DataError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PTB not available: {err}")


@pytest.fixture(scope="session")
def tiny_lm() -> Callable[..., LanguageModel]:
    """``tiny_lm(vocab=60, hidden=8, layers=2, init=0.2, **config)``: a ``LanguageModel`` over the
    words ``w0 .. w{vocab-1}``, its parameters drawn uniformly in ``[-init, init]`` after
    ``torch.manual_seed(0)``, in eval mode; ``config`` goes to ``ModelConfig``."""

    def make(vocab: int = 60, hidden: int = 8, layers: int = 2, init: float = 0.2, **config) -> LanguageModel:
        torch.manual_seed(0)
        model = LanguageModel(ModelConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers, **config),
                              [f"w{i}" for i in range(vocab)])
        model.init_uniform(init)
        return model.eval()

    return make


CHECKOUT_FILES = ("lm/train.py", "results/lm_tiny.json", "benchmarks/results/bench.json", "docs/lm.md",
                  "models/manifest.json", "README.md")


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git checkout in ``tmp_path`` of ``CHECKOUT_FILES``, each holding ``1``, committed."""
    for name in CHECKOUT_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("1\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "first"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
                       cwd=tmp_path, check=True, capture_output=True)
    return tmp_path
