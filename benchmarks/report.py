"""Results files of the library benchmarks: JSON in ``benchmarks/results/`` stamped with config,
seed, commit and machine, and the markdown tables in docs/ regenerated from them (between
``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers), so that no number in the docs is typed
in by hand. The benchmarks measure ``ttlayers`` alone: nothing here imports ``lm``."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


OUTPUTS = ("benchmarks/results", "results", "docs", "models", "README.md")  # written or described, not run


def git_commit() -> str:
    """The current commit, with ``-dirty`` appended when tracked files other than ``OUTPUTS`` have
    uncommitted changes (a benchmark run after another one wrote its results ran committed code)."""
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        changed = run("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":(exclude){p}" for p in OUTPUTS))
        return run("rev-parse", "--short", "HEAD") + ("-dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


CODE_COMMIT = git_commit()  # the code this process runs, read at import: not a commit made while it ran


def write_results(name: str, rows: list[dict], config: dict, seed: int | None) -> Path:
    """Write ``benchmarks/results/<name>.json``: the rows, config, seed, commit, date and machine."""
    machine = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    payload = {"config": config, "seed": seed, "commit": CODE_COMMIT, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "machine": machine, "rows": rows}
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def markdown_table(rows: list[dict], columns: list[str], fmt: dict[str, str] | None = None) -> str:
    """Rows as a markdown table; ``fmt`` maps a column to a format spec such as ``'.2f'``."""
    fmt = fmt or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [format(row[c], fmt[c]) if c in fmt and isinstance(row[c], (int, float)) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_doc(doc: str | Path, name: str, text: str) -> None:
    """Replace what stands between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in a docs page."""
    path = ROOT / doc
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    page = path.read_text()
    if begin not in page or end not in page:
        raise ValueError(f"{path} has no {begin} ... {end} markers")
    head, rest = page.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
