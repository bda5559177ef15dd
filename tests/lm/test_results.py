"""Results files: the stamp every published number carries, and the language models' table that
``python -m lm.results`` writes into README.md and docs/lm.md (tests/project/test_readme.py checks
that the committed README holds it)."""

import json
import re

import pytest

from lm import results


def test_a_stamp_has_config_seed_commit_date_and_machine():
    s = results.stamp({"lr": 1.0}, 7)
    assert s["config"] == {"lr": 1.0} and s["seed"] == 7
    assert re.fullmatch(r"[0-9a-f]{7,}(-dirty)?|unknown", s["commit"])  # unknown: not run from a checkout
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", s["date"])
    assert set(s["machine"]) == {"platform", "cpu", "torch", "threads"}


def test_a_stamp_names_the_code_the_process_started_with_not_a_later_commit(monkeypatch):
    monkeypatch.setattr(results, "git_commit", lambda: "f00d123")  # what the checkout says after a commit mid-run
    assert results.stamp({}, 1)["commit"] == results.CODE_COMMIT != "f00d123"


def test_the_commit_is_dirty_when_code_changed_not_results_or_docs(checkout, monkeypatch):
    monkeypatch.setattr(results, "ROOT", checkout)
    for name in ("results/lm_tiny.json", "docs/lm.md", "models/manifest.json", "README.md"):
        (checkout / name).write_text("2\n")
    assert re.fullmatch(r"[0-9a-f]{7,}", results.git_commit())
    (checkout / "lm/train.py").write_text("2\n")
    assert results.git_commit().endswith("-dirty")


def test_outside_a_checkout_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "ROOT", tmp_path)
    assert results.git_commit() == "unknown"


def test_write_json_makes_the_folder_and_round_trips(tmp_path):
    path = results.write_json(tmp_path / "a" / "b.json", {"x": [1, 2.5]})
    assert json.loads(path.read_text()) == {"x": [1, 2.5]} and path.read_text().endswith("\n")


def run(name, **kw) -> dict:
    return {"valid_ppl": 120.004, "test_ppl": 115.996, "parameters": 4653200, "checkpoint_bytes": 18_612_800,
            "tokens_per_s": 1234.4, "wall_time_s": 5400, "device": "cpu", "seed": 1234, "commit": "abc1234", **kw}


def test_the_table_has_a_row_per_run_and_its_recheck(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    results.write_json(tmp_path / "lm_small.json", run("small"))
    results.write_json(tmp_path / "lm_tiny.json", run("tiny", test_ppl=600.0))
    results.write_json(tmp_path / "eval_small.json", {"test_ppl": 115.9961, "commit": "def5678"})
    header, rule, small, tiny = results.lm_table().splitlines()
    assert header.count("|") == rule.count("|") == 13
    assert small == ("| small | 120.00 | 116.00 | 114.5 / 115.9 | 4,653,200 | 18.6 | 1234 | 1.50 | cpu | 1234 | abc1234 "
                     "| 116.00 (def5678) |")
    assert tiny.startswith("| tiny | 120.00 | 600.00 | - |") and tiny.endswith("| - |")
    history = [{"epoch": e} for e in range(1, 61)]
    results.write_json(tmp_path / "lm_tiny.json", run("tiny", continued_after_epoch=49, history=history))
    assert ("| 1.50 | cpu (epochs 50-60, continued after epoch 49: tokens/s and hours are theirs) | 1234 |"
            in results.lm_table().splitlines()[3])


def test_main_rewrites_between_the_markers_and_refuses_a_page_without_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    (tmp_path / "docs").mkdir()
    page = "intro\n<!-- BEGIN lm_results -->\nold\n<!-- END lm_results -->\nafter\n"
    (tmp_path / "docs" / "lm.md").write_text(page)
    (tmp_path / "README.md").write_text(page)
    results.main()
    table = results.lm_table()
    for doc in (tmp_path / "docs" / "lm.md", tmp_path / "README.md"):
        assert doc.read_text() == f"intro\n<!-- BEGIN lm_results -->\n{table}\n<!-- END lm_results -->\nafter\n"
    (tmp_path / "README.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="README.md has no <!-- BEGIN lm_results --> ... <!-- END lm_results --> markers"):
        results.main()
