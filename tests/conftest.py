"""Fixtures shared by the whole suite (pytest finds them here; test files import nothing from
each other), and the hypothesis profile.

Under CI (``CI=true``), hypothesis draws the same examples on every run, so that a red build
points at a change and not at a newly drawn example; locally it keeps exploring.

``corpus``: the PTB corpus for the lm tests, read once per session through PTB_DIR. Without the
data the tests are skipped locally but fail on CI, where .ci/run sets PTB_DIR.
"""

import os

import pytest
from hypothesis import settings

from lm.data import Corpus, DataError

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
