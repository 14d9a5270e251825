"""``zephyr fetch --profile P``: download everything the plan reads, on a machine with internet
(a cluster's login node), so the compute nodes run with ``HF_HUB_OFFLINE=1``.

* every hub model and dataset of the plan (:func:`zephyr_lib.preflight.hub_refs`: the base model,
  the datasets, the AlpacaEval set, the paper's published models of ``eval.anchors``) at its pinned
  revision, into the hub cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``; put it on
  the shared filesystem), with ``huggingface_hub.snapshot_download``; a gated repository needs
  ``HF_TOKEN`` and an accepted license;
* every file the plan names by URL (MT-Bench questions, references and judge prompts, the archived
  AlpacaEval outputs, UltraFeedback's templates) into ``runs/<profile>/downloads/``, where the
  stages read them (``io.fetch``).

Then, on the compute nodes: ``HF_HUB_OFFLINE=1 zephyr run --profile P --dry-run`` (the preflight
finds everything in the cache) and ``HF_HUB_OFFLINE=1 zephyr run --profile P``. One line per item;
exit code 1 when something could not be fetched.

Run: ``python -m zephyr_lib fetch --profile paper [--stages eval]``.
"""
from __future__ import annotations

from pathlib import Path

URL_FIELDS = {"eval": ("mt_bench_questions", "mt_bench_references", "judge_prompts", "alpaca_rejudge"),
              "aif": ("templates",)}


def plan_urls(profile, runs) -> list[tuple[str, str]]:
    """(setting, URL) of every file the runs read over http(s)."""
    out = []
    for run in runs:
        for field in URL_FIELDS.get(run.stage, ()):
            value = getattr(run.config, field, "")
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                out.append((f"{run.name}.{field}", value))
    return list(dict.fromkeys(out))


def _download(ref) -> str:
    from huggingface_hub import snapshot_download
    return snapshot_download(ref.repo, repo_type=ref.repo_type, revision=ref.revision or None,
                             allow_patterns=list(ref.files) or None)


def fetch_plan(profile, runs=None, *, root: Path | None = None, echo=print, download=_download) -> int:
    """Fetch every hub repository and URL file of ``runs`` (default: the whole plan). Returns the
    number of failures (0 = all fetched)."""
    from tqdm.auto import tqdm

    from .io import fetch
    from .preflight import hub_refs, offline
    from .store import RUNS_DIR

    if offline():
        echo("error: HF_HUB_OFFLINE is set: zephyr fetch downloads, run it where the hub is reachable")
        return 1
    runs = list(profile.order() if runs is None else runs)
    refs, urls = hub_refs(profile, runs), plan_urls(profile, runs)
    cache = Path(root or RUNS_DIR) / profile.name / "downloads"
    failures = 0
    for ref in tqdm(refs, desc="hub repositories", disable=len(refs) < 2):
        what = f"hub {ref.repo_type} {ref.repo}" + (f"@{ref.revision}" if ref.revision else " (unpinned: default branch)")
        try:
            echo(f"OK   {what} -> {download(ref)}")
        except Exception as e:  # noqa: BLE001 - one line per item, the fix
            failures += 1
            gated = "Gated" in type(e).__name__
            echo(f"FAIL {what}: {type(e).__name__}" + (": accept its license on the hub and set HF_TOKEN" if gated else
                                                       f" ({str(e).splitlines()[0][:200] if str(e) else ''})"))
    for setting, url in urls:
        try:
            echo(f"OK   {setting} {url} -> {fetch(url, cache)}")
        except Exception as e:  # noqa: BLE001
            failures += 1
            echo(f"FAIL {setting} {url}: {type(e).__name__} ({str(e)[:200]})")
    echo(f"{len(refs)} hub repositories, {len(urls)} files; {failures} failed. On the compute nodes: "
         f"HF_HUB_OFFLINE=1 python -m zephyr_lib run --profile {profile.name}")
    return failures


def main_fetch(profile_name: str, sets=None, stages=None, echo=print) -> int:
    from .plan import load_profile

    prof = load_profile(profile_name, sets)
    return 1 if fetch_plan(prof, prof.order(stages), echo=echo) else 0


__all__ = ["fetch_plan", "main_fetch", "plan_urls"]
