"""Bytes of the safetensors artifact (lm.compression.export) against the retired LMZ1 format, on
the study's architectures at the small and medium sizes (the same tensors, values drawn at
random: the sizes depend on shapes, encodings and the zero pattern only), and of the
checkpoint against the retired ``torch.save`` checkpoint. Writes results/artifact_format.json.

    python -m lm.benchmarks.artifact_format

The retired exporter is read from the git history (``OLD_COMMIT``), where it last lived.
"""

from __future__ import annotations

import io
import subprocess
import sys
import types
from dataclasses import asdict

import torch

from ..checkpoint import save_model
from ..compression import export
from ..compression.prune import finalize, prune_model
from ..compression.surgery import compress_model
from ..config import preset
from ..model import LanguageModel
from ..results import ROOT, stamp, write_json
from ..study.methods import load_methods

OLD_COMMIT = "7d25122"  # the last commit with the LMZ1 exporter and torch.save checkpoints
METHODS = ["dense", "q8", "q8c", "prune_embdec90_ft_q8", "lr_all_ft_q8", "tt_paper_scratch_q8", "lr_tied_scratch_q8"]


def old_exporter() -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:lm/compression/export.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("lm.compression.export_lmz1")
    module.__package__ = "lm.compression"
    sys.modules[module.__name__] = module
    exec(compile(source, "export_lmz1.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module


def build(name: str, preset_name: str) -> tuple[LanguageModel, str | None]:
    cfg = preset(preset_name)
    known = {m.name: m for m in load_methods(preset_name)}
    m = known[name]
    quant = m.quant
    while m.base:
        m = known[m.base]
    torch.manual_seed(0)
    vocab = [f"w{i}" for i in range(cfg.model.vocab_size)]
    model = LanguageModel(cfg.model, vocab)
    model.init_uniform(0.1)
    counts = torch.arange(cfg.model.vocab_size, 0, -1)
    if m.train == "scratch":
        from dataclasses import replace

        shaped = LanguageModel(replace(cfg.model, **{**m.shape_fields(), "tie_weights": False}), vocab)
        config = replace(compress_model(shaped, counts=counts, **m.layer_specs()).config, **m.shape_fields())
        model = LanguageModel(config, vocab)
        model.init_uniform(0.01)
    elif m.compress:
        model = compress_model(model, counts=counts, **m.compress_kwargs())
    if m.prune:
        prune_model(model, m.prune.amount, m.prune.layers)
        finalize(model)
    return model.eval(), quant


def main() -> None:
    old = old_exporter()
    rows = []
    for preset_name in ("small", "medium"):
        for name in METHODS:
            model, quant = build(name, preset_name)
            new_bytes, info = export.export_bytes(model, quant)
            old_bytes = old.export_bytes(model, quant)[0]
            n = int.from_bytes(new_bytes[:8], "little")
            rows.append({"preset": preset_name, "method": name, "quant": quant, "new_bytes": len(new_bytes),
                         "old_bytes": len(old_bytes), "overhead_bytes": len(new_bytes) - len(old_bytes),
                         "new_header_bytes": 8 + n, "tensor_bytes": sum(info.tensor_bytes.values())})
            print(rows[-1])
        model, _ = build("dense", preset_name)
        buffer = io.BytesIO()
        torch.save({"config": asdict(model.config), "vocab": model.vocab, "state_dict": model.state_dict()}, buffer)
        path = ROOT / "results" / ".checkpoint.tmp"
        new = save_model(model, path)
        path.unlink()
        rows.append({"preset": preset_name, "method": "checkpoint", "quant": None, "new_bytes": new,
                     "old_bytes": buffer.tell(), "overhead_bytes": new - buffer.tell()})
        print(rows[-1])
    write_json(ROOT / "results" / "artifact_format.json",
               {**stamp({"methods": METHODS, "old_commit": OLD_COMMIT}, 0), "rows": rows})


if __name__ == "__main__":
    main()
