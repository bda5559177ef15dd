"""Deprecated: moved to ``lm.study.report``; this alias goes in the next release."""

import sys
import warnings

from ..study import report as _moved

warnings.warn("lm.compression.report moved to lm.study.report", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
