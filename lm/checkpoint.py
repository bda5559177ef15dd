"""Checkpoints: the model artifact (config, vocabulary, weights) and the training state.

``lm.load(path)`` is the loading contract other code relies on: it returns the
``LanguageModel`` in eval mode, with ``model.vocab`` the list of words by id.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from .config import ModelConfig
from .model import LanguageModel


def _atomic_save(obj, path: Path) -> None:
    """Write through a temporary file so that a kill never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_model(model: LanguageModel, path: str | os.PathLike) -> int:
    """Save the model artifact; returns its size in bytes."""
    path = Path(path)
    _atomic_save({"config": asdict(model.config), "vocab": model.vocab, "state_dict": model.state_dict()}, path)
    return path.stat().st_size


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LanguageModel:
    """The language model saved at ``path``, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    blob = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} is not an lm model checkpoint (expected config, vocab and state_dict)")
    model = LanguageModel(ModelConfig(**blob["config"]), blob.get("vocab"))
    model.load_state_dict(blob["state_dict"])
    return model.to(map_location).eval()


def save_train_state(state: dict, path: str | os.PathLike) -> None:
    _atomic_save(state, Path(path))


def load_train_state(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
