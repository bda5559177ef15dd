from hypothesis import given, settings
from hypothesis import strategies as st

from lm.compression.report import PAPER, markdown, pareto_front, plot, targets


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
