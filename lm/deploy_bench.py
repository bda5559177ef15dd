"""Deprecated: moved to ``lm.benchmarks.deploy`` (``python -m lm.benchmarks.deploy``); this alias goes in the
next release. ``python -m lm.deploy_bench`` still runs the benchmark."""

import sys
import warnings

from .benchmarks import deploy as _moved

if __name__ == "__main__":
    warnings.warn("lm.deploy_bench moved to lm.benchmarks.deploy: run python -m lm.benchmarks.deploy",
                  DeprecationWarning, stacklevel=1)
    _moved.main()
else:
    warnings.warn("lm.deploy_bench moved to lm.benchmarks.deploy", DeprecationWarning, stacklevel=2)
    sys.modules[__name__] = _moved
