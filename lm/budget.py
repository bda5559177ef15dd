"""Deprecated: moved to ``lm.study.budget``; this alias goes in the next release."""

import sys
import warnings

from .study import budget as _moved

warnings.warn("lm.budget moved to lm.study.budget", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
