"""Keep one build's results as a dated block of the results history (stored data, never prose).

Reads the complete `results` run of a profile from the store and adds (or replaces, by id) a block
in ``zephyr_lib/data/results_history.json``: the machine and date from the run's manifest, the git
commit of the build, and one row per MT-Bench claim and per pre-registered prediction with its
difference and 95% interval, exactly as the results stage computed them. The results page renders
every block; later builds on other machines then keep this one's numbers beside their own.

    .venv/bin/python tools/record_history.py --profile toy --id v3-first-build \\
        --title "Toy world v3, its first build" --note "..."
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_INTERVAL = re.compile(r"^(?P<claim>.+?) \(MT-Bench\): (?P<status>[^,]+), (?P<diff>[-+]\d+\.\d+) \[95% CI "
                       r"(?P<lo>[-+]\d+\.\d+), (?P<hi>[-+]\d+\.\d+)\]")


def block_from_store(profile: str, block_id: str, title: str, note: str) -> dict:
    from zephyr_lib.io import read_json
    from zephyr_lib.plan import load_profile
    from zephyr_lib.store import context

    ctx = context(load_profile(profile), "results")
    if not ctx.complete:
        raise SystemExit(f"profile {profile}: the results run is not in the store (python -m zephyr_lib run --profile {profile})")
    m, man = ctx.metrics(), read_json(ctx.dir / "manifest.json")
    rows = []
    for v in m["verdicts"]:
        hit = _INTERVAL.match(v)
        if hit:
            rows.append([hit["claim"], "MT-Bench", hit["status"],
                         {"diff": float(hit["diff"]), "lo": float(hit["lo"]), "hi": float(hit["hi"])}])
    for p in m.get("predictions", []):
        status = p["verdict"].split(": ", 1)[1].split(",", 1)[0]
        rows.append([p["label"], f"{p['metric']} rate, pts", status,
                     {"diff": round(p["diff"], 2), "lo": round(p["lo"], 2), "hi": round(p["hi"], 2)}])
    commit = (man.get("git") or {}).get("commit") or "unknown"
    cpu = (man.get("machine") or {}).get("cpu") or "unrecorded"
    dsft = next((r["mt_bench"] for r in m["table1"] if r["model"] == "sft" and "mt_bench" in r), None)
    return {"id": block_id, "title": title, "machine": f"{cpu}, {(man.get('machine') or {}).get('cpus', '?')} cores",
            "date": man["end"][:10], "code": f"commit {commit[:12]} (profile {profile})",
            "dsft_mt_bench": None if dsft is None else round(dsft, 2), "note": note,
            "columns": ["claim or prediction", "measure", "verdict", "difference [95% CI]"], "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="toy")
    p.add_argument("--id", required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--note", default="")
    a = p.parse_args(argv)
    from zephyr_lib.results import HISTORY, load_history

    data = json.loads(Path(HISTORY).read_text())
    block = block_from_store(a.profile, a.id, a.title, a.note)
    data["blocks"] = [b for b in data["blocks"] if b["id"] != a.id] + [block]
    tmp = Path(HISTORY).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    load_history(tmp)  # the checks the page relies on, before the file is replaced
    os.replace(tmp, HISTORY)
    print(f"{HISTORY}: block {a.id!r} ({len(block['rows'])} rows, {block['machine']}, {block['date']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
