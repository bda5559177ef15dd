"""Deprecated: moved to ``lm.deploy.onnx_export``; this alias goes in the next release."""

import sys
import warnings

from .deploy import onnx_export as _moved

warnings.warn("lm.onnx_export moved to lm.deploy.onnx_export", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
