"""The import graph has no upward edge: ttlayers < lm core < lm.compression < lm.deploy < the study.

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
# the study, and lm's own benchmarks (training speed, the study's model files, the deployment of its shapes), on top
STUDY = ("lm.study", "lm.benchmarks")
# the deployment of compressed models (ONNX export, runtimes): on top of lm.compression, below the study
DEPLOY = ("lm.deploy",)
# deprecated aliases of moved modules (one release): each one imports its new home
ALIASES = {"lm.budget", "lm.ship", "lm.compression.report", "lm.compression.latency", "lm.compression.layers",
           "lm.inference", "lm.onnx_export", "lm.runtime", "lm.deploy_bench"}


def _under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def rank(module: str) -> float:
    """0 ttlayers, 1 lm core, 2 lm.compression, 2.5 lm.deploy, 3 the study and lm's benchmarks."""
    if _under(module, ("ttlayers",)):
        return 0
    if _under(module, STUDY):
        return 3
    if _under(module, ("lm.compression",)):
        return 2
    if _under(module, DEPLOY):
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


def test_the_layers_are_ranked_bottom_up():
    ladder = ["ttlayers.tt_linear", "lm.model", "lm.compression.export", "lm.deploy.onnx_export", "lm.study.latency",
              "lm.benchmarks.deploy"]
    assert [rank(m) for m in ladder] == sorted(rank(m) for m in ladder) and rank(ladder[2]) < rank(ladder[3]) < rank(ladder[4])
    assert not _under("lm.deploy_bench", DEPLOY) and not _under("lm.studying", STUDY)  # packages, not name prefixes


def test_an_upward_import_is_found(tmp_path):
    path = tmp_path / "onnx_export.py"
    path.write_text("import torch\nfrom ..compression.export import export\n\ndef f():\n    from ..study.latency import compare\n")
    found = imports("lm.deploy.onnx_export", path)
    assert sorted(m for m in found if rank(m) > rank("lm.deploy.onnx_export")) == ["lm.study.latency", "lm.study.latency.compare"]


def test_ttlayers_never_imports_lm():
    assert [m for m in MODULES if m.startswith("ttlayers") and any(i.startswith("lm") for i in imports(m, MODULES[m]))] == []


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_a_moved_module_keeps_its_old_name_for_a_release(alias):
    sys.modules.pop(alias, None)
    with pytest.warns(DeprecationWarning, match=f"{alias} moved to"):
        moved = importlib.import_module(alias)
    assert moved.__name__ != alias and moved.__name__ in MODULES  # the module itself, under its new name


def test_the_old_benchmark_command_still_runs():
    import os
    import subprocess

    run = subprocess.run([sys.executable, "-m", "lm.deploy_bench", "--help"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and "python -m lm.benchmarks.deploy" in run.stdout
    assert "lm.deploy_bench moved to lm.benchmarks.deploy" in run.stderr
