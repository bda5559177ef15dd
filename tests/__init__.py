"""The test suite, a package mirroring ``ttlayers/`` and ``lm/`` (``tests/ttlayers/test_lstm.py``
tests ``ttlayers/lstm.py``), so that two test files may share a basename and a test may import a
helper of another as ``tests.<path>``. Fixtures shared by all live in ``tests/conftest.py``."""
