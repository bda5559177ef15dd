"""Results files of ``lm``: every number we publish is stamped with config, seed and commit, and the
language models' table in README.md and docs/lm.md is regenerated from ``results/lm_*.json``
(written by ``lm train``) and ``results/eval_*.json`` (``lm eval`` of the same checkpoint, re-run
later), between ``<!-- BEGIN lm_results -->`` and ``<!-- END lm_results -->``:

    python -m lm.results
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
PUBLISHED = {  # test perplexity: Zaremba et al. 2014 / TensorFlow PTB tutorial
    "small": "114.5 / 115.9", "medium": "82.7 / 82.07", "large": "78.4 / 78.29", "tiny": "-",
}


OUTPUTS = ("results", "docs", "models", "README.md")  # what runs write or describe: no part of the code that ran


def git_commit() -> str:
    """The current commit, with ``-dirty`` appended when tracked files other than ``OUTPUTS`` have
    uncommitted changes (a run started while results are being regenerated ran committed code)."""
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        sha = run("rev-parse", "--short", "HEAD")
        changed = run("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":(exclude){p}" for p in OUTPUTS))
        return sha + ("-dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


CODE_COMMIT = git_commit()  # the code this process runs: its modules were read at import, not at a later commit


def stamp(config: dict, seed: int | None) -> dict:
    """Config, seed, commit (``CODE_COMMIT``: a run that lasts hours reports the code it started with, not a
    commit made while it ran), date and machine of a run."""
    return {
        "config": config,
        "seed": seed,
        "commit": CODE_COMMIT,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib figure (laid out tight) to ``path``, creating its folder, and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def write_report(out: str | os.PathLike, payload: dict, markdown: Callable[[dict], str]) -> str:
    """A benchmark's results: ``payload`` as ``<out>.json`` and ``markdown(payload)`` as ``<out>.md`` (``out``
    without suffix); returns the markdown."""
    text = markdown(payload)
    write_json(f"{out}.json", payload)
    Path(f"{out}.md").write_text(text)
    return text


def lm_table() -> str:
    """The markdown table: one row per ``results/lm_<preset>.json``, with its ``eval_<preset>.json``
    re-check (test perplexity and commit) in the last column. A run continued from a checkpoint alone
    (``lm train --continue-from``) has the speed, hours and device of its continuation, which says so."""
    lines = ["| preset | valid PPL | test PPL | published test PPL | parameters | checkpoint MB | tokens/s | hours "
             "| device | seed | commit | lm eval test PPL (commit) |", "|" + "---|" * 12]
    for path in sorted(RESULTS.glob("lm_*.json")):
        r = json.loads(path.read_text())
        name = path.stem.removeprefix("lm_")
        recheck = RESULTS / f"eval_{name}.json"
        again = json.loads(recheck.read_text()) if recheck.is_file() else None
        after = r.get("continued_after_epoch")
        device = r["device"] + (f" (epochs {after + 1}-{r['history'][-1]['epoch']}, continued after epoch {after}: "
                                "tokens/s and hours are theirs)" if after is not None else "")
        cells = [name, f"{r['valid_ppl']:.2f}", f"{r['test_ppl']:.2f}", PUBLISHED.get(name, "-"), f"{r['parameters']:,}",
                 f"{r['checkpoint_bytes'] / 1e6:.1f}", f"{r['tokens_per_s']:.0f}", f"{r['wall_time_s'] / 3600:.2f}",
                 device, r["seed"], r["commit"], f"{again['test_ppl']:.2f} ({again['commit']})" if again else "-"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def write_block(doc: Path, name: str, text: str) -> None:
    """Replace what stands between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in ``doc`` by ``text``
    (ValueError when ``doc`` lacks the markers)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    page = doc.read_text()
    if begin not in page or end not in page:
        raise ValueError(f"{doc} has no {begin} ... {end} markers")
    head, rest = page.split(begin, 1)
    doc.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def main() -> None:
    """Rewrite the ``lm_results`` table between its markers in docs/lm.md and README.md."""
    table = lm_table()
    for doc in (ROOT / "docs" / "lm.md", ROOT / "README.md"):
        write_block(doc, "lm_results", table)
    print(table)


if __name__ == "__main__":
    main()
