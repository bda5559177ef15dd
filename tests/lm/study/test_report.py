import json

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from lm.study.report import PAPER, markdown, pareto_front, plot, targets, write_front


def row(name, size_mb, ppl, family="x"):
    return {"name": name, "label": name, "family": family, "description": name, "size_mb": size_mb, "test_ppl": ppl,
            "valid_ppl": ppl, "parameters": 1, "nonzero": 1, "eager_ms": 1.0, "int8_ms": 0.5}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 100), st.floats(50, 500)), min_size=1, max_size=12))
def test_pareto_front_is_exactly_the_undominated_rows(points):
    rows = [row(str(i), s, p) for i, (s, p) in enumerate(points)]
    front = pareto_front(rows)
    for r in rows:
        dominated = any(o["size_mb"] <= r["size_mb"] and o["test_ppl"] <= r["test_ppl"]
                        and (o["size_mb"], o["test_ppl"]) != (r["size_mb"], r["test_ppl"]) for o in rows)
        assert (r in front) or dominated or any(f["size_mb"] == r["size_mb"] and f["test_ppl"] == r["test_ppl"] for f in front)
    assert all(a["size_mb"] <= b["size_mb"] and a["test_ppl"] > b["test_ppl"] for a, b in zip(front, front[1:]))


def test_targets_and_page(tmp_path):
    rows = [row("dense", 18.6, 113.0), row("q8", 4.69, 113.5), row("prune_dec90_ft", 11.7, 121.2),
            row("tiny_good", 1.5, 108.0)]
    t = {x["target"].split(" ")[0]: x for x in targets(rows, "small")}
    assert t["pruned"]["met"] == "no" and t["pruned"]["gap"] == "+0.10 PPL"
    assert t["8-bit"]["met"] == "yes"
    assert t["<="]["met"] == "yes" and t["<="]["model"] == "tiny_good"
    assert t["moonshot:"]["met"] == "no"
    assert "(control)" not in t  # no fine-tuned dense model, no control row
    controlled = {x["target"].split(" ")[0]: x for x in targets(rows + [row("dense_ft", 18.6, 101.0)], "small")}
    assert controlled["(control)"]["met"] == "no"
    assert controlled["(control)"]["gap"] == "+7.00 PPL at <= 4.7 MB"  # no row at all is better than dense_ft
    assert t["Pareto"]["measured"].startswith("6/18")  # Table 1, the TT-LSTM and HitNet; not the medium-class, Xu or Bai points
    payload = {"rows": rows, "preset": "small", "commit": "abc", "date": "today", "seed": 1, "eval": "exact",
               "plot": "p.png", "targets": targets(rows, "small")}
    page = markdown(payload)
    assert "| q8 | 4.690 |" in page and "118.20" in page and all(p["model"] in page for p in PAPER)
    assert plot(rows, tmp_path / "p.png", "t").read_bytes()[:4] == b"\x89PNG"


def test_medium_targets_take_the_best_row_of_the_family_under_the_size():
    rows = [row("lr_paper_scratch", 16.5, 95.0, "LR-LSTM"), row("lr_big", 20.0, 85.0, "LR-LSTM"),
            row("lr_paper_scratch_q8", 4.2, 95.5, "LR-LSTM+quantized"), row("dense", 79.0, 82.0, "dense")]
    t = {x["target"].split(" ")[0]: x for x in targets(rows, "medium")}
    assert t["LR-LSTM"]["model"] == "lr_paper_scratch"
    assert t["LR-LSTM"]["gap"] == "+2.10 PPL at <= 16.8 MB; +3.200 MB at <= 92.90 PPL (lr_big)"  # in PPL and in MB
    assert t["TT-LSTM"]["met"] == "not run"
    assert t["moonshot:"]["model"] == "lr_paper_scratch_q8"
    assert t["moonshot:"]["gap"] == "+10.50 PPL at <= 5 MB; +15.000 MB at <= 85.00 PPL (lr_big)"
    assert "pruned" not in t and "8-bit" not in t  # Table 1 targets belong to the small preset
    page = markdown({"rows": rows, "preset": "medium", "commit": "abc", "date": "today", "seed": 1, "eval": "exact",
                     "plot": "p.png", "targets": targets(rows, "medium")})
    assert "| lr_paper_scratch | 16.500 |" in page and "| 16.8 | 92.89 |" in page
    assert "| dense | 79.000 |" in page and "| 79.1 | 82.07 |" in page


def test_front_merges_the_presets_and_judges_the_cross_preset_targets(tmp_path):
    def payload(preset, rows):
        return {"preset": preset, "commit": "c0ffee", "date": "today", "seed": 1, "rows": rows}

    assert write_front(tmp_path) is None and not (tmp_path / "study_front.md").exists()
    (tmp_path / "study_small.json").write_text(json.dumps(payload("small", [row("q8", 4.7, 113.0)])))
    (tmp_path / "study_medium.json").write_text(json.dumps(payload("medium", [row("lr_q8", 4.2, 84.0),
                                                                              row("dense", 79.0, 80.0)])))
    (tmp_path / "study_medium_awd.json").write_text(json.dumps(payload("medium_awd", [row("lr_q2", 1.5, 87.0),
                                                                                      row("dense", 60.0, 79.0)])))
    (tmp_path / "study_tiny.json").write_text(json.dumps(payload("tiny", [row("x", 0.1, 1.0)])))  # not a real model
    front = write_front(tmp_path)
    assert [r["name"] for r in front["rows"]] == ["small:q8", "medium:lr_q8", "medium:dense", "medium_awd:lr_q2",
                                                  "medium_awd:dense"]
    t = {x["target"].split(" ")[0]: x for x in front["targets"]}
    assert t["moonshot:"]["met"] == "yes" and t["moonshot:"]["model"] == "medium:lr_q8"
    # every 1x300 point too, by medium_awd:lr_q2, but Bai et al.'s 1-bit LSTM, smaller than any row
    assert t["Pareto"]["measured"] == "17/18 published points dominated"
    assert t["Pareto"]["gap"] == "LSTM 1x300, alternating 1-bit weights without rescaling"
    issue15 = [x for x in front["targets"] if x["target"].startswith(("<= 2.5 MB", "<= 1 MB", "dense medium"))]
    assert [(x["model"], x["met"], x["gap"]) for x in issue15] == [
        ("medium_awd:lr_q2", "no", "+2.00 PPL at <= 2.5 MB; +1.700 MB at <= 85.00 PPL (medium:lr_q8)"),
        ("not run", "no", "nothing <= 1 MB"),
        ("medium_awd:dense", "yes", "")]
    page = (tmp_path / "study_front.md").read_text()
    assert "study_small.md" in page and "| medium:lr_q8 | 4.200 | 84.00 |" in page
    assert (tmp_path / "study_front.png").read_bytes()[:4] == b"\x89PNG"


def test_published_points_are_data_with_sources_and_computed_sizes(tmp_path):
    from lm.study.report import Weights, load_published, weight_count

    xu = Weights(vocab=10_000, embedding=300, hidden=300, layers=1)
    # embedding 10000x300, the LSTM's 4*300 x (300 + 300), the softmax 300x10000
    assert weight_count(xu) == 3_000_000 + 720_000 + 3_000_000
    assert weight_count(Weights(10_000, 300, 300, 1, tied=True)) == 3_720_000
    assert weight_count(Weights(10_000, 300, 300, 1, cell="gru")) == 3_000_000 + 540_000 + 3_000_000  # 3 gates
    assert weight_count(Weights(10_000, 200, 300, 2)) == 2_000_000 + 4 * 300 * 500 + 4 * 300 * 600 + 3_000_000
    points = {p["key"]: p for p in PAPER}
    assert {k: (p["size_mb"], p["test_ppl"]) for k, p in points.items() if k.startswith("xu_w")} == {
        "xu_w3a3": (2.52, 87.9), "xu_w2a3": (1.68, 91.9), "xu_w2a2": (1.68, 95.8)}
    assert (points["hitnet_ternary"]["size_mb"], points["hitnet_ternary"]["test_ppl"]) == (1.68, 110.3)
    assert {k: (round(p["size_mb"], 4), p["test_ppl"]) for k, p in points.items() if k.startswith(("xu_gru", "bai"))} == {
        "xu_gru_w3a3": (2.4525, 92.9), "xu_gru_w2a3": (1.635, 97.0), "xu_gru_w2a2": (1.635, 101.2),
        "bai_alt_w1": (0.84, 116.7), "bai_alt_w2": (1.68, 94.3), "bai_alt_w3": (2.52, 87.3)}
    assert all(p["source"] for p in PAPER) and points["medium"]["size_mb"] == 79.1
    bad = tmp_path / "published.toml"
    bad.write_text('[[points]]\nkey = "x"\nmodel = "m"\nsource = "s"\ntest_ppl = 90.0\nsize_mb = 1.0\nbits = 2\n')
    with pytest.raises(ValueError, match=r"published\.toml: \[\[points\]\] #1: weights and bits go together"):
        load_published(bad)
    bad.write_text('[[points]]\nkey = "x"\nmodel = "m"\nsource = "s"\ntest_ppl = 90.0\nbits = 2\n'
                   'weights = { vocab = 10, embedding = 2, hidden = 2, layers = 1, cell = "rnn" }\n')
    with pytest.raises(ValueError, match=r"#1: field 'weights': cell must be one of \['gru', 'lstm'\], got 'rnn'"):
        load_published(bad)


@pytest.mark.parametrize("body, message", [
    ('name = "t"\nreports = ["small"]\nmax_mb = 1.0', "exactly one of max_ppl and better_than"),
    ('name = "t"\nreports = ["small"]\nmax_ppl = "80"', "field 'max_ppl': expected float"),
    ('name = "t"\nreports = ["small"]\nmax_ppl = 80\nmb = 1', "unknown key 'mb'"),
    ('name = "t"\nreports = []\nmax_ppl = 80', "reports must name"),
    ('name = "t"\nreports = ["*"]\ndominate_published = true\nmax_ppl = 80', "dominate_published takes no"),
    ('name = "t"\nreports = ["small"]\nmethod = "q8"\nfamily = "x"\nmax_ppl = 80', "on one method takes no family"),
    ('name = "t"\nreports = ["*"]\nratio = ["ort_ms", "eager_ms"]', "ratio and max_ratio go together"),
    ('name = "t"\nreports = ["*"]\nratio = ["ort_ms"]\nmax_ratio = 0.5', "names two columns"),
    ('name = "t"\nreports = ["*"]\nratio = ["a", "b"]\nmax_ratio = 0.5\nmax_mb = 1.0', "takes only max_ratio"),
    ('name = "t"\nreports = ["*"]\nratio = ["a", "b"]\nmax_ratio = 0', "max_ratio must be > 0"),
])
def test_targets_are_data_validated_on_load(tmp_path, body, message):
    from lm.study.report import load_targets

    path = tmp_path / "targets.toml"
    path.write_text("[[targets]]\n" + body + "\n")
    with pytest.raises(ValueError, match=r"targets\.toml: \[\[targets\]\] #1") as e:
        load_targets(path)
    assert message in str(e.value)


def test_a_ratio_target_judges_every_row_that_has_both_columns():
    from lm.study.report import Target, judge

    t = Target("ort", ["*"], ratio=["ort_ms", "eager_ms"], max_ratio=0.5)
    rows = [{**row("a", 1, 100), "ort_ms": 0.2}, {**row("b", 1, 100), "ort_ms": 0.6}, row("untimed", 1, 100)]
    got = judge(t, rows, [])
    assert got["met"] == "no" and got["gap"] == "b 0.60" and got["measured"] == "1/2 rows; largest 0.60 (b)"
    assert judge(t, rows[:1], [])["met"] == "yes"
    assert judge(t, rows[2:], [])["met"] == "not run"  # no row timed in onnxruntime


def test_a_missed_target_says_its_next_step_and_the_table_shows_the_column_only_then():
    from lm.study.report import targets_table

    rows = [row("dense", 53.0, 65.0), row("student", 0.9, 86.9)]
    judged = {t["target"]: t for t in targets(rows, "medium_awd")}
    assert "lr_tied_kd_qat4" in judged["<= 2.5 MB at <= 85 PPL"]["next"]  # missed: 86.9 PPL at <= 2.5 MB
    assert "next" not in judged["<= 1 MB at <= 100 PPL"]  # met
    met = {t["target"]: t for t in targets(rows + [row("better", 2.0, 80.0)], "medium_awd")}
    assert "next" not in met["<= 2.5 MB at <= 85 PPL"]
    table = targets_table(list(judged.values()))
    assert table[0].endswith("| gap | next step |") and all(line.count("|") == 7 for line in table)
    assert "lr_tied_kd_qat4" in next(line for line in table if line.startswith("| <= 2.5 MB"))
    plain = targets_table([j for j in judged.values() if "next" not in j])
    assert plain[0] == "| target | model | measured | met | gap |" and all(line.count("|") == 6 for line in plain)


def test_no_target_or_published_number_is_typed_in_the_report_code():
    import inspect

    from lm.study import report

    source = inspect.getsource(report)
    for number in ("121.1", "118.2", "92.9", "4.7", "16.8", "87.9", "82.07", "117.66"):
        assert number not in source, number


def test_the_plot_names_only_the_front_and_the_published_points_each_once(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    names = []
    real = Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, *a, **k: names.append((self, s)) or real(self, x, y, s, *a, **k))
    rows = [row("a", 1.0, 100.0), row("b", 2.0, 90.0), row("dominated", 3.0, 120.0), row("c", 4.0, 80.0),
            row("big", 50.0, 70.0), row("bad", 0.5, 400.0)]
    plot(rows, tmp_path / "p.png", "t")
    texts = [s for _, s in names]
    assert sorted(texts) == sorted(["a", "b", "c", "big", "bad"] + [p["label"] for p in PAPER])  # each named once
    left, right = dict.fromkeys(ax for ax, _ in names)  # the axes in the order they name their points
    zoom = {s for ax, s in names if ax is right}
    # the right panel names what it shows: <= 5 MB, up to 15 PPL over its worst published point (Table 1's 8-bit 118.2)
    assert {"a", "b", "c", "HitNet ternary", "Bai ALT W1"} <= zoom and not {"big", "bad", "medium 650-650"} & zoom
    assert right.get_xlim()[1] == pytest.approx(5.25) and right.get_ylim()[1] == pytest.approx(
        max(p["test_ppl"] for p in PAPER if p["size_mb"] <= 5) + 15)


def test_report_only_rerenders_the_committed_reports_from_their_rows(tmp_path):
    import shutil
    from pathlib import Path

    from lm.__main__ import main

    results = Path(__file__).resolve().parents[3] / "results"
    for preset in ("small", "medium"):
        shutil.copy(results / f"study_{preset}.json", tmp_path)
    before = {p: json.loads((tmp_path / f"study_{p}.json").read_text()) for p in ("small", "medium")}
    for preset in ("small", "medium"):
        main(["study", "--preset", preset, "--report-only", "--report-dir", str(tmp_path)])
    for preset, old in before.items():
        new = json.loads((tmp_path / f"study_{preset}.json").read_text())
        assert new["rows"] == old["rows"] and new["commit"] == old["commit"] and new["rendered"]["commit"]
        page = (tmp_path / f"study_{preset}.md").read_text()
        assert all(f"| {r['test_ppl']:.2f} |" in page and f"| {r['valid_ppl']:.2f} |" in page for r in old["rows"])
        assert "Xu et al. (2018)" in page and "## Targets" in page
        if "timed" in old.get("rendered", {}):  # the rows keep that timing's latencies, and so its record
            timed = new["rendered"]["timed"]
            assert {k: timed[k] for k in old["rendered"]["timed"]} == old["rendered"]["timed"]
            assert timed["commit"] == old["rendered"].get("timed", {}).get("commit", old["rendered"]["commit"])
            assert f"timed again at commit `{timed['commit']}`" in page
    front = json.loads((tmp_path / "study_front.json").read_text())
    assert [r["test_ppl"] for r in front["rows"]] == [r["test_ppl"] for p in before.values() for r in p["rows"]]


def test_the_training_curves_section_says_where_each_run_stalled_and_the_front_leaves_them_out(tmp_path):
    from lm.study.report import front, plot_curves

    history = {"run": "finetune", "epochs": [{"epoch": 1, "lr": 0.5, "train_ppl": 90.0, "valid_ppl": 100.0},
                                             {"epoch": 2, "lr": 0.25, "train_ppl": 88.0, "valid_ppl": 95.5},
                                             {"epoch": 3, "lr": 0.125, "train_ppl": 87.0, "valid_ppl": 95.75}]}
    rows = [row("dense", 18.6, 113.0), {**row("kd", 1.0, 96.0), "history": history}]
    image = plot_curves(rows, tmp_path / "c.png", "t")
    assert image.read_bytes()[:4] == b"\x89PNG" and plot_curves(rows[:1], tmp_path / "d.png", "t") is None
    page = markdown({"rows": rows, "preset": "small", "commit": "abc", "date": "today", "seed": 1, "eval": "exact",
                     "plot": "p.png", "curves": image.name, "targets": []})
    assert "| kd | finetune | 3 | 100.00 | 95.50 | 95.75 | +0.25 |" in page and "![training curves](c.png)" in page
    assert "Training curves" not in markdown({"rows": rows[:1], "preset": "small", "commit": "abc", "date": "today",
                                              "seed": 1, "eval": "exact", "plot": "p.png", "targets": []})
    merged = front([{"preset": "small", "commit": "abc", "date": "today", "seed": 1, "rows": rows}])
    assert [r["name"] for r in merged["rows"]] == ["small:dense", "small:kd"] and "history" not in merged["rows"][1]


def test_quantization_aware_runs_get_their_own_panel_in_their_base_colour_and_a_line_per_width():
    from lm.study.methods import Method
    from lm.study.report import curve_panels

    def tuned(name, run="finetune"):
        return {**row(name, 1.0, 90.0), "history": {"run": run, "epochs": [{"epoch": 1, "valid_ppl": 90.0}]}}

    methods = {m.name: m for m in [
        Method("kd", "LR-LSTM", "d", train="finetune"), Method("tt", "TT-LSTM", "d", train="finetune"),
        *(Method(f"kd_qat{b}", "LR-LSTM+QAT", "d", train="finetune", base="kd", quant=f"q{b}", qat_bits=b)
          for b in (4, 3, 2)),
        Method("tt_qat2", "TT-LSTM+QAT", "d", train="finetune", base="tt", quant="q2", qat_bits=2),
        Method("gone_qat4", "LR-LSTM+QAT", "d", train="finetune", base="gone", quant="q4", qat_bits=4)]}
    rows = [tuned("dense", "train"), tuned("kd"), tuned("kd_qat4"), tuned("tt"), tuned("kd_qat3"), tuned("kd_qat2"),
            tuned("tt_qat2"), tuned("gone_qat4"), row("q8", 13.0, 66.0)]
    panels = curve_panels(rows, methods)
    full, tunes, qats = ([(r["name"], k, line) for r, k, line in p] for p in panels.values())
    assert full == [("dense", 0, "-")] and tunes == [("kd", 0, "-"), ("tt", 1, "-")]
    assert qats == [("kd_qat4", 0, "-"), ("kd_qat3", 0, "--"), ("kd_qat2", 0, ":"), ("tt_qat2", 1, ":"),
                    ("gone_qat4", 2, "-")]
    assert list(curve_panels(rows, {})) == list(panels)[:2]  # without the methods: no QAT panel, as before


def test_the_storage_table_sets_each_model_beside_its_stores_and_quantization_aware_widths():
    from lm.study.methods import Method
    from lm.study.report import _storage_section, storage

    methods = {m.name: m for m in [
        Method("dense", "dense", "d"), Method("q8", "quantized", "d", quant="q8"),
        Method("q4", "quantized", "d", quant="q4"),
        Method("kd", "LR-LSTM", "d", train="finetune", compress={"lstm": {"type": "lr_lstm", "rank": 4}}),
        Method("kd_q4", "LR-LSTM+quantized", "d", base="kd", quant="q4"),
        *(Method(f"kd_qat{b}", "LR-LSTM+QAT", "d", train="finetune", base="kd", quant=f"q{b}", qat_bits=b)
          for b in (2, 4)),
        Method("kd_ft_q8", "LR-LSTM", "d", train="finetune", base="kd", quant="q8"),  # trained: not a store of kd
        Method("gone_q8", "LR-LSTM", "d", base="gone", quant="q8")]}  # its float row is not in the report
    rows = [row(n, s, p) for n, s, p in [("dense", 53.0, 65.0), ("q8", 13.0, 65.1), ("q4", 6.8, 66.0),
                                          ("kd", 11.0, 72.6), ("kd_q4", 1.6, 76.0), ("kd_qat4", 1.6, 72.3),
                                          ("kd_qat2", 0.9, 85.9), ("kd_ft_q8", 2.8, 70.0), ("gone_q8", 1.0, 99.0),
                                          ("other", 2.0, 80.0)]]
    table = storage(rows, methods)
    assert table == {"columns": ["float32", "q8", "q4", "QAT 4-bit", "QAT 2-bit"],
                     "models": {"dense": {"q8": "q8", "q4": "q4", "float32": "dense"},
                                "kd": {"q4": "kd_q4", "QAT 4-bit": "kd_qat4", "QAT 2-bit": "kd_qat2", "float32": "kd"},
                                "gone": {"q8": "gone_q8"}}}
    lines = _storage_section({"rows": rows, "storage": table})
    assert lines[6:] == ["|---|---|---|---|---|---|",
                         "| dense | 65.00 (53.00 MB) | 65.10 (13.00 MB) | 66.00 (6.80 MB) |  |  |",
                         "| kd | 72.60 (11.00 MB) |  | 76.00 (1.60 MB) | 72.30 (1.60 MB) | 85.90 (0.90 MB) |",
                         "| gone |  | 99.00 (1.00 MB) |  |  |  |"]
    assert storage(rows, {}) == {"columns": [], "models": {}} and _storage_section({"rows": rows}) == []


def test_a_render_without_histories_removes_the_stale_curves_plot(tmp_path):
    from lm.study.report import render

    history = {"run": "finetune", "epochs": [{"epoch": 1, "lr": 0.5, "train_ppl": 90.0, "valid_ppl": 100.0}]}
    payload = {"preset": "tiny", "commit": "abc", "date": "today", "seed": 1, "eval": "exact"}
    with_curve = render({**payload, "rows": [row("dense", 18.6, 113.0), {**row("kd", 1.0, 96.0), "history": history}]},
                        tmp_path)
    assert with_curve["curves"] == "study_tiny_curves.png" and (tmp_path / "study_tiny_curves.png").is_file()
    without = render({**payload, "rows": [row("dense", 18.6, 113.0)]}, tmp_path)
    assert "curves" not in without and not (tmp_path / "study_tiny_curves.png").exists()
