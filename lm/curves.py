"""Training curves: a run's per-epoch history (``lm.train``), read while it trains or after, as a
markdown table and a plot.

    python -m lm curve runs/medium_awd --out curve.png

A run directory's ``train_state.safetensors`` holds the history of every finished epoch (it is
rewritten at each epoch's end, so a run in progress can be read); a finished run's results JSON
holds it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import TRAIN_STATE_FILE, load_train_state
from .results import save_figure


def read_history(path: str | os.PathLike) -> list[dict]:
    """The per-epoch history (``epoch``, ``lr``, ``train_ppl``, ``valid_ppl``, ``tokens_per_s``, ``device`` and, with
    averaged SGD, ``averaged``) of the run at ``path``: a run directory (its training state, else its
    ``results.json``), a training-state file or a results JSON."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAIN_STATE_FILE if (path / TRAIN_STATE_FILE).is_file() else path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state or results JSON to read a history from")
    if path.suffix == ".json":
        history = json.loads(path.read_text()).get("history")
        if not isinstance(history, list):
            raise ValueError(f"{path}: a results JSON without a 'history' list")
        return history
    return load_train_state(path)["history"]


def table(history: list[dict]) -> str:
    """The history as a markdown table, one row per epoch."""
    averaged = any("averaged" in h for h in history)
    lines = ["| epoch | lr | train PPL | valid PPL | tokens/s |" + (" averaged |" if averaged else ""),
             "|---|---|---|---|---|" + ("---|" if averaged else "")]
    for h in history:
        lines.append(f"| {h['epoch']} | {h['lr']:.4g} | {h['train_ppl']:.2f} | {h['valid_ppl']:.2f} | "
                     f"{h['tokens_per_s']:.0f} |" + (f" {'yes' if h.get('averaged') else 'no'} |" if averaged else ""))
    lines += [f"\nContinued after epoch {h['epoch']} from its checkpoint alone (sha256 {h['continued_from'][:12]}...): "
              "SGD restarted from those weights, averaging anew." for h in history if h.get("continued_from")]
    return "\n".join(lines)


def draw(ax, name: str, history: list[dict], colour, train: bool = True, line: str = "-") -> None:
    """One run's validation perplexity per epoch on ``ax`` (in ``line``, solid by default; training dashed
    if ``train``), a square where its weights are first averaged, and a triangle at each epoch whose
    checkpoint the run continued from with its training state lost (``continued_from``,
    ``lm.train.continue_state``)."""
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["valid_ppl"] for h in history], color=colour, ls=line, marker=".", label=f"{name}: valid")
    if train:
        ax.plot(epochs, [h["train_ppl"] for h in history], color=colour, ls="--", label=f"{name}: train")
    first = next((h for h in history if h.get("averaged")), None)
    if first is not None:
        ax.scatter([first["epoch"]], [first["valid_ppl"]], color=colour, marker="s", s=40, zorder=3,
                   label=f"{name}: averaging from here")
    restarts = [h for h in history if h.get("continued_from")]
    if restarts:
        ax.scatter([h["epoch"] for h in restarts], [h["valid_ppl"] for h in restarts], color=colour, marker="v",
                   s=60, zorder=3, label=f"{name}: continued from this epoch's checkpoint")


def plot(runs: dict[str, list[dict]], path: str | os.PathLike, title: str = "training curves") -> Path:
    """Validation (solid) and training (dashed) perplexity per epoch of each run, log scale; a marker
    where a run's weights are first averaged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for k, (name, history) in enumerate(runs.items()):
        draw(ax, name, history, plt.get_cmap("tab10")(k % 10))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
