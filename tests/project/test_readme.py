"""The README as written: its example runs, its results table is the generated one."""

import re
from pathlib import Path

from lm.results import lm_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([650, 2600])" in printed


def test_the_readme_results_table_is_generated():
    """The README's language-model table is what ``python -m lm.results`` writes from results/."""
    block = README.read_text().split("<!-- BEGIN lm_results -->\n", 1)[1].split("\n<!-- END lm_results -->", 1)[0]
    assert block == lm_table()
