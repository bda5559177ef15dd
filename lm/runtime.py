"""Deprecated: moved to ``lm.deploy.runtime``; this alias goes in the next release."""

import sys
import warnings

from .deploy import runtime as _moved

warnings.warn("lm.runtime moved to lm.deploy.runtime", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
