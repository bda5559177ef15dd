"""Fixtures of the lm tests (the study's, the benchmarks')."""

import pytest

from lm.data import Corpus


@pytest.fixture
def short_corpus(corpus, monkeypatch):
    """PTB with its streams cut to a few thousand tokens (``Corpus.load`` patched), so that the many
    training runs' evaluations stay cheap."""
    short = Corpus(corpus.vocab, corpus.train[:4000], corpus.valid[:1000], corpus.test[:1000])
    monkeypatch.setattr(Corpus, "load", classmethod(lambda cls, data_dir=None: short))
    return short
