"""Prepare the Jupyter Book for a profile: check the executed stage pages, write provenance.

    python -m zephyr_lib book --profile toy     # then: jupyter-book build . -W -n --keep-going

Papermill is the only executor (``_config.yml`` has ``execute_notebooks: 'off'``), so the book
shows exactly what the runner executed. This step refuses to build a book whose stage pages are
missing or come from another profile or config, and writes ``book/generated/provenance.md``
(versions, hashes, timings per run) from the runs' manifests.
"""
from __future__ import annotations

import json

from .config import REPO
from .io import atomic_write_bytes, atomic_write_text
from .runner import BOOK_STAGES, book_page, executed_hash, executed_path, notebook_hash
from .plan import load_profile
from .store import context

GENERATED = BOOK_STAGES.parent / "generated"  # book/generated (follows ZEPHYR_BOOK_STAGES)


def provenance_markdown(profile) -> str:
    import pandas as pd

    from .tables import markdown
    rows: list[dict] = []
    versions: dict = {}
    machine: dict = {}
    total = 0.0
    per_stage: dict[str, list[float]] = {}
    spans: list[tuple[str, str]] = []
    for run in profile.order():
        ctx = context(profile, run.name)
        if not ctx.complete:
            rows.append({"run": run.name, "stage": run.stage, "config hash": f"`{ctx.hash}`", "upstream": "",
                         "wall time": "not run", "finished (UTC)": "", "git commit": ""})
            continue
        man = ctx.manifest()
        versions, machine = man["packages"], man["machine"]
        total += man["wall_time_s"]
        per_stage.setdefault(run.stage, []).append(man["wall_time_s"])
        ups = ", ".join(f"{k} `{v}`" for k, v in man["upstream"].items()) or "–"
        commit = (man["git"]["commit"] or "unknown")[:10] + (" (dirty)" if man["git"]["dirty"] else "")
        threads = man["machine"].get("threads")
        shared = threads is not None and threads < (man["machine"].get("cpus") or threads)
        spans.append((man["start"], man["end"]))
        note = f" ({threads} of {man['machine']['cpus']} threads)" if shared else ""
        rows.append({"run": run.name, "stage": run.stage, "config hash": f"`{ctx.hash}`", "upstream": ups,
                     "wall time": f"{man['wall_time_s']:.0f} s{note}", "finished (UTC)": man["end"],
                     "git commit": f"`{commit}`"})
    from .page import relative
    span = ""
    if spans:
        import datetime as dt
        elapsed = (max(dt.datetime.fromisoformat(e) for _, e in spans)
                   - min(dt.datetime.fromisoformat(s) for s, _ in spans)).total_seconds()
        span = (f" The runs spanned {elapsed / 60:.1f} min from the first start to the last end (runs executed "
                f"side by side, `zephyr run --jobs`, share the CPU: their wall times overlap; pauses between "
                f"builds count too).")
    out = [f"Profile **{profile.name}** (`{relative(profile.path)}`), {len(profile.runs)} runs, "
           f"{total / 60:.1f} min of stage time in all.{span}", "", markdown(pd.DataFrame(rows)), ""]
    if per_stage:
        cost = pd.DataFrame([{"stage": st, "runs": len(ts), "wall time (s)": sum(ts),
                              "share": f"{100 * sum(ts) / max(total, 1e-9):.0f}%"} for st, ts in per_stage.items()])
        out += ["What each stage cost in this build (from the runs' manifests: the time of the build itself, "
                "not of a cached rerun):", "", markdown(cost, {"wall time (s)": 0}), ""]
    if versions:
        out += ["Package versions recorded by the runs:", "",
                markdown(pd.DataFrame({"package": list(versions), "version": [str(v) for v in versions.values()]})), "",
                f"Machine: {machine.get('platform', '?')}, {machine.get('cpus', '?')} CPUs"
                + (f" ({machine['cpu']})" if machine.get("cpu") else "") + ". Stage times differ between "
                "processors: compare them on the same kind.", ""]
    return "\n".join(out)


def prepare(profile_name: str) -> list[str]:
    """Check every stage page exists for this profile's current config, publish it into
    ``book/stages/`` (a copy of the executed notebook of the run named like the stage, atomically
    replaced); write provenance and the Performance page. Returns the problems found."""
    profile = load_profile(profile_name)
    problems = []
    for stage in dict.fromkeys(r.stage for r in profile.runs.values()):  # the stages the plan uses
        if stage not in profile.runs:
            problems.append(f"profile {profile.name} runs stage {stage!r} but has no run named {stage!r}: "
                            "the run named like its stage is the one its page shows")
            continue
        path = executed_path(profile, stage)
        want = context(profile, stage).hash
        if executed_hash(path) != want:
            problems.append(f"{path} is missing or from another run (want {stage} @ {want}): "
                            f"python -m zephyr_lib run --profile {profile.name}")
        elif executed_hash(path, "notebook") != notebook_hash(stage):
            problems.append(f"{path} was executed from an older notebooks/{path.name}: "
                            f"python -m zephyr_lib run --profile {profile.name} (re-renders the page, reuses the run)")
        else:
            page = book_page(profile, stage)
            page.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(page, path.read_bytes())
    GENERATED.mkdir(parents=True, exist_ok=True)
    atomic_write_text(GENERATED / "provenance.md", provenance_markdown(profile))
    from .bench import write_performance_page
    write_performance_page(REPO / "bench.json", GENERATED, profile_name)  # stage times + floor; `make bench` adds ratios
    atomic_write_text(GENERATED / "profile.json", json.dumps({"profile": profile.name}) + "\n")
    return problems
