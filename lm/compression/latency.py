"""Deprecated: moved to ``lm.study.latency``; this alias goes in the next release."""

import sys
import warnings

from ..study import latency as _moved

warnings.warn("lm.compression.latency moved to lm.study.latency", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
