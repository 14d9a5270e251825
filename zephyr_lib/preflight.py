"""Preflight: everything a profile's plan needs from outside, checked before any GPU hour is spent.

    zephyr check --profile paper [--stages eval] [--set run.key=value]

One line per check, ``OK``, ``FAIL`` or ``SKIP`` with the reason, exit code 1 on any failure:

* **endpoints** (the judge, the teacher): a model OpenAI has shut down is refused with its
  shutdown date and the successors to choose from (:data:`RETIRED`, from OpenAI's deprecations
  page); the key's environment variable is set; the endpoint answers: ``GET {base_url}/models``
  lists the model (with its ``shutdown_date`` when the server reports one), else one one-token
  ``POST {base_url}/chat/completions`` with the judge's own call settings (temperature 0), so a
  404 ``model_not_found`` or a 400 for an unsupported parameter shows here, in seconds;
* **the hub**: every model and dataset of the plan at its pinned revision resolves, a gated one
  (``mistralai/Mistral-7B-v0.1``) is reachable with the token (``HF_TOKEN``), and an unpinned one
  is named with the commit to pin. With ``HF_HUB_OFFLINE=1`` (compute nodes) the same repositories
  must be in the local hub cache instead (``zephyr fetch`` puts them there);
* **disk and GPU memory** for 7B-scale plans, from the figures of ``book/paper_scale.md``.

The same checks run in ``zephyr run --dry-run`` and, for the runs it is about to build, at the
start of the pipeline and of every stage (:func:`require_for_run`), so a stage never starts
generating against an endpoint that cannot judge. Keys are read from the environment only and
never printed.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

#: OpenAI models with an announced shutdown (OpenAI's API deprecations page,
#: https://developers.openai.com/api/docs/deprecations): model -> (shutdown date, announcement).
RETIRED: dict[str, tuple[str, str]] = {
    **{m: ("2026-10-23", "2026-04-22 'Legacy GPT model snapshots'")
       for m in ("gpt-4-0613", "gpt-4", "gpt-4-0613-completions", "gpt-3.5-turbo-0125", "gpt-3.5-turbo",
                 "gpt-3.5-turbo-completions")},
    **{m: ("2026-12-11", "gpt-5 family shutdown") for m in ("gpt-5", "gpt-5-2025-08-07", "gpt-5-mini",
                                                           "gpt-5-mini-2025-08-07")},
}
#: What to choose instead: OpenAI's recommended replacement of the GPT-4/GPT-5 line at the time of
#: writing, or an open-weight judge served with vLLM (never retired; endpoint kind 'vllm').
SUCCESSORS = ("gpt-6.1-sol (OpenAI's recommended replacement for gpt-5; the paper profile's judge)",
              "an open-weight judge on your own vLLM server (endpoint kind: vllm)")
#: 7B-scale footprints (book/paper_scale.md, "What runs where"): GB on the runs/ filesystem per stage.
DISK_GB = {"base": 0.1, "curate": 1.5, "sft": 215.0, "aif": 1.0, "dpo": 245.0, "eval": 1.0, "results": 0.01}
HUB_MODEL_GB = 14.5           # one Mistral-7B checkpoint in bf16 safetensors, in the hub cache
GPU_GB = {"sft": 80, "dpo": 80, "eval": 24}  # per GPU: full 7B ZeRO-3 training (A100-80GB); bf16 generation
TIMEOUT_S = 10.0


class PreflightError(RuntimeError):
    """A check failed; the message has one line per failed check."""


@dataclass(frozen=True)
class Check:
    what: str
    status: str  # "ok", "fail" or "skip"
    detail: str

    def line(self) -> str:
        return f"{self.status.upper():<4} {self.what}: {self.detail}"


@dataclass(frozen=True)
class HubRef:
    """A hub repository the plan reads: ``repo_type`` 'model' or 'dataset', its pinned revision
    ('' = the default branch), and the setting that names it."""

    repo: str
    repo_type: str
    revision: str
    setting: str
    files: tuple[str, ...] = ()  # only these files (e.g. alpaca_eval.json); empty = the whole snapshot


def today() -> dt.date:
    """Today's date (``ZEPHYR_TODAY=YYYY-MM-DD`` overrides it, for tests)."""
    forced = os.environ.get("ZEPHYR_TODAY", "").strip()
    return dt.date.fromisoformat(forced) if forced else dt.date.today()


# --------------------------------------------------------------------------------------------
# What the plan needs
# --------------------------------------------------------------------------------------------

def _is_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", value or "")) and not Path(value).exists()


def parse_anchor(text: str) -> tuple[str, str, str]:
    """``label=repo@revision`` or ``label=/local/path`` -> (label, source, revision)."""
    if "=" not in text:
        raise ValueError(f"eval.anchors: {text!r} must look like 'label=org/model@revision' or 'label=/path'")
    label, src = (x.strip() for x in text.split("=", 1))
    rev = ""
    if "@" in src and not Path(src).exists():
        src, rev = src.rsplit("@", 1)
    if not label or not src:
        raise ValueError(f"eval.anchors: {text!r} must look like 'label=org/model@revision' or 'label=/path'")
    return label, src, rev


def hub_refs(profile, runs: Iterable) -> list[HubRef]:
    """Every hub model and dataset the given runs read, with its pinned revision."""
    out: list[HubRef] = []
    for run in runs:
        cfg, s = run.config, run.stage
        if s == "base" and cfg.pretrained and _is_hub_id(cfg.pretrained):
            out.append(HubRef(cfg.pretrained, "model", cfg.revision, f"{run.name}.pretrained"))
        if s in ("curate", "aif") and _is_hub_id(cfg.source):
            out.append(HubRef(cfg.source, "dataset", getattr(cfg, "revision", ""), f"{run.name}.source"))
        if s == "eval":
            from .evals import alpaca_eval as ae
            if cfg.alpaca_eval_set == ae.BASELINE_SOURCE["hub_id"]:
                out.append(HubRef(cfg.alpaca_eval_set, "dataset", getattr(cfg, "alpaca_eval_revision", ""),
                                  f"{run.name}.alpaca_eval_set", (ae.BASELINE_SOURCE["file"],)))
            for a in getattr(cfg, "anchors", []):
                _, src, rev = parse_anchor(a)
                if _is_hub_id(src):
                    out.append(HubRef(src, "model", rev, f"{run.name}.anchors"))
    return list(dict.fromkeys(out))


def endpoints_used(profile, runs: Iterable) -> dict[str, list[str]]:
    """{endpoint name: [runs that call it]} for the endpoints that are not the toy stand-ins."""
    from .config import endpoint_names

    used: dict[str, list[str]] = {}
    for run in runs:
        names = list(endpoint_names(run.config))
        for field in ("models", "pool"):
            names += [m.split(":", 1)[1] for m in getattr(run.config, field, []) or [] if str(m).startswith("endpoint:")]
        if run.stage == "aif" and not run.config.annotate and run.config.source != "toy":
            names = [n for n in names if n != run.config.judge]  # published ratings: the judge is never called
        for n in names:
            if n != "toy" and profile.endpoints[n].kind != "toy":
                used.setdefault(n, []).append(run.name)
    return used


def seven_b_scale(profile, runs) -> bool:
    """Does the plan train or evaluate hub-size models (a base run with ``pretrained`` set)?"""
    return any(r.stage == "base" and r.config.pretrained for r in profile.runs.values())


# --------------------------------------------------------------------------------------------
# Endpoint checks
# --------------------------------------------------------------------------------------------

def retirement(model: str) -> tuple[str, str] | None:
    """(shutdown date, announcement) when OpenAI has announced a shutdown for ``model``."""
    return RETIRED.get(model)


def _redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


def _error_of(body: bytes | str) -> str:
    """'code: message' from an OpenAI-style error body, else its first 200 characters."""
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict):
            return ": ".join(str(err[k]) for k in ("code", "message") if err.get(k))[:300]
        if err:
            return str(err)[:300]
    except (ValueError, AttributeError):
        pass
    return (body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body))[:200]


def check_endpoint(name: str, ep, profile_path: str, users: list[str], *, timeout: float = TIMEOUT_S) -> list[Check]:
    """The checks of one endpoint: not retired, key set, the model answers."""
    import httpx

    what = f"endpoint {name} ({ep.model} @ {ep.url})"
    where = f"endpoints.{name}.model in {profile_path}"
    out: list[Check] = []
    gone = retirement(ep.model) if ep.kind == "openai" else None
    if gone:
        date, note = gone
        past = dt.date.fromisoformat(date) <= today()
        msg = (f"{ep.model} {'was shut down' if past else 'shuts down'} by OpenAI on {date} (deprecations page, "
               f"{note}); used by {', '.join(users)}. Set {where} to a current model: "
               + "; or ".join(SUCCESSORS))
        out.append(Check(f"{what}: retirement", "fail" if past else "ok", msg))
        if past:
            return out  # no call to a model that cannot answer
    key = os.environ.get(ep.api_key_env, "").strip()
    if not key:
        out.append(Check(f"{what}: key", "fail", f"the environment variable {ep.api_key_env} is not set "
                         "(the key is read only from there" + ("; a vLLM server without --api-key accepts any value)"
                                                              if ep.kind == "vllm" else ")")))
        return out
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    base = ep.url.rstrip("/")
    try:
        with httpx.Client(timeout=timeout) as client:
            r = client.get(f"{base}/models", headers=headers)
            if r.status_code in (401, 403):
                out.append(Check(f"{what}: answers", "fail", f"HTTP {r.status_code} from {base}/models: the key in "
                                 f"{ep.api_key_env} is refused ({_redact(_error_of(r.content), key)})"))
                return out
            listed = None
            if r.status_code == 200:
                try:
                    listed = {m.get("id"): m for m in r.json().get("data", []) if isinstance(m, dict)}
                except (ValueError, AttributeError):
                    listed = None
            if listed and ep.model in listed:
                shut = listed[ep.model].get("shutdown_date")
                if shut and dt.date.fromisoformat(str(shut)[:10]) <= today():
                    out.append(Check(f"{what}: answers", "fail", f"the server lists {ep.model} with shutdown_date "
                                     f"{shut}: set {where} to a current model: " + "; or ".join(SUCCESSORS)))
                else:
                    out.append(Check(f"{what}: answers", "ok", f"listed by GET {base}/models"
                                     + (f" (shutdown_date {shut})" if shut else "")))
                return out
            # not listed (or no models route): one one-token call with the judge's settings
            body = {"model": ep.model, "messages": [{"role": "user", "content": "Reply with OK."}],
                    "temperature": 0.0, "max_tokens": 1}
            r = client.post(f"{base}/chat/completions", headers=headers, json=body)
    except httpx.HTTPError as e:
        out.append(Check(f"{what}: answers", "fail", f"no answer from {base} within {timeout:.0f} s "
                         f"({type(e).__name__}); check base_url and the network of this machine"))
        return out
    if r.status_code == 200:
        out.append(Check(f"{what}: answers", "ok", "a one-token chat completion (temperature 0) succeeded"))
    else:
        err = _redact(_error_of(r.content), key)
        hint = ""
        if r.status_code == 404:
            hint = f" Set {where} to a model this endpoint serves: " + "; or ".join(SUCCESSORS)
        elif r.status_code in (401, 403):
            hint = f" The key in {ep.api_key_env} is refused."
        elif r.status_code == 400:
            hint = " The judge sends temperature 0 and max_tokens: this model refuses one of them."
        out.append(Check(f"{what}: answers", "fail", f"HTTP {r.status_code} ({err}).{hint}"))
    return out


# --------------------------------------------------------------------------------------------
# Hub checks
# --------------------------------------------------------------------------------------------

def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_hub(ref: HubRef, *, timeout: float = TIMEOUT_S) -> Check:
    """The repository at its revision: in the local cache when offline, else on the hub (with the
    token for a gated repository; an unpinned one gets the commit to pin)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hf_errors

    what = f"hub {ref.repo_type} {ref.repo}" + (f"@{ref.revision[:12]}" if ref.revision else "")
    if offline():
        try:
            path = snapshot_download(ref.repo, repo_type=ref.repo_type, revision=ref.revision or None,
                                     allow_patterns=list(ref.files) or None, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - LocalEntryNotFoundError and friends: one line
            return Check(what, "fail", f"HF_HUB_OFFLINE=1 and it is not in the hub cache ({type(e).__name__}): "
                         f"run `zephyr fetch --profile <profile>` on a machine with internet first ({ref.setting})")
        return Check(what, "ok", f"in the local hub cache ({path})")
    api = HfApi()
    try:
        info = api.repo_info(ref.repo, repo_type=ref.repo_type, revision=ref.revision or None, timeout=timeout)
        gated = getattr(info, "gated", False)
        if gated:
            api.auth_check(ref.repo, repo_type=ref.repo_type)
    except hf_errors.GatedRepoError:
        return Check(what, "fail", f"gated: accept its license at https://huggingface.co/{ref.repo} with your account "
                     "and set HF_TOKEN (a read token) in the environment of every node")
    except hf_errors.RevisionNotFoundError:
        return Check(what, "fail", f"revision {ref.revision!r} does not exist ({ref.setting})")
    except hf_errors.RepositoryNotFoundError:
        return Check(what, "fail", f"no such {ref.repo_type}, or it is private and HF_TOKEN cannot read it ({ref.setting})")
    except Exception as e:  # noqa: BLE001 - network errors: one line, the fix
        return Check(what, "fail", f"the hub did not answer ({type(e).__name__}); on a compute node without internet, "
                     "run `zephyr fetch` on the login node and set HF_HUB_OFFLINE=1")
    if not ref.revision:
        return Check(what, "ok", f"unpinned: the default branch is at {info.sha}; pin it ({ref.setting} revision: {info.sha})")
    return Check(what, "ok", f"revision {info.sha} resolves" + (" (gated: the token has access)" if gated else ""))


# --------------------------------------------------------------------------------------------
# Disk and GPU
# --------------------------------------------------------------------------------------------

def _free_gb(path: Path) -> float:
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free / 1e9


def hub_cache_dir() -> Path:
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def check_resources(profile, runs: list, root: Path, *, gpus: list[float] | None = None) -> list[Check]:
    """Disk on the runs/ filesystem and in the hub cache, and GPU memory, for a 7B-scale plan."""
    from .store import context

    todo = [r for r in runs if not context(profile, r.name, root).complete]
    need = sum(DISK_GB.get(r.stage, 0.0) for r in todo)
    free = _free_gb(root)
    out = [Check(f"disk for {len(todo)} run(s) under {root}", "ok" if free >= need else "fail",
                 f"{free:.0f} GB free, the plan needs about {need:.0f} GB (book/paper_scale.md: checkpoints included)")]
    n_models = sum(1 for h in hub_refs(profile, todo) if h.repo_type == "model" and not h.files)
    if n_models and not offline():
        cache = hub_cache_dir()
        free_c, need_c = _free_gb(cache), n_models * HUB_MODEL_GB
        out.append(Check(f"disk for {n_models} hub model(s) in {cache}", "ok" if free_c >= need_c else "fail",
                         f"{free_c:.0f} GB free, needs about {need_c:.0f} GB ({HUB_MODEL_GB} GB per 7B model)"))
    want = max((GPU_GB.get(r.stage, 0) for r in todo), default=0)
    if want:
        if gpus is None:
            gpus = _gpu_memory_gb()
        stages = sorted({r.stage for r in todo if GPU_GB.get(r.stage, 0) == want})
        if not gpus:
            out.append(Check("GPU memory", "skip", f"no GPU visible on this machine; {', '.join(stages)} need "
                             f"{want} GB per GPU (run the stages on GPU nodes)"))
        else:
            small = min(gpus)
            out.append(Check("GPU memory", "ok" if small >= want * 0.95 else "fail",
                             f"{len(gpus)} GPU(s), the smallest {small:.0f} GB; {', '.join(stages)} need {want} GB per GPU"))
    return out


def _gpu_memory_gb() -> list[float]:
    try:
        import torch
        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_properties(i).total_memory / 1e9 for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch / broken driver: no GPU
        return []


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

def run_checks(profile, runs: list | None = None, *, root: Path | None = None, resources: bool = True,
               gpus: list[float] | None = None) -> list[Check]:
    """Every check for ``runs`` (default: the whole plan) of a loaded profile."""
    from .store import RUNS_DIR

    root = Path(root or RUNS_DIR)
    runs = list(profile.order() if runs is None else runs)
    checks: list[Check] = []
    for name, users in endpoints_used(profile, runs).items():
        checks += check_endpoint(name, profile.endpoints[name], str(profile.path), users)
    for ref in hub_refs(profile, runs):
        checks.append(check_hub(ref))
    if resources and seven_b_scale(profile, runs):
        checks += check_resources(profile, runs, root, gpus=gpus)
    return checks


def is_resource(check: Check) -> bool:
    """A disk or GPU check (about the machine it runs on, not the plan's inputs)."""
    return check.what.startswith(("disk for", "GPU memory"))


def report(checks: list[Check], echo=print) -> bool:
    """Print one line per check; True when none failed."""
    if not checks:
        echo("OK   nothing to check: the plan calls no endpoint and reads nothing from the hub")
    for c in checks:
        echo(c.line())
    return not any(c.status == "fail" for c in checks)


def require_for_run(ctx) -> None:
    """At the start of a stage: the checks of this one run (its endpoints and hub repositories;
    no resource figures). Raises :class:`PreflightError` before the stage does any work."""
    checks = run_checks(ctx.profile, [ctx.run], root=ctx.root, resources=False)
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise PreflightError(f"run {ctx.run.name!r} ({ctx.run.stage}) cannot start; preflight: "
                             + " | ".join(c.line() for c in failed))


__all__ = ["Check", "HubRef", "PreflightError", "RETIRED", "SUCCESSORS", "check_endpoint", "check_hub",
           "hub_refs", "endpoints_used", "parse_anchor", "require_for_run", "run_checks", "report"]
