import json

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
    assert controlled["(control)"]["met"] == "no" and controlled["(control)"]["gap"] == "+7.00 PPL"
    assert t["Pareto"]["measured"].startswith("5/")  # Table 1 and the TT-LSTM, not the medium-class points
    payload = {"rows": rows, "preset": "small", "commit": "abc", "date": "today", "seed": 1, "eval": "exact",
               "plot": "p.png", "targets": targets(rows, "small")}
    page = markdown(payload)
    assert "| q8 | 4.690 |" in page and "118.20" in page and all(p["model"] in page for p in PAPER)
    assert plot(rows, tmp_path / "p.png", "t").read_bytes()[:4] == b"\x89PNG"


def test_medium_targets_take_the_best_row_of_the_family_under_the_size():
    rows = [row("lr_paper_scratch", 16.5, 95.0, "LR-LSTM"), row("lr_big", 20.0, 85.0, "LR-LSTM"),
            row("lr_paper_scratch_q8", 4.2, 95.5, "LR-LSTM+quantized"), row("dense", 79.0, 82.0, "dense")]
    t = {x["target"].split(" ")[0]: x for x in targets(rows, "medium")}
    assert t["LR-LSTM"]["model"] == "lr_paper_scratch" and t["LR-LSTM"]["gap"] == "+2.10 PPL"
    assert t["TT-LSTM"]["met"] == "not run"
    assert t["moonshot:"]["model"] == "lr_paper_scratch_q8" and t["moonshot:"]["gap"] == "+10.50 PPL"
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
    (tmp_path / "study_tiny.json").write_text(json.dumps(payload("tiny", [row("x", 0.1, 1.0)])))  # not a real model
    front = write_front(tmp_path)
    assert [r["name"] for r in front["rows"]] == ["small:q8", "medium:lr_q8", "medium:dense"]
    t = {x["target"].split(" ")[0]: x for x in front["targets"]}
    assert t["moonshot:"]["met"] == "yes" and t["moonshot:"]["model"] == "medium:lr_q8"
    assert t["Pareto"]["measured"] == "8/8 published points dominated"
    page = (tmp_path / "study_front.md").read_text()
    assert "study_small.md" in page and "| medium:lr_q8 | 4.200 | 84.00 |" in page
    assert (tmp_path / "study_front.png").read_bytes()[:4] == b"\x89PNG"
