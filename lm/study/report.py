"""The study's report: the published points beside ours, the targets, and a Pareto plot.

The published points (``lm/study/published.toml``) and the targets (``lm/study/targets.toml``)
are data, read and validated on load (``load_published``, ``load_targets``); every other number
comes from the study's results rows. ``rerender`` rewrites a report from its stored rows.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..results import CODE_COMMIT, save_figure
from .methods import Method, _fields, _keys, _typed, load_methods, tomllib

MB = 1e6  # the paper's megabytes: its 18.6 MB small model is 4.65M float32 numbers
DATA_DIR = Path(__file__).parent


GATES = {"lstm": 4, "gru": 3}  # the gated maps of a recurrent cell, each hidden x (input + hidden)


@dataclass(frozen=True)
class Weights:
    """The weight matrices of a recurrent language model: a ``vocab`` x ``embedding`` table, ``layers``
    layers of ``hidden`` units of the ``cell`` (``"lstm"`` or ``"gru"``), and a ``hidden`` x ``vocab``
    softmax (none if ``tied``)."""

    vocab: int
    embedding: int
    hidden: int
    layers: int
    tied: bool = False
    cell: str = "lstm"

    def __post_init__(self) -> None:
        if self.cell not in GATES:
            raise ValueError(f"cell must be one of {sorted(GATES)}, got {self.cell!r}")


def weight_count(w: Weights) -> int:
    """The numbers in ``w``'s weight matrices: the embedding table, each layer's input and recurrent maps
    ``gates hidden x (input + hidden)`` (4 gates in an LSTM, 3 in a GRU), and the softmax unless tied.
    Biases and per-row scales are left out: a published quantized size counted this way is a lower bound
    (for Xu et al.'s 1x300 LSTM, 6,720,000 weights, and its 15,400 biases would add 0.06 MB in float32)."""
    cells = sum(GATES[w.cell] * w.hidden * ((w.embedding if k == 0 else w.hidden) + w.hidden) for k in range(w.layers))
    return w.vocab * w.embedding + cells + (0 if w.tied else w.hidden * w.vocab)


@dataclass(frozen=True)
class Published:
    """A published PTB point: its test PPL and size, printed (``size_mb``) or computed from its
    ``weights`` at ``bits`` bits each; ``preset`` and ``ours``: our rows of the same model."""

    key: str
    model: str
    source: str
    test_ppl: float
    size_mb: float | None = None
    weights: Weights | None = None
    bits: int | None = None
    preset: str | None = None
    ours: list[str] = field(default_factory=list)
    label: str | None = None

    def __post_init__(self) -> None:
        if (self.size_mb is None) == (self.weights is None or self.bits is None):
            raise ValueError("give either size_mb, or weights and bits (the size computed from them)")
        if (self.weights is None) != (self.bits is None):
            raise ValueError("weights and bits go together")

    def to_dict(self) -> dict:
        """The point as the reports store it, its size in MB (computed where not printed)."""
        size = self.size_mb if self.size_mb is not None else weight_count(self.weights) * self.bits / 8 / MB
        return {"key": self.key, "model": self.model, "source": self.source, "size_mb": size,
                "test_ppl": self.test_ppl, "preset": self.preset, "ours": list(self.ours),
                "label": self.label or self.model}


@dataclass(frozen=True)
class Target:
    """A target that the reports in ``reports`` judge (``lm/study/targets.toml`` says what each kind means)."""

    name: str
    reports: list[str]
    method: str | None = None
    family: str | None = None
    max_mb: float | None = None
    max_ppl: float | None = None
    better_than: str | None = None
    dominate_published: bool = False
    ratio: list[str] | None = None
    max_ratio: float | None = None
    next: str | None = None  # the next step, reported while the target is missed

    def __post_init__(self) -> None:
        bounds = (self.method, self.family, self.max_mb, self.max_ppl, self.better_than)
        if (self.ratio is None) != (self.max_ratio is None):
            raise ValueError("ratio and max_ratio go together")
        if self.ratio is not None:
            if len(self.ratio) != 2 or self.dominate_published or any(b is not None for b in bounds):
                raise ValueError("ratio names two columns [numerator, denominator] and takes only max_ratio")
            if not self.max_ratio > 0:
                raise ValueError(f"max_ratio must be > 0, got {self.max_ratio}")
        elif self.dominate_published and any(b is not None for b in bounds):
            raise ValueError("dominate_published takes no method, family, max_mb, max_ppl or better_than")
        elif not self.dominate_published and (self.max_ppl is None) == (self.better_than is None):
            raise ValueError("a target needs exactly one of max_ppl and better_than (or dominate_published)")
        if self.method is not None and (self.family is not None or self.better_than is not None):
            raise ValueError("a target on one method takes no family or better_than")
        if not self.reports:
            raise ValueError("reports must name at least one report")


def _read(path: Path, key: str, cls: type, nested: dict[str, type]) -> list:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    _keys(data, {key}, str(path))
    out = []
    for i, table in enumerate(data.get(key, [])):
        where = f"{path}: [[{key}]] #{i + 1}"
        _typed(table, dict, where)
        values = _fields(cls, table, where, nested=set(nested))
        for name, sub in nested.items():
            if name in table:
                _typed(table[name], dict, f"{where}: field {name!r}")
                given = _fields(sub, table[name], f"{where}: field {name!r}")
                try:
                    values[name] = sub(**given)
                except ValueError as e:
                    raise ValueError(f"{where}: field {name!r}: {e}") from None
        try:
            out.append(cls(**values))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return out


def load_published(path: str | Path = DATA_DIR / "published.toml") -> list[dict]:
    """The published points, as the reports store them (``Published.to_dict``)."""
    return [p.to_dict() for p in _read(Path(path), "points", Published, {"weights": Weights})]


def load_targets(path: str | Path = DATA_DIR / "targets.toml") -> list[Target]:
    """The targets of every report, in the file's order."""
    return _read(Path(path), "targets", Target, {})


PAPER = load_published()  # every published point: Grachev et al.'s Tables 1-2, and the others of published.toml


def pareto_front(rows: list[dict], x: str = "size_mb", y: str = "test_ppl") -> list[dict]:
    """Rows not dominated in (smaller ``x``, lower ``y``), sorted by ``x``."""
    front, best = [], math.inf
    for row in sorted(rows, key=lambda r: (r[x], r[y])):
        if row[y] < best:
            front.append(row)
            best = row[y]
    return front


def _measured(r: dict) -> str:
    return f"{r['test_ppl']:.2f} PPL, {r['size_mb']:.2f} MB"


def judge(t: Target, rows: list[dict], published: list[dict]) -> dict | None:
    """Target ``t`` on ``rows``: the row judged, what it measures, met or not, and the gap (in PPL and
    MB) where missed; None where the target does not apply (``better_than`` a row that is absent)."""
    by = {r["name"]: r for r in rows}
    out = {"target": t.name, "model": "not run", "measured": "-", "met": "not run", "gap": ""}
    if t.ratio is not None:
        top, bottom = t.ratio
        timed = [(r["label"], r[top] / r[bottom]) for r in rows if r.get(top) and r.get(bottom)]
        if not timed:
            return out
        over = [(name, q) for name, q in timed if q > t.max_ratio]
        worst = max(timed, key=lambda x: x[1])
        return {**out, "model": "every timed row",
                "measured": f"{len(timed) - len(over)}/{len(timed)} rows; largest {worst[1]:.2f} ({worst[0]})",
                "met": "no" if over else "yes", "gap": ", ".join(f"{name} {q:.2f}" for name, q in over)}
    if t.dominate_published:
        front = pareto_front(rows)
        beaten = [p for p in published if any(r["size_mb"] <= p["size_mb"] and r["test_ppl"] <= p["test_ppl"]
                                              for r in front)]
        return {**out, "model": "front", "measured": f"{len(beaten)}/{len(published)} published points dominated",
                "met": "yes" if len(beaten) == len(published) else "no",
                "gap": "; ".join(p["model"] for p in published if p not in beaten)}
    if t.method is not None:
        r = by.get(t.method)
        if r is None:
            return out
        gaps = ([f"{r['test_ppl'] - t.max_ppl:+.2f} PPL"] if t.max_ppl is not None and r["test_ppl"] > t.max_ppl
                else []) + ([f"{r['size_mb'] - t.max_mb:+.3f} MB"] if t.max_mb is not None and r["size_mb"] > t.max_mb
                            else [])
        return {**out, "model": r["label"], "measured": _measured(r), "met": "no" if gaps else "yes",
                "gap": ", ".join(gaps)}
    family = [r for r in rows if t.family is None or t.family in r["family"]]
    fit = [r for r in family if t.max_mb is None or r["size_mb"] <= t.max_mb]
    best = min(fit, key=lambda r: r["test_ppl"]) if fit else None
    if t.better_than is not None:
        ref = by.get(t.better_than)
        if ref is None:
            return None
        bar, where = ref["test_ppl"], f" ({t.better_than} {ref['test_ppl']:.2f})"

        def ok(r: dict) -> bool:
            return r["test_ppl"] < bar
    else:
        bar, where = t.max_ppl, ""

        def ok(r: dict) -> bool:
            return r["test_ppl"] <= bar
    met = best is not None and ok(best)
    if best is None:
        return {**out, "met": "no" if family else "not run",
                "gap": f"nothing <= {t.max_mb:g} MB" if family else ""}
    gaps = []
    if not met:
        gaps.append(f"{best['test_ppl'] - bar:+.2f} PPL" + (f" at <= {t.max_mb:g} MB" if t.max_mb is not None else ""))
        reach = [r for r in family if ok(r)] if t.max_mb is not None else []
        if reach:
            small = min(reach, key=lambda r: r["size_mb"])
            gaps.append(f"{small['size_mb'] - t.max_mb:+.3f} MB at <= {bar:.2f} PPL ({small['label']})")
    return {**out, "model": best["label"], "measured": _measured(best) + where, "met": "yes" if met else "no",
            "gap": "; ".join(gaps)}


def targets(rows: list[dict], report: str, published: list[dict] | None = None) -> list[dict]:
    """Every target of ``lm/study/targets.toml`` that ``report`` (a preset, or ``"front"``) judges, judged on
    ``rows`` and the ``published`` points (default: every point of ``lm/study/published.toml``)."""
    published = PAPER if published is None else published
    judged = [(t, judge(t, rows, published)) for t in load_targets() if report in t.reports or "*" in t.reports]
    return [{**j, **({"next": t.next} if t.next and j["met"] != "yes" else {})} for t, j in judged if j is not None]


def targets_table(judged: list[dict]) -> list[str]:
    """The markdown table of ``targets``' judgements, with a next-step column where a missed target has one."""
    nexts = any("next" in t for t in judged)
    lines = ["| target | model | measured | met | gap |" + " next step |" * nexts, "|---|---|---|---|---|" + "---|" * nexts]
    return lines + [f"| {t['target']} | {t['model']} | {t['measured']} | {t['met']} | {t['gap']} |"
                    + f" {t.get('next', '')} |" * nexts for t in judged]


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and v is not None else ("-" if v is None else str(v))


def _rendered(payload: dict) -> str:
    r = payload.get("rendered")
    if not r:
        return ""
    t = r.get("timed")
    timed = (f"; its latency and ONNX columns timed again at commit `{t['commit']}` on {t['date']}, on {t['on']} "
             f"(`--retime`: the weights' values do not change a kernel's work)") if t else ""
    return f"; report re-rendered from its stored rows at commit `{r['commit']}` on {r['date']}{timed}"


def markdown(payload: dict) -> str:
    """The report page: results table with the paper beside ours, the targets, the provenance."""
    rows, preset = payload["rows"], payload["preset"]
    published = payload.get("paper", PAPER)
    paper = {name: p for p in published if p.get("preset") == preset for name in p.get("ours", ())}
    dense = next((r for r in rows if r["name"] == "dense"), None)
    nbits = any("onnx_nbits_bytes" in r for r in rows)  # the n-bit columns, where a row has them
    lines = [
        f"# Compression study: preset `{preset}`", "",
        f"Generated by `python -m lm study --preset {preset}` at commit `{payload['commit']}` on {payload['date']} "
        f"(seed {payload['seed']}){_rendered(payload)}. Sizes are bytes of the exported compact artifact (vocabulary included), "
        f"in MB of 10^6 bytes as in the paper; perplexities are exact ({payload['eval']}); latency is one token "
        f"at batch 1 on one CPU thread, all models timed side by side in one run: eager torch, `torch.ao` int8, "
        f"and the streaming step exported to ONNX (`python -m lm export`) in onnxruntime, float32 and int8 "
        f"(its dynamic quantizer); ONNX int8 MB is that exported file's size."
        + (" The 2-, 3- and 4-bit rows are also exported with their weights' codes packed 4 bits a number "
           "(`python -m lm export --weights nbits`, onnxruntime's `MatMulNBits`): ORT n-bit; and with int8 "
           "activations (`--activations int8`, an approximation of the row's model: its own test PPL, scored in "
           "onnxruntime a token at a time): ORT n-bit int8-act." if nbits else ""), "",
        "| method | size MB | x smaller | params | nonzero | valid PPL | test PPL | paper size MB | paper test PPL "
        "| ms/token eager | ms/token int8 | speed-up int8 vs dense eager | ms/token ORT | ms/token ORT int8 "
        "| ONNX int8 MB |" + (" ms/token ORT n-bit | ONNX n-bit MB | ms/token ORT n-bit int8-act "
                              "| test PPL ORT n-bit int8-act |" if nbits else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if nbits else ""),
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
            _fmt(r["onnx_int8_bytes"] / MB if r.get("onnx_int8_bytes") else None, ".3f"),
            *([_fmt(r.get("ort_nbits_ms"), ".3f"), _fmt(r["onnx_nbits_bytes"] / MB if r.get("onnx_nbits_bytes") else None,
                                                        ".3f"), _fmt(r.get("ort_nbits_int8act_ms"), ".3f"),
               _fmt(r.get("test_ppl_int8act"), ".2f")]
              if nbits else [])]) + " |")
    lines += ["", "## Published", "", "Sizes as printed, or computed from the weight count and bits "
              "(`lm/study/published.toml`, `lm.study.report.weight_count`).", "",
              "| model | size MB | test PPL | source |", "|---|---|---|---|"]
    lines += [f"| {p['model']} | {p['size_mb']:.2f} | {p['test_ppl']:.2f} | {p['source']} |" for p in published]
    lines += ["", "## Targets", "", *targets_table(payload["targets"])]
    lines += ["", "## Pareto front (size, test PPL)", ""]
    lines += [f"- {r['label']}: {r['size_mb']:.3f} MB, {r['test_ppl']:.2f} PPL" for r in pareto_front(rows)]
    lines += ["", f"![size vs perplexity]({payload['plot']})"]
    lines += _storage_section(payload)
    lines += _curves_section(rows, payload.get("curves"))
    lines += ["", "## Methods", ""]
    lines += [f"- `{r['name']}`: {r['description']}" for r in rows]
    return "\n".join(lines) + "\n"


def _curves_section(rows: list[dict], image: str | None) -> list[str]:
    """The training curves' table (each trained row's epochs, its first, best and last validation
    perplexity and its last epoch's change: where it stalled) and plot, for the rows with a history."""
    trained = [r for r in rows if r.get("history")]
    if not trained:
        return []
    lines = ["", "## Training curves", "",
             "Validation perplexity per epoch of each row's training run (the dense model's own training, a "
             "from-scratch run, a fine-tune: its distillation or quantization-aware training), as its run recorded "
             "it (`lm.train`; averaged SGD evaluates the average). The last column is the last epoch's change.", "",
             "| method | run | epochs | first valid PPL | best valid PPL | last valid PPL | last epoch |",
             "|---|---|---|---|---|---|---|"]
    for r in trained:
        valid = [h["valid_ppl"] for h in r["history"]["epochs"]]
        change = f"{valid[-1] - valid[-2]:+.2f}" if len(valid) > 1 else "-"
        lines.append(f"| {r['label']} | {r['history']['run']} | {len(valid)} | {valid[0]:.2f} | {min(valid):.2f} "
                     f"| {valid[-1]:.2f} | {change} |")
    if image:
        lines += ["", f"![training curves]({image})"]
    return lines


def storage(rows: list[dict], methods: dict[str, Method]) -> dict:
    """Each model the study stores more than one way, by storage: ``{"columns": [...], "models": {model:
    {column: row name}}}``. A model's columns are ``float32`` (its own row), each plain store of it (a method
    with ``quant`` and nothing else: no compression, pruning or training; ``q8``, ``q4``, ...) and each
    quantization-aware fine-tune of it (``qat_bits``: ``QAT 4-bit``, ...); a method without a base stores the
    dense model. Empty (no columns) when no row is such a store."""
    models: dict[str, dict[str, str]] = {}
    order: dict[str, tuple] = {}  # column -> its place: the stores, then the QAT widths, each widest first
    for r in rows:
        m = methods.get(r["name"])
        if m is None:
            continue
        if m.qat_bits:
            column, place = f"QAT {m.qat_bits}-bit", (1, -m.qat_bits, "")
        elif m.quant and m.train == "none" and not m.compress and m.prune is None:
            column, place = m.quant, (0, -int(m.quant[1]), m.quant)  # q8, q8c, q4, ...: "q<bits>..."
        else:
            continue
        order[column] = place
        models.setdefault(m.base or "dense", {})[column] = r["name"]
    names = {r["name"] for r in rows}
    for model, cells in models.items():
        if model in names:
            cells["float32"] = model
    return {"columns": ["float32", *sorted(order, key=order.get)] if models else [], "models": models}


def _storage_section(payload: dict) -> list[str]:
    """The storage table (``storage``): each cell the row's test PPL and MB."""
    table = payload.get("storage") or {}
    if not table.get("columns"):
        return []
    rows = {r["name"]: r for r in payload["rows"]}
    columns = table["columns"]
    lines = ["", "## Storage", "",
             "Each model stored more than one way: its test PPL (and MB) in float32, in each plain store of its "
             "weights (no retraining) and after each quantization-aware fine-tune to that many bits per weight.", "",
             "| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for model, cells in table["models"].items():
        text = [f"{rows[n]['test_ppl']:.2f} ({rows[n]['size_mb']:.2f} MB)" if (n := cells.get(c)) in rows else ""
                for c in columns]
        lines.append(f"| {model} | " + " | ".join(text) + " |")
    return lines


QAT_LINES = {4: "-", 3: "--", 2: ":"}  # the quantization-aware panel's line for each width; any other: dash-dot


def curve_panels(rows: list[dict], methods: dict[str, Method]) -> dict[str, list[tuple[dict, int, str]]]:
    """The panels of the training-curves plot, ``{title: [(row, colour index, line style), ...]}``, for the
    rows with a history, empty panels left out: the long runs (the dense model's own training, from-scratch
    runs); the other fine-tunes (retraining, distillation); and the quantization-aware fine-tunes (the rows
    whose method in ``methods`` has ``qat_bits``), each in the colour of the run it starts from (its base)
    and a line per width (``QAT_LINES``), so that a student and its QAT rows read together."""
    trained = [r for r in rows if r.get("history")]
    bits = {r["name"]: m.qat_bits for r in trained if (m := methods.get(r["name"])) and m.qat_bits is not None}
    full = [r for r in trained if r["history"]["run"] != "finetune"]
    tunes = [r for r in trained if r["history"]["run"] == "finetune" and r["name"] not in bits]
    qats = [r for r in trained if r["name"] in bits]
    colour = {r["name"]: k for k, r in enumerate(tunes)}
    for r in qats:  # a base that is not plotted still gives its QAT rows one colour
        colour.setdefault(methods[r["name"]].base, len(colour))
    panels = {
        "full runs (dense, from scratch)": [(r, k, "-") for k, r in enumerate(full)],
        "fine-tunes (retraining, distillation)": [(r, colour[r["name"]], "-") for r in tunes],
        "quantization-aware fine-tunes (4 bits solid, 3 dashed, 2 dotted)":
            [(r, colour[methods[r["name"]].base], QAT_LINES.get(bits[r["name"]], "-.")) for r in qats],
    }
    return {title: panel for title, panel in panels.items() if panel}


def plot_curves(rows: list[dict], path: str | Path, title: str,
                methods: dict[str, Method] | None = None) -> Path | None:
    """The validation perplexity per epoch of every row with a history, in the panels of ``curve_panels``
    (``methods``: the preset's, by name; default none, so no quantization-aware panel); None when no row
    has one."""
    panels = curve_panels(rows, methods or {})
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from ..curves import draw

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    cmap = plt.get_cmap("tab20")  # its dark hues for the first ten colours, then the light ones
    for ax, (name, panel) in zip(axes[0], panels.items()):
        for r, k, line in panel:
            draw(ax, r["label"], r["history"]["epochs"], cmap(2 * k % 20 + k // 10 % 2), train=False, line=line)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # perplexities as numbers, not powers
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation perplexity (log scale)")
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=130)


NAME_SHIFT = 1.05  # a name starts this factor right of its point (log sizes), clear of the marker
ZOOM_MB = 5.0  # the plot's right panel: the models of at most this size, where the targets and most published points lie


def plot(rows: list[dict], path: str | Path, title: str, published: list[dict] | None = None) -> Path:
    """Size-versus-perplexity scatter (log size): every row coloured by family, our Pareto front, the
    ``published`` points (default: ``PAPER``) one marker per source; only the front and the published
    points are named, so that the plot can be read: the left panel holds every point and names those over
    ``ZOOM_MB``, the right one enlarges the points of at most ``ZOOM_MB`` (up to 15 PPL over the published
    ones there) and names them, the names moved apart where they would overlap (adjustText)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from adjustText import adjust_text

    published = PAPER if published is None else published
    front = pareto_front(rows)
    families = sorted({r["family"] for r in rows})
    cmap = plt.get_cmap("tab20")  # one colour a family, up to 20
    sources = list(dict.fromkeys(p["source"].split(" (")[0] for p in published))  # the authors
    styles = dict(zip(sources, [("*", "crimson"), ("P", "darkorange"), ("X", "purple"), ("D", "teal"),
                                ("v", "olive")] * 4))
    small = [x for x in rows + published if x["size_mb"] <= ZOOM_MB]
    if small:  # the enlarged panel: its sizes, and perplexities up to a margin over its published points
        xlim = (min(x["size_mb"] for x in small) / 1.15, ZOOM_MB * 1.05)
        marks = [p["test_ppl"] for p in published if p["size_mb"] <= ZOOM_MB] or [x["test_ppl"] for x in small]
        ylim = (min(x["test_ppl"] for x in small) - 3, max(marks) + 15)

    def zoomed(x: dict) -> bool:
        return bool(small) and x["size_mb"] <= ZOOM_MB and x["test_ppl"] <= ylim[1]

    fig, axes = plt.subplots(1, 2 if small else 1, figsize=(16 if small else 11, 6.5), squeeze=False)
    for ax, named in zip(axes[0], [lambda x: not zoomed(x), zoomed]):
        for k, fam in enumerate(families):
            pts = [r for r in rows if r["family"] == fam]
            ax.scatter([r["size_mb"] for r in pts], [r["test_ppl"] for r in pts], color=cmap(k % 20), label=fam,
                       zorder=3)
        ax.step([r["size_mb"] for r in front], [r["test_ppl"] for r in front], where="post", color="k", lw=1,
                label="our Pareto front", zorder=2)
        texts = [ax.text(r["size_mb"] * NAME_SHIFT, r["test_ppl"], r["name"], fontsize=6, zorder=5)
                 for r in front if named(r)]
        for source, (marker, colour) in styles.items():
            pts = [p for p in published if p["source"].startswith(source)]
            ax.scatter([p["size_mb"] for p in pts], [p["test_ppl"] for p in pts], marker=marker, s=120, color=colour,
                       edgecolor="k", label=f"{source} (published)", zorder=4)
            texts += [ax.text(p["size_mb"] * NAME_SHIFT, p["test_ppl"], p.get("label", p["model"]), fontsize=6,
                              color=colour, zorder=5) for p in pts if named(p)]
        ax.set_xscale("log")
        ax.set_xlabel("artifact size (MB, 10^6 bytes, log scale)")
        ax.set_ylabel("test perplexity")
        ax.grid(True, which="both", alpha=0.3)
        if small and ax is axes[0][1]:
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.set_title(f"<= {ZOOM_MB:g} MB and <= {ylim[1]:.0f} PPL, enlarged", fontsize=10)
        elif small:
            ax.add_patch(matplotlib.patches.Rectangle((xlim[0], ylim[0]), xlim[1] - xlim[0], ylim[1] - ylim[0],
                                                      color="0.9", zorder=0))
            ax.set_title("every model (the shaded part enlarged on the right)", fontsize=10)
        if texts:
            adjust_text(texts, ax=ax, arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5})
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no point hidden
    fig.suptitle(title)
    return save_figure(fig, path, dpi=130)


def render(payload: dict, report_dir: str | Path) -> dict:
    """Write a preset's report from its ``payload`` (provenance, ``preset``, ``eval``, ``rows``):
    the published points and the targets judged on the rows, then ``study_<preset>.{png,json,md}``
    in ``report_dir``, and the front of every preset when the preset is one of ``FRONT_PRESETS``."""
    out, preset = Path(report_dir), payload["preset"]
    name = f"study_{preset}"
    image = plot(payload["rows"], out / f"{name}.png", f"PTB, preset {preset}: size vs test perplexity")
    methods = {m.name: m for m in load_methods(preset)}
    curves = plot_curves(payload["rows"], out / f"{name}_curves.png", f"PTB, preset {preset}: training curves", methods)
    if curves is None:  # no row has a history now: a plot of earlier rows' curves would mislead
        (out / f"{name}_curves.png").unlink(missing_ok=True)
    payload = {**payload, "plot": image.name, **({"curves": curves.name} if curves else {}), "paper": PAPER,
               "targets": targets(payload["rows"], preset), "storage": storage(payload["rows"], methods)}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(payload))
    if preset in FRONT_PRESETS:
        write_front(out)
    return payload


def rerender(preset: str, report_dir: str | Path, retime_tokens: int | None = None) -> dict:
    """Rewrite ``report_dir/study_<preset>.{json,md,png}`` (and the front) from the rows stored in its
    JSON, with today's published points and targets, no model trained or scored; the JSON keeps its
    provenance and records the re-render's commit and date under ``rendered``. With
    ``retime_tokens``, every row's latency columns are measured again in this run
    (``lm.study.latency.retime``), recorded under ``rendered["timed"]`` with its commit and date; without it, the
    stored rows keep the latencies of their last timing, and ``rendered["timed"]`` its record."""
    path = Path(report_dir) / f"study_{preset}.json"
    if not path.is_file():
        raise ValueError(f"no stored report {path} to re-render; run the study first")
    payload = json.loads(path.read_text())
    stamp = {"commit": CODE_COMMIT, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    timed = payload.get("rendered", {}).get("timed")  # the rows' latencies come from that timing until timed again
    if timed and "commit" not in timed:  # a report re-timed before timings carried their own stamp
        timed = {"commit": payload["rendered"]["commit"], "date": payload["rendered"]["date"], **timed}
    if retime_tokens:
        from .latency import retime

        timed = {**stamp, **retime(payload["rows"], tokens=retime_tokens)}
    payload["rendered"] = {**stamp, **({"timed": timed} if timed else {})}
    return render(payload, report_dir)


FRONT_PRESETS = ("small", "medium", "large", "medium_awd")


def front(payloads: list[dict]) -> dict:
    """Every preset's rows on one size-perplexity plane, named ``<preset>:<method>``, with the
    targets that span presets (the moonshot and the Pareto front against every published point)."""
    rows = [{**{k: v for k, v in r.items() if k != "history"},  # the curves stay in each preset's report
             "name": f"{p['preset']}:{r['name']}", "label": f"{p['preset']}:{r['label']}"}
            for p in payloads for r in p["rows"]]
    sources = [{"preset": p["preset"], "commit": p["commit"], "date": p["date"], "seed": p["seed"]} for p in payloads]
    return {"sources": sources, "rows": rows, "targets": targets(rows, "front"), "paper": PAPER}


def front_markdown(payload: dict, plot_name: str) -> str:
    lines = ["# Compression study: every preset on one front", "",
             "Regenerated from the per-preset reports each time `python -m lm study` writes one:"]
    lines += [f"- [`study_{s['preset']}`](study_{s['preset']}.md): commit `{s['commit']}`, {s['date']}, seed {s['seed']}"
              for s in payload["sources"]]
    lines += ["", "## Pareto front (size, test PPL)", "", "| model | size MB | test PPL |", "|---|---|---|"]
    lines += [f"| {r['label']} | {r['size_mb']:.3f} | {r['test_ppl']:.2f} |" for r in pareto_front(payload["rows"])]
    lines += ["", "## Targets across presets", "", *targets_table(payload["targets"])]
    lines += ["", f"![size vs perplexity, every preset]({plot_name})"]
    return "\n".join(lines) + "\n"


def write_front(report_dir: str | Path) -> dict | None:
    """Merge the ``study_<preset>.json`` of ``FRONT_PRESETS`` in ``report_dir`` into ``study_front.{json,md,png}``;
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
