"""The import graph has no upward edge: ttlayers < lm core < lm.compression < the study.

Every import in every module is read from its source (``ast``, lazy imports inside functions
included), so that a lazy import back up is caught too. ``lm/__init__.py`` (the package's
front, which imports ``lm.compression`` so that ``lm.load`` reads every kind of model file) and
the command line ``lm/__main__.py`` sit on top of everything and are not ranked.
"""

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = {"lm", "lm.__main__"}
# the study, and lm's own benchmarks (of training speed and of the study's model files), on top
STUDY = ("lm.study", "lm.benchmarks", "lm.deploy_bench")
# deprecated aliases of moved modules (one release): each one imports its new home
ALIASES = {"lm.budget", "lm.ship", "lm.compression.report", "lm.compression.latency", "lm.compression.layers"}


# the deployment of compressed models (ONNX export, runtimes): on top of lm.compression, below the study
DEPLOY = ("lm.inference", "lm.onnx_export", "lm.runtime")


def rank(module: str) -> float:
    """0 ttlayers, 1 lm core, 2 lm.compression, 2.5 deployment, 3 the study."""
    if module.split(".")[0] == "ttlayers":
        return 0
    if module.startswith(STUDY):
        return 3
    if module.startswith("lm.compression"):
        return 2
    if module.startswith(DEPLOY):
        return 2.5
    return 1


def modules() -> dict[str, Path]:
    found = {}
    for package in ("ttlayers", "lm"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(module: str, path: Path) -> set[str]:
    """The modules of the project that ``module`` imports, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in ("lm", "ttlayers")}


MODULES = modules()


def test_the_modules_are_found():
    assert {"ttlayers.tt_matrix", "lm.model", "lm.compression.surgery", "lm.study.runner"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(set(MODULES) - TOP - ALIASES))
def test_no_module_imports_a_layer_above_its_own(module):
    upward = sorted(m for m in imports(module, MODULES[module]) if m not in TOP and rank(m) > rank(module))
    assert upward == [], f"{module} (layer {rank(module)}) imports {upward}"


def test_ttlayers_never_imports_lm():
    assert [m for m in MODULES if m.startswith("ttlayers") and any(i.startswith("lm") for i in imports(m, MODULES[m]))] == []


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_a_moved_module_keeps_its_old_name_for_a_release(alias):
    sys.modules.pop(alias, None)
    with pytest.warns(DeprecationWarning, match=f"{alias} moved to"):
        moved = importlib.import_module(alias)
    assert moved.__name__ != alias and moved.__name__ in MODULES  # the module itself, under its new name
