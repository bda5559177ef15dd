"""Training curves: a run's history read while it trains or after, as a table, a plot and a stamped JSON."""

import json

import pytest

from lm import curves
from lm.__main__ import main
from lm.config import preset
from lm.train import train


def test_a_runs_history_reads_from_its_state_or_its_results_and_plots(tmp_path, short_corpus, capsys):
    cfg = preset("tiny_awd", hidden_size=16, max_train_tokens=3000, epochs=2, asgd_start=2, asgd_nonmono=None)
    results = train(cfg, tmp_path / "run", progress=False)
    from_state = curves.read_history(tmp_path / "run")
    assert from_state == results["history"] == curves.read_history(tmp_path / "run" / "results.json")
    assert [h["averaged"] for h in from_state] == [False, True]
    rows = curves.table(from_state).splitlines()
    assert len(rows) == 4 and rows[0].endswith("averaged |") and rows[3].startswith("| 2 |") and "| yes |" in rows[3]
    main(["curve", str(tmp_path / "run"), "--out", str(tmp_path / "c.png"), "--json", str(tmp_path / "c.json")])
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    written = json.loads((tmp_path / "c.json").read_text())
    assert written["runs"] == {str(tmp_path / "run"): from_state} and written["commit"]
    assert f"{from_state[1]['valid_ppl']:.2f}" in capsys.readouterr().out


def test_a_path_without_a_history_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no training state or results JSON"):
        main(["curve", str(tmp_path)])
    (tmp_path / "results.json").write_text(json.dumps({"test_ppl": 1.0}))
    with pytest.raises(SystemExit, match="without a 'history' list"):
        main(["curve", str(tmp_path / "results.json")])


def test_a_continued_run_says_where_it_restarted_in_its_table_and_plot(tmp_path):
    history = [{"epoch": e, "lr": 1.0, "train_ppl": 90.0 - e, "valid_ppl": 100.0 - e, "tokens_per_s": 1e3,
                "averaged": e > 1} for e in (1, 2, 3)]
    history[1]["continued_from"] = "ab" * 32
    text = curves.table(history)
    assert "Continued after epoch 2 from its checkpoint alone (sha256 abababababab...)" in text
    assert "Continued" not in curves.table(history[:1] + [{**history[1], "continued_from": None}])
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    curves.draw(ax, "run", history, "C0")
    labels = ax.get_legend_handles_labels()[1]
    assert "run: continued from this epoch's checkpoint" in labels and "run: averaging from here" in labels
    plt.close(fig)
