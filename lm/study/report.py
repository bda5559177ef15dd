"""The study's report: the paper's published numbers beside ours, the targets, and a Pareto plot.

Published figures are those of Grachev, Ignatov & Savchenko (2017, 2019), Tables 1-2;
every other number comes from the study's results rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

MB = 1e6  # the paper's megabytes: its 18.6 MB small model is 4.65M float32 numbers

# ``preset``: the study preset whose rows sit beside the published one; ``ours``: those rows' method names
PAPER = [
    {"key": "small", "model": "small 200-200", "size_mb": 18.6, "test_ppl": 117.66, "preset": "small",
     "ours": ("dense",)},
    {"key": "pruned", "model": "output layer pruned 90%, no retraining", "size_mb": 5.5, "test_ppl": 149.3,
     "preset": "small", "ours": ("prune_dec90",)},
    {"key": "pruned_ft", "model": "output layer pruned 90%, retrained", "size_mb": 5.5, "test_ppl": 121.1,
     "preset": "small", "ours": ("prune_dec90_ft",)},
    {"key": "q8", "model": "8-bit quantization", "size_mb": 4.7, "test_ppl": 118.2, "preset": "small", "ours": ("q8",)},
    {"key": "medium", "model": "medium 650-650", "size_mb": 79.1, "test_ppl": 82.07, "preset": "medium",
     "ours": ("dense",)},
    {"key": "lr_lstm_650", "model": "LR-LSTM 650-650, r=128", "size_mb": 16.8, "test_ppl": 92.89, "preset": "medium",
     "ours": ("lr_paper_scratch", "lr_lstm_ft", "lr_lstm_scratch")},
    {"key": "tt_lstm_600", "model": "TT-LSTM 600-600", "size_mb": 50.4, "test_ppl": 168.64, "preset": "medium",
     "ours": ("tt_paper_scratch", "tt_lstm_ft", "tt_lstm_scratch", "tt_lstm_scratch_lr025")},
    {"key": "lr_lstm_1500", "model": "LR-LSTM 1500-1500", "size_mb": 94.9, "test_ppl": 89.46, "preset": "large",
     "ours": ("lr_paper_scratch", "lr_lstm_ft", "lr_lstm_scratch")},
]


def pareto_front(rows: list[dict], x: str = "size_mb", y: str = "test_ppl") -> list[dict]:
    """Rows not dominated in (smaller ``x``, lower ``y``), sorted by ``x``."""
    front, best = [], math.inf
    for row in sorted(rows, key=lambda r: (r[x], r[y])):
        if row[y] < best:
            front.append(row)
            best = row[y]
    return front


def targets(rows: list[dict], preset: str) -> list[dict]:
    """The issue's targets for ``preset``: measured value, met or not, and the gap."""
    by = {r["name"]: r for r in rows}
    out = []

    def add(target: str, row: dict | None, ok: bool | None, gap: str) -> None:
        out.append({"target": target, "model": row["label"] if row else "not run",
                    "measured": f"{row['test_ppl']:.2f} PPL, {row['size_mb']:.2f} MB" if row else "-",
                    "met": "yes" if ok else ("no" if ok is not None else "not run"), "gap": gap if ok is False else ""})

    def best_under(mb: float, family: str = "") -> dict | None:
        fit = [r for r in rows if r["size_mb"] <= mb and family in r["family"]]
        return min(fit, key=lambda r: r["test_ppl"]) if fit else None

    def bar(target: str, r: dict | None, ppl: float) -> None:
        add(target, r, r["test_ppl"] <= ppl if r else None, f"{r['test_ppl'] - ppl:+.2f} PPL" if r else "")

    if preset == "small":
        bar("pruned 90% + retrained <= 121.1 PPL", by.get("prune_dec90_ft"), 121.1)
        r = by.get("q8")
        ok = r and r["test_ppl"] <= 118.2 and r["size_mb"] <= 4.7
        add("8-bit <= 118.2 PPL at <= 4.7 MB", r, ok,
            f"{r['test_ppl'] - 118.2:+.2f} PPL, {r['size_mb'] - 4.7:+.3f} MB" if r else "")
        dense, r = by.get("dense"), best_under(4.7)
        if dense:
            ok = r is not None and r["test_ppl"] < dense["test_ppl"]
            add(f"<= 4.7 MB and better than dense ({dense['test_ppl']:.2f})", r, ok,
                f"{r['test_ppl'] - dense['test_ppl']:+.2f} PPL" if r else "nothing <= 4.7 MB")
        control = by.get("dense_ft")
        if control:  # fine-tuning alone (its dropout) improves the dense model: the fair bar for fine-tuned rows
            ok = r is not None and r["test_ppl"] < control["test_ppl"]
            add(f"(control) <= 4.7 MB and better than dense fine-tuned alike ({control['test_ppl']:.2f})", r, ok,
                f"{r['test_ppl'] - control['test_ppl']:+.2f} PPL" if r else "nothing <= 4.7 MB")
    if preset == "medium":
        bar("LR-LSTM <= 92.9 PPL at <= 16.8 MB", best_under(16.8, "LR-LSTM"), 92.9)
        bar("TT-LSTM <= 100 PPL at <= 12 MB", best_under(12.0, "TT-LSTM"), 100.0)
    r = best_under(5.0)
    add("moonshot: <= 5 MB at <= 85 PPL", r, r is not None and r["test_ppl"] <= 85,
        f"{r['test_ppl'] - 85:+.2f} PPL" if r else "nothing <= 5 MB")
    front = pareto_front(rows)
    beaten = [p for p in PAPER if any(r["size_mb"] <= p["size_mb"] and r["test_ppl"] <= p["test_ppl"] for r in front)]
    add("Pareto front dominates every published point", None, len(beaten) == len(PAPER), "")
    out[-1].update(model="front", measured=f"{len(beaten)}/{len(PAPER)} published points dominated",
                   gap=", ".join(p["model"] for p in PAPER if p not in beaten))
    return out


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and v is not None else ("-" if v is None else str(v))


def markdown(payload: dict) -> str:
    """The report page: results table with the paper beside ours, the targets, the provenance."""
    rows, preset = payload["rows"], payload["preset"]
    paper = {name: p for p in PAPER if p["preset"] == preset for name in p["ours"]}
    dense = next((r for r in rows if r["name"] == "dense"), None)
    lines = [
        f"# Compression study: preset `{preset}`", "",
        f"Generated by `python -m lm study --preset {preset}` at commit `{payload['commit']}` on {payload['date']} "
        f"(seed {payload['seed']}). Sizes are bytes of the exported compact artifact (vocabulary included), "
        f"in MB of 10^6 bytes as in the paper; perplexities are exact ({payload['eval']}); latency is one token "
        f"at batch 1 on one CPU thread, all models timed side by side in one run: eager torch, `torch.ao` int8, "
        f"and the streaming step exported to ONNX (`python -m lm export`) in onnxruntime, float32 and int8 "
        f"(its dynamic quantizer); ONNX int8 MB is that exported file's size.", "",
        "| method | size MB | x smaller | params | nonzero | valid PPL | test PPL | paper size MB | paper test PPL "
        "| ms/token eager | ms/token int8 | speed-up int8 vs dense eager | ms/token ORT | ms/token ORT int8 "
        "| ONNX int8 MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = paper.get(r["name"], {})
        ratio = dense["size_mb"] / r["size_mb"] if dense else None
        speed = dense["eager_ms"] / r["int8_ms"] if dense and r.get("int8_ms") and dense.get("eager_ms") else None
        lines.append("| " + " | ".join([
            r["label"], _fmt(r["size_mb"], ".3f"), _fmt(ratio, ".1f"), _fmt(r["parameters"], ","), _fmt(r["nonzero"], ","),
            _fmt(r["valid_ppl"], ".2f"), _fmt(r["test_ppl"], ".2f"), _fmt(p.get("size_mb"), ".1f"),
            _fmt(p.get("test_ppl"), ".2f"), _fmt(r.get("eager_ms"), ".3f"), _fmt(r.get("int8_ms"), ".3f"),
            _fmt(speed, ".2f"), _fmt(r.get("ort_ms"), ".3f"), _fmt(r.get("ort_int8_ms"), ".3f"),
            _fmt(r["onnx_int8_bytes"] / MB if r.get("onnx_int8_bytes") else None, ".3f")]) + " |")
    lines += ["", "## Published (Grachev, Ignatov & Savchenko, Tables 1-2)", "", "| model | size MB | test PPL |",
              "|---|---|---|"]
    lines += [f"| {p['model']} | {p['size_mb']:.1f} | {p['test_ppl']:.2f} |" for p in PAPER]
    lines += ["", "## Targets", "", "| target | model | measured | met | gap |", "|---|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['model']} | {t['measured']} | {t['met']} | {t['gap']} |" for t in payload["targets"]]
    lines += ["", "## Pareto front (size, test PPL)", ""]
    lines += [f"- {r['label']}: {r['size_mb']:.3f} MB, {r['test_ppl']:.2f} PPL" for r in pareto_front(rows)]
    lines += ["", f"![size vs perplexity]({payload['plot']})", "", "## Methods", ""]
    lines += [f"- `{r['name']}`: {r['description']}" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str | Path, title: str) -> Path:
    """Size-versus-perplexity scatter (log size), our Pareto front, the paper's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6))
    families = sorted({r["family"] for r in rows})
    cmap = plt.get_cmap("tab20")  # one colour a family, up to 20
    for k, fam in enumerate(families):
        pts = [r for r in rows if r["family"] == fam]
        ax.scatter([r["size_mb"] for r in pts], [r["test_ppl"] for r in pts], color=cmap(k % 20), label=fam, zorder=3)
        for r in pts:
            ax.annotate(r["name"], (r["size_mb"], r["test_ppl"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(rows)
    ax.step([r["size_mb"] for r in front], [r["test_ppl"] for r in front], where="post", color="k", lw=1,
            label="our Pareto front", zorder=2)
    ax.scatter([p["size_mb"] for p in PAPER], [p["test_ppl"] for p in PAPER], marker="*", s=140, color="crimson",
               edgecolor="k", label="Grachev et al. (published)", zorder=4)
    for p in PAPER:
        ax.annotate(p["model"], (p["size_mb"], p["test_ppl"]), fontsize=6, color="crimson", xytext=(3, -9),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("artifact size (MB, 10^6 bytes, log scale)")
    ax.set_ylabel("test perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no point hidden
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


FRONT_PRESETS = ("small", "medium", "large")


def front(payloads: list[dict]) -> dict:
    """Every preset's rows on one size-perplexity plane, named ``<preset>:<method>``, with the
    targets that span presets (the moonshot and the Pareto front against every published point)."""
    rows = [{**r, "name": f"{p['preset']}:{r['name']}", "label": f"{p['preset']}:{r['label']}"}
            for p in payloads for r in p["rows"]]
    sources = [{"preset": p["preset"], "commit": p["commit"], "date": p["date"], "seed": p["seed"]} for p in payloads]
    return {"sources": sources, "rows": rows, "targets": targets(rows, "all"), "paper": PAPER}


def front_markdown(payload: dict, plot_name: str) -> str:
    lines = ["# Compression study: every preset on one front", "",
             "Regenerated from the per-preset reports each time `python -m lm study` writes one:"]
    lines += [f"- [`study_{s['preset']}`](study_{s['preset']}.md): commit `{s['commit']}`, {s['date']}, seed {s['seed']}"
              for s in payload["sources"]]
    lines += ["", "## Pareto front (size, test PPL)", "", "| model | size MB | test PPL |", "|---|---|---|"]
    lines += [f"| {r['label']} | {r['size_mb']:.3f} | {r['test_ppl']:.2f} |" for r in pareto_front(payload["rows"])]
    lines += ["", "## Targets across presets", "", "| target | model | measured | met | gap |", "|---|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['model']} | {t['measured']} | {t['met']} | {t['gap']} |" for t in payload["targets"]]
    lines += ["", f"![size vs perplexity, every preset]({plot_name})"]
    return "\n".join(lines) + "\n"


def write_front(report_dir: str | Path) -> dict | None:
    """Merge ``study_{small,medium,large}.json`` of ``report_dir`` into ``study_front.{json,md,png}``;
    None (and nothing written) when no such report exists."""
    report_dir = Path(report_dir)
    paths = [report_dir / f"study_{p}.json" for p in FRONT_PRESETS]
    payloads = [json.loads(path.read_text()) for path in paths if path.is_file()]
    if not payloads:
        return None
    payload = front(payloads)
    image = plot(payload["rows"], report_dir / "study_front.png", "PTB, every preset: size vs test perplexity")
    (report_dir / "study_front.json").write_text(json.dumps(payload, indent=1) + "\n")
    (report_dir / "study_front.md").write_text(front_markdown(payload, image.name))
    return payload
