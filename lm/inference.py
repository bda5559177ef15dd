"""Deprecated: moved to ``lm.deploy.inference``; this alias goes in the next release."""

import sys
import warnings

from .deploy import inference as _moved

warnings.warn("lm.inference moved to lm.deploy.inference", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
