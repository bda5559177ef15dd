"""The compression study, on top of ``lm`` and ``lm.compression``.

* ``methods``: the study's methods as data (``configs/<preset>.toml``), read into typed methods;
* ``pipeline``: compress -> prune -> fine-tune -> export -> evaluate, one model;
* ``runner``: every method of a preset, cached per method and resumable (``lm study``);
* ``budget``: the best compression that fits a size budget (``lm compress``);
* ``report``: the study's tables, targets, Pareto front and plot;
* ``latency``: one-token CPU latency, eager and int8, side by side;
* ``ship``: the front's small artifacts, copied into ``models/`` with a manifest (``lm ship``).
"""

import warnings

from .methods import Method, load_finetune, load_methods, presets
from .runner import Study, StudyConfig, methods_for, run_study, scratch_model

__all__ = ["Method", "Study", "StudyConfig", "load_finetune", "load_methods", "methods_for", "run_study", "scratch_model"]


def __getattr__(name: str) -> object:
    """``FINETUNE``, deprecated: the fine-tuning recipes are in the study files (``lm.study.methods.load_finetune``)."""
    if name == "FINETUNE":
        warnings.warn("lm.study.FINETUNE is deprecated; use lm.study.methods.load_finetune(preset)", DeprecationWarning,
                      stacklevel=2)
        return {p: load_finetune(p).to_dict() for p in presets()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
