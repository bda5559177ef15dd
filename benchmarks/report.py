"""Results files for the benchmarks: JSON stamped with config, seed and commit, and the
markdown tables in docs/ regenerated from them (between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` markers), so that no number in the docs is typed in by hand."""

from __future__ import annotations

from pathlib import Path

from lm.results import ROOT, stamp, write_json

RESULTS = ROOT / "results"


def write_results(name: str, rows: list[dict], config: dict, seed: int | None) -> Path:
    """Write ``results/<name>.json`` holding the rows and their provenance."""
    return write_json(RESULTS / f"{name}.json", {**stamp(config, seed), "rows": rows})


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
