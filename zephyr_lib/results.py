"""The statistics of the results stage and the paper's numbers (PAPER.md §3).

The results stage (:mod:`zephyr_lib.stages.results`) reads the eval run's per-question scores, so
every comparison between two models is a *paired* bootstrap over the same questions. The verdict sentences ("reproduced", "not
reproduced") are computed from the numbers by :func:`verdict`; none is written by hand.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

# ---- the paper's numbers (PAPER.md §3) ------------------------------------------------------
PAPER_TABLE1 = {  # model: (MT-Bench, AlpacaEval win %, ± se)
    "Zephyr-7B-β (dDPO)": (7.34, 90.60, 1.03), "Zephyr-7B-α": (6.88, 85.76, 1.23),
    "Mistral-Instruct v0.1 (dSFT)": (6.84, None, None), "GPT-3.5-turbo": (7.94, 89.37, 1.08),
    "GPT-4": (8.99, 95.28, 0.72), "Xwin-LM v0.1 7B (dPPO)": (6.19, 87.83, 1.15),
    "StableLM-Tuned-α 7B (dSFT)": (2.75, None, None), "MPT-Chat 7B (dSFT)": (5.42, None, None),
}
PAPER_TABLE2 = {  # model: ARC, HellaSwag, MMLU, TruthfulQA
    "Zephyr-7B-β": (62.03, 84.52, 61.44, 57.44), "Mistral-Instruct v0.1": (54.52, 75.63, 55.38, 56.28),
    "Xwin-LM v0.1 7B": (56.57, 79.40, 49.98, 47.89), "StableLM-Tuned-α 7B": (31.91, 53.59, 24.41, 40.37),
}
PAPER_TABLE3 = {  # arm: (MT-Bench, AlpacaEval, ± se)
    "dDPO − dSFT": (4.76, 30.76, 1.63), "dSFT-1": (6.64, 85.65, 1.23),
    "dSFT-2": (6.19, 78.54, 1.44), "dDPO + dSFT": (7.00, 86.07, 1.22),
}


def paired_diff(a: dict, b: dict, n_boot: int = 2000, seed: int = 0, scale: float = 1.0) -> dict:
    """Mean of a − b over their shared keys, with a 95% paired-bootstrap interval."""
    keys = sorted(set(a) & set(b), key=str)
    if not keys:
        raise ValueError("no shared questions to compare")
    diffs = [(a[k] - b[k]) * scale for k in keys]
    rng = random.Random(seed)
    boots = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(n_boot))
    return {"diff": sum(diffs) / len(diffs), "lo": boots[int(0.025 * n_boot)], "hi": boots[int(0.975 * n_boot) - 1],
            "n": len(diffs)}


def verdict(claim: str, d: dict, unit: str = "") -> str:
    """'claim: reproduced, +0.80 [0.30, 1.20]' when the 95% interval is above 0; 'not reproduced'
    when it is below; 'inconclusive' when it straddles 0."""
    status = "reproduced" if d["lo"] > 0 else "not reproduced (reversed)" if d["hi"] < 0 else "inconclusive"
    return f"{claim}: {status}, {d['diff']:+.2f}{unit} [95% CI {d['lo']:+.2f}, {d['hi']:+.2f}], n = {d['n']}"

#: the paper's models that a run of this project can stand for: (MT-Bench, AlpacaEval win %, ± se);
#: a profile maps its runs to these names in ``results.analogues``.
PAPER_MODELS = {
    "Mistral-7B-v0.1 (base)": (None, None, None),  # not evaluated in the paper
    "dSFT on raw UltraChat (α data)": (None, None, None),  # the paper gives no dSFT-only number for α
    "dSFT-1 (Table 3)": (6.64, 85.65, 1.23),
    "dSFT-2 (Table 3)": (6.19, 78.54, 1.44),
    "Zephyr-7B-β (dDPO)": (7.34, 90.60, 1.03),
    "Zephyr-7B-α": (6.88, 85.76, 1.23),
    "GPT-3.5-turbo": (7.94, 89.37, 1.08),
    "GPT-4": (8.99, 95.28, 0.72),
    "text-davinci-003": (None, 50.0, None),  # AlpacaEval's reference: 50 by definition
}
#: the benchmark (a ``BENCHMARKS`` name) of each headline number of a PAPER_MODELS row, in order
PAPER_MODEL_BENCHMARKS = ("mt_bench", "alpaca_eval")


def paper_score(model: str, benchmark: str) -> float | None:
    """The paper's headline number for one of its models (a PAPER_MODELS name) on a benchmark, or
    None when the paper gives none (or does not report that benchmark)."""
    row = PAPER_MODELS.get(model)
    if row is None or benchmark not in PAPER_MODEL_BENCHMARKS:
        return None
    return row[PAPER_MODEL_BENCHMARKS.index(benchmark)]


# ---- results of earlier builds (stored data, never typed into a page) -------------------------

#: earlier builds' results, one block per build with its machine and date (the results page shows them)
HISTORY = Path(__file__).parent / "data" / "results_history.json"
HISTORY_KEYS = ("id", "title", "machine", "date", "code", "note", "columns", "rows")


def load_history(path: str | Path = HISTORY) -> list[dict]:
    """The blocks of the results history, checked: every block names its machine and date, and
    every row has one cell per column (a cell is text, a number, or ``{diff, lo, hi}``)."""
    blocks = json.loads(Path(path).read_text())["blocks"]
    for i, b in enumerate(blocks):
        missing = [k for k in HISTORY_KEYS if not b.get(k)]
        if missing:
            raise ValueError(f"{path}: history block {b.get('id', i)} lacks {', '.join(missing)}")
        for row in b["rows"]:
            if len(row) != len(b["columns"]):
                raise ValueError(f"{path}: history block {b['id']}: row {row[0]!r} has {len(row)} cells for "
                                 f"{len(b['columns'])} columns")
            for c in row:
                if isinstance(c, dict) and set(c) != {"diff", "lo", "hi"}:
                    raise ValueError(f"{path}: history block {b['id']}: a cell {c} is not {{diff, lo, hi}}")
    return blocks


def history_frame(block: dict, decimals: int = 2):
    """One history block as a table: intervals as '+0.24 [−0.01, +0.53]'."""
    import pandas as pd

    from .tables import interval
    rows = [[interval(c, decimals) if isinstance(c, dict) else c for c in row] for row in block["rows"]]
    return pd.DataFrame(rows, columns=block["columns"])
