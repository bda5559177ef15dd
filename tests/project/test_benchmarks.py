"""benchmarks/ measures ttlayers alone: no file in it imports lm (the study's package); its results name
the commit of the code that ran."""

import ast
import re
from pathlib import Path

from benchmarks import report

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the modules that ``path`` imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_benchmark_imports_lm():
    files = sorted(BENCHMARKS.rglob("*.py"))
    assert len(files) >= 3, f"expected the benchmark scripts in {BENCHMARKS}"
    offenders = [str(f.relative_to(BENCHMARKS.parent)) for f in files if "lm" in imported_modules(f)]
    assert not offenders, f"these benchmark files import lm: {offenders}"


def test_the_check_sees_imports(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("import os\nfrom lm.results import stamp\nimport ttlayers.lstm as t\nfrom . import y\n")
    assert imported_modules(path) == {"os", "lm", "ttlayers"}


def test_a_results_commit_is_dirty_when_code_changed_not_other_results_or_docs(checkout, monkeypatch):
    monkeypatch.setattr(report, "ROOT", checkout)
    for name in ("benchmarks/results/bench.json", "results/lm_tiny.json", "docs/lm.md", "README.md"):
        (checkout / name).write_text("2\n")
    assert re.fullmatch(r"[0-9a-f]{7,}", report.git_commit())
    (checkout / "lm/train.py").write_text("2\n")
    assert report.git_commit().endswith("-dirty")
