"""Deprecated: moved to ``lm.study.ship``; this alias goes in the next release."""

import sys
import warnings

from .study import ship as _moved

warnings.warn("lm.ship moved to lm.study.ship", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
