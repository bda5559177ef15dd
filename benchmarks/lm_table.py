"""Regenerate the language-model results tables in docs/lm.md and README.md from results/lm_*.json
(written by ``lm train``) and results/eval_*.json (``lm eval`` of the same checkpoint, re-run later).

    python benchmarks/lm_table.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import RESULTS, markdown_table, update_doc  # noqa: E402

PUBLISHED = {  # test perplexity: Zaremba et al. 2014 / TensorFlow PTB tutorial
    "small": "114.5 / 115.9", "medium": "82.7 / 82.07", "large": "78.4 / 78.29", "tiny": "-",
}


def rows() -> list[dict]:
    out = []
    for path in sorted(RESULTS.glob("lm_*.json")):
        r = json.loads(path.read_text())
        name = path.stem.removeprefix("lm_")
        recheck = RESULTS / f"eval_{name}.json"
        again = json.loads(recheck.read_text()) if recheck.is_file() else None
        out.append({
            "preset": name, "valid PPL": r["valid_ppl"], "test PPL": r["test_ppl"], "published test PPL": PUBLISHED.get(name, "-"),
            "parameters": f"{r['parameters']:,}", "checkpoint MB": r["checkpoint_bytes"] / 1e6,
            "tokens/s": r["tokens_per_s"], "hours": r["wall_time_s"] / 3600, "device": r["device"],
            "seed": r["seed"], "commit": r["commit"],
            "lm eval test PPL (commit)": f"{again['test_ppl']:.2f} ({again['commit']})" if again else "-",
        })
    return out


def main() -> None:
    columns = ["preset", "valid PPL", "test PPL", "published test PPL", "parameters", "checkpoint MB", "tokens/s",
               "hours", "device", "seed", "commit", "lm eval test PPL (commit)"]
    table = markdown_table(rows(), columns, {"valid PPL": ".2f", "test PPL": ".2f", "checkpoint MB": ".1f",
                                             "tokens/s": ".0f", "hours": ".2f"})
    for doc in ("docs/lm.md", "README.md"):
        update_doc(doc, "lm_results", table)
    print(table)


if __name__ == "__main__":
    main()
