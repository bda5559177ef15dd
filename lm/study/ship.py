"""The trained models that travel with the code: the study front's compact artifacts in ``models/``.

``python -m lm ship`` takes the Pareto front of ``results/study_front.json`` (the models no
other is both smaller and better than), keeps those of at most ``MAX_MB``, copies each one's
artifact from its study run directory into ``models/<preset>_<method>.safetensors`` and writes
``models/manifest.json``: per model the file, its sha256 and size, the study's valid/test
perplexities, the method and its recipe (with its bases'), the study's commit, and a check value (the
perplexity of the first ``CHECK_TOKENS`` tokens of PTB's test split, measured on the shipped
file). Where the run that produced the shipped file is not the study's (a re-run on another
machine), the entry's ``valid_ppl``/``test_ppl``/``commit`` are that run's, from its
``result.json``, and the study's own figures stay beside them as ``study_*``. A front model
whose run directory no longer holds its artifact keeps the entry and file it was shipped with
(a new machine has the repository's ``models/`` but not the runs), checked by its sha256; one
shipped nowhere is listed with ``"file": null`` and a note, to be shipped when the study next
produces it. Files of models that left the front are removed from ``models/``.
``verify`` is what ``tests/project/test_models.py`` runs on every shipped entry. ``models_table`` is the
README's table of the shipped models, which ``python -m lm ship`` rewrites when it ships into ``models/``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..checkpoint import ARTIFACT_FILE, load
from ..data import Corpus
from ..evaluate import perplexity
from ..modelfile import sha256
from ..results import ROOT, write_block
from .methods import load_methods
from .report import MB, pareto_front

MODELS = ROOT / "models"
MAX_MB = 5.0
CHECK_TOKENS = 2000
NOT_ON_DISK = "not on disk: to be shipped when the study next produces it"


def front_models(front: dict, max_mb: float = MAX_MB) -> list[dict]:
    """The front's rows of at most ``max_mb`` MB, with the commit of the study that made each."""
    commits = {s["preset"]: s["commit"] for s in front.get("sources", [])}
    rows = []
    for r in pareto_front(front["rows"]):
        if r["size_mb"] > max_mb:
            continue
        p, _, method = r["name"].rpartition(":")
        rows.append({**r, "preset": p, "method": method, "commit": commits.get(p)})
    return rows


def recipe(preset_name: str, method: str) -> list[dict]:
    """The method's recipe, then its base's, down to one that starts from the dense model or scratch."""
    known = {m.name: m for m in load_methods(preset_name)}
    chain = [known[method]]
    while chain[-1].base:
        chain.append(known[chain[-1].base])
    return [{"preset": preset_name, **m.to_dict()} for m in chain]


def check_ppl(model, corpus: Corpus, tokens: int = CHECK_TOKENS) -> float:
    """The perplexity the manifest records and the test re-measures: the test split's first ``tokens``."""
    return perplexity(model, corpus.test[:tokens])


def ship(front: dict, run_dirs: dict[str, str | os.PathLike], out: str | os.PathLike = MODELS,
         corpus: Corpus | None = None, max_mb: float = MAX_MB) -> dict:
    """Copy the front's artifacts found in ``run_dirs`` (preset -> study run directory) into ``out``
    and write ``out/manifest.json``; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shipped = {e["name"]: e for e in _manifest(out)["models"]
               if e["file"] and (out / e["file"]).is_file() and sha256(out / e["file"]) == e["sha256"]}
    entries = []
    for r in front_models(front, max_mb):
        entry = {"name": r["name"], "file": None, "sha256": None, "size_bytes": None,
                 "study_size_bytes": r["size_bytes"], "valid_ppl": r["valid_ppl"], "test_ppl": r["test_ppl"],
                 "method": r["method"], "recipe": recipe(r["preset"], r["method"]), "commit": r["commit"],
                 "check": None, "note": NOT_ON_DISK}
        source = Path(run_dirs.get(r["preset"], "/nonexistent")) / r["method"] / ARTIFACT_FILE
        if source.is_file():
            result = source.parent / "result.json"
            run = json.loads(result.read_text()) if result.is_file() else r
            if (run["valid_ppl"], run["test_ppl"]) != (r["valid_ppl"], r["test_ppl"]):
                entry.update(valid_ppl=run["valid_ppl"], test_ppl=run["test_ppl"], commit=run.get("commit", "not recorded"),
                             study_valid_ppl=r["valid_ppl"], study_test_ppl=r["test_ppl"], study_commit=r["commit"])
            corpus = corpus or Corpus.load()  # before anything is copied: no PTB, no partial models/
            model = load(source)  # nor a file that is no model (ModelFileError naming it where the study left it)
            target = out / f"{r['preset']}_{r['method']}.safetensors"
            shutil.copyfile(source, target)
            entry.update(file=target.name, sha256=sha256(target), size_bytes=target.stat().st_size, note=None,
                         check={"split": "test", "tokens": CHECK_TOKENS, "ppl": check_ppl(model, corpus)})
        elif r["name"] in shipped:
            entry = {k: v for k, v in shipped[r["name"]].items() if not k.startswith("study_")}
            entry["study_size_bytes"] = r["size_bytes"]
            if (entry["valid_ppl"], entry["test_ppl"]) != (r["valid_ppl"], r["test_ppl"]):
                entry.update(study_valid_ppl=r["valid_ppl"], study_test_ppl=r["test_ppl"], study_commit=r["commit"])
        entries.append(entry)
    manifest = {"source": "results/study_front.json", "max_mb": max_mb, "models": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    kept = {e["file"] for e in entries}
    for old in out.glob("*.safetensors"):
        if old.name not in kept:
            old.unlink()
    return manifest


def models_table(manifest: dict) -> str:
    """The shipped models as a markdown table (model, file, MB, valid and test PPL, method), with a command
    that runs the first one."""
    lines = ["| model | file | MB | valid PPL | test PPL | method |", "|---|---|---|---|---|---|"]
    for e in manifest["models"]:
        where = f"`models/{e['file']}`" if e["file"] else e["note"]
        size = (e["size_bytes"] or e["study_size_bytes"]) / MB
        lines.append(f"| {e['name']} | {where} | {size:.3f} | {e['valid_ppl']:.2f} | {e['test_ppl']:.2f} | "
                     f"{e['recipe'][0]['description']} |")
    first = next((e["file"] for e in manifest["models"] if e["file"]), None)
    if first:
        lines += ["", "```bash", f'python -m lm predict models/{first} "the stock market" --top 5', "```"]
    return "\n".join(lines)


def write_readme(manifest: dict, readme: str | os.PathLike = ROOT / "README.md") -> None:
    """Rewrite the README's ``shipped_models`` table from ``manifest``."""
    write_block(Path(readme), "shipped_models", models_table(manifest))


def _manifest(out: Path) -> dict:
    path = out / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {"models": []}


def verify(entry: dict, models_dir: str | os.PathLike, corpus: Corpus) -> None:
    """Check a shipped entry: its file's sha256 and size, and its check perplexity (AssertionError otherwise)."""
    path = Path(models_dir) / entry["file"]
    assert path.stat().st_size == entry["size_bytes"], f"{path}: size differs from the manifest"
    assert sha256(path) == entry["sha256"], f"{path}: sha256 differs from the manifest"
    assert entry["size_bytes"] <= MAX_MB * MB, f"{path}: larger than {MAX_MB} MB"
    measured = check_ppl(load(path), corpus, entry["check"]["tokens"])
    assert abs(measured - entry["check"]["ppl"]) <= 1e-6 * entry["check"]["ppl"], (
        f"{path}: test[:{entry['check']['tokens']}] perplexity {measured}, manifest {entry['check']['ppl']}")
