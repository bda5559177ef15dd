"""The documentation site builds with ``mkdocs build --strict``: every relative link between README,
docs/ and results/ resolves, every API reference object exists and its docstring parses; and the
reference documents every public name of ttlayers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_the_site_builds_strict(site):
    assert (site / "index.html").is_file()  # README.md is the home page
    for page in ("docs/layers", "docs/reference/ttlayers", "docs/reference/lm", "results/study_small"):
        assert (site / page / "index.html").is_file(), page


def test_the_reference_documents_every_public_name(site):
    import ttlayers

    if not hasattr(ttlayers, "__all__"):
        pytest.skip("ttlayers declares no __all__, so the reference has no public names to render")
    page = (site / "docs" / "reference" / "ttlayers" / "index.html").read_text()
    # a name is rendered under ttlayers or, when its module shadows it for griffe, under its module
    anchors = {name: {f"ttlayers.{name}", f"{getattr(ttlayers, name).__module__}.{name}"} for name in ttlayers.__all__}
    assert [name for name, ids in anchors.items() if not any(f'id="{i}"' in page for i in ids)] == []
