"""Deprecated: moved to ``lm.compression.builders``; this alias goes in the next release."""

import sys
import warnings

from . import builders as _moved

warnings.warn("lm.compression.layers moved to lm.compression.builders", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
