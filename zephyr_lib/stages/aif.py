"""Stage `aif`: UltraFeedback-style AI feedback. Pool members answer each prompt (4 of them per
prompt), the judge rates every answer on UltraFeedback's four aspects plus a critique and overall
score, and the ratings are binarized into (prompt, chosen, rejected) pairs in
ultrafeedback_binarized's schema.

One implementation serves the toy world and real data (:mod:`zephyr_lib.pool`):
- ``source: toy``: toy-world prompts, toy programs and trained models as the pool, the `judge` endpoint;
- a raw openbmb/UltraFeedback set with ``annotate: true``: its prompts, answered by `pool` and rated
  by `judge` from scratch; with ``annotate: false``: its existing ratings re-binarized;
- an ultrafeedback_binarized set (``source_schema: binarized``): used as it is.

Notebook: ``notebooks/03_aif.ipynb``. Run: ``python -m zephyr_lib run --profile toy --stages aif``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ATTN_IMPLEMENTATIONS, ConfigError, StageConfig, endpoint, opt, ref, refs
from ..io import write_json, write_jsonl
from ..stage import Stage


@dataclass(frozen=True)
class AIFConfig(StageConfig):
    """Stage `aif`: UltraFeedback-style AI feedback (pool answers, judge ratings, binarization)."""

    source: str = opt("toy", "'toy', or a path/hub id of openbmb/UltraFeedback (raw) or of an ultrafeedback_binarized set.")
    source_schema: str = opt("raw", "Schema of a non-toy `source`: 'raw' (openbmb/UltraFeedback) or 'binarized' (ultrafeedback_binarized).",
                             choices=("raw", "binarized"))
    annotate: bool = opt(False, "Raw source: take only its prompts and have `pool` answer and `judge` rate them (UltraFeedback from scratch); false = re-binarize its ratings.")
    revision: str = opt("", "Hub revision of `source` (paper: ultrafeedback_binarized @ 292c163…).")
    max_bad_row_fraction: float = opt(0.001, "Real source: share of its rows (of each split, binarized) that may be malformed (dropped, counted by kind in metrics.json's bad_rows) before the run stops with the file, first bad row and field named.", ge=0, lt=1, hash_omit_default=True)
    policy: str = ref("sft", "dSFT run whose model joins the pool as 'policy'.")
    base: str = ref("base", "Base run whose model joins the pool as 'base'.")
    n_prompts: int = opt(600, "Prompts to answer and rate (toy) or rows to read (real, 0 = all).", ge=0)
    pool: list[str] = opt(["teacher_strong", "teacher", "teacher_sloppy", "teacher_verbose", "policy", "base"],
                          "Pool members: toy programs, 'policy', 'base' or 'endpoint:<name>'; each prompt gets answers from `completions_per_prompt` of pool + zoo.")
    zoo: list[str] = refs([], "Trained models (runs, e.g. sft_alpha) that join the pool: the toy stand-ins for UltraFeedback's open chat models.")
    completions_per_prompt: int = opt(4, "Answers per prompt (UltraFeedback: 4).", ge=2)
    rule: str = opt("overall", "Binarization: 'overall' (the dataset's code) or 'mean_aspects' (Argilla's, ties dropped).",
                    choices=("overall", "mean_aspects"))
    binarize_seed: int = opt(42, "Seed for picking the rejected answer (the dataset's code: 42).")
    drop_identical: bool = opt(True, "Drop pairs whose chosen and rejected answers are the same text (no DPO signal; counted).")
    test_fraction: float = opt(0.1, "Fraction of pairs held out as test_prefs.", gt=0, lt=1)
    max_new_tokens: int = opt(96, "Generation length for model pool members.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature for model pool members (UltraFeedback: 1.0, top_p 1.0).", ge=0)
    batch_size: int = opt(32, "Prompts per generation batch for model pool members.", ge=1)
    attn_implementation: str = opt("auto", "Attention kernel of model pool members generating with transformers: auto = flash_attention_2 where the flash_attn package is importable and a GPU is visible, else sdpa; or sdpa, flash_attention_2, eager. metrics.json records the one used.", choices=ATTN_IMPLEMENTATIONS, hash_omit_default=True)
    judge: str = endpoint("toy", "Endpoint that rates the answers (the paper: GPT-4).")
    judge_failure_budget: float = opt(0.0, "Share of prompts allowed to be lost to failed or unusable (unparsable) judgments or pool answers before the run counts as incomplete; 0 = any loss stops it (resumable: the cache keeps every answer). A budget above 0 is shown on the page.", ge=0, lt=1, hash_omit_default=True)
    templates: str = opt("", "Rating prompts: '' = the paraphrase the toy judge reads; a path or URL of UltraFeedback's preference_templates.py = the originals (read as text, never executed), with annotate_critique.py and main.py (the completion principles) taken from beside it.", hash_omit_default=True)
    seed: int = opt(0, "Seed for prompts and pool sampling.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.completions_per_prompt > len(self.pool) + len(self.zoo):
            raise ConfigError("aif.completions_per_prompt must be between 2 and the pool size")
        if self.source == "toy" and self.n_prompts == 0:
            raise ConfigError("aif.n_prompts must be >= 1 for source 'toy', got 0 (0 means 'every row' only "
                              "for a real source)")


def build(ctx, out: Path) -> dict:
    from .. import feedback as fb
    from .. import modeling

    modeling.set_threads()
    cfg = ctx.cfg
    if cfg.source == "toy":
        prompts = _toy_prompts(ctx, out)
    elif cfg.source_schema == "binarized":
        bad_rows: dict = {}
        dsd = fb.load_binarized(cfg.source, revision=cfg.revision or None,
                                max_bad_row_fraction=cfg.max_bad_row_fraction, report=bad_rows)
        fb.save_binarized(dsd, out / "binarized")
        metrics = {"source": cfg.source, "splits": {k: len(v) for k, v in dsd.items()}, "bad_rows": bad_rows}
        write_json(out / "metrics.json", metrics)
        return metrics
    else:
        bad_rows = {}
        rows = fb.load_raw_ultrafeedback(cfg.source, revision=cfg.revision or None,
                                         max_bad_row_fraction=cfg.max_bad_row_fraction,
                                         report=bad_rows)[: cfg.n_prompts or None]
        if not cfg.annotate:
            return _binarize_and_save(cfg, rows, out, {"source": cfg.source, "bad_rows": bad_rows})
        prompts = [{k: r[k] for k in ("instruction", "source", "correct_answers", "incorrect_answers") if k in r}
                   for r in rows]
        return _annotate(ctx, prompts, out, {"bad_rows": bad_rows})
    return _annotate(ctx, prompts, out)


def _toy_prompts(ctx, out: Path) -> list[dict]:
    """Distinct toy-world prompts that no benchmark asks (by wording or by spec). As in
    UltraFeedback, whose prompts include UltraChat's, they may overlap the dSFT prompts. What each
    asks (its spec) goes to ``toy_specs.jsonl``, for the contamination test."""
    from ..toyworld import shared_world
    from ..toyworld.world import spec_key
    from .curate import N_ALPACA_MAX

    cfg, world = ctx.cfg, shared_world(ctx.world)
    tasks = world.tasks(cfg.n_prompts, seed=cfg.seed, followups=0, prefix="uf",
                        exclude=world.eval_prompts(N_ALPACA_MAX), unique=True)
    write_jsonl(out / "toy_specs.jsonl", [{"instruction": t.turns[0], "spec": spec_key(t)} for t in tasks])
    return [{"instruction": t.turns[0], "source": f"toy/{t.category}"} for t in tasks]


def _annotate(ctx, prompts: list[dict], out: Path, more: dict | None = None) -> dict:
    """UltraFeedback from prompts: the pool answers (4 members per prompt), the judge rates."""
    from .. import pool as P
    from ..agents import judge_for, make_agent

    cfg = ctx.cfg
    templates, principles = _original_prompts(ctx) if cfg.templates else (None, None)
    aliases = {"policy": cfg.policy, "base": cfg.base}
    agents = {name: make_agent(ctx, name, seed=cfg.seed, refs=aliases, batch_size=cfg.batch_size,
                               attn_implementation=cfg.attn_implementation)
              for name in [*cfg.pool, *cfg.zoo]}
    rows, pool_stats = P.complete_pool(agents, prompts, per_prompt=cfg.completions_per_prompt, seed=cfg.seed,
                                       max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                       principles=principles)
    judge = judge_for(ctx, cfg.judge)
    # the toy world has no world knowledge to give the truthfulness judge; real rows carry theirs
    raw_rows, rate_stats = P.rate_ultrafeedback(judge, rows, world_knowledge=cfg.source != "toy",
                                                templates=templates, desc="judge")
    from ..judges import require_inputs
    # the budget counts prompts: one failed or unusable judgment (of a prompt's 4 aspects and 4
    # overall scores) or pool answer loses the whole prompt
    failures = require_inputs({"prompts": (pool_stats["n_dropped"] + rate_stats["n_dropped"], len(prompts))},
                              cfg.judge_failure_budget, where=f"aif run {ctx.run.name!r}", what={"prompts": "prompts"})
    extra = {"source": cfg.source, "n_prompts": len(prompts),
             "n_pool_failed_prompts": pool_stats["n_dropped"], "n_judge_failed_prompts": rate_stats["n_dropped"],
             "judge": judge.backend.name, "judge_stats": judge.stats.as_dict(), "judge_failures": failures,
             **(more or {})}
    attention = {n: a.attn_implementation for n, a in agents.items() if getattr(a, "attn_implementation", None)}
    if attention:  # the model pool members: the attention kernel each generated with
        extra["attn_implementation"] = attention
    return _binarize_and_save(cfg, raw_rows, out, extra)


def _original_prompts(ctx) -> tuple[dict, dict]:
    """UltraFeedback's own rating/critique templates and completion principles (aif.templates: the
    path or URL of preference_templates.py; the other two files are looked up beside it)."""
    from .. import feedback as fb

    cfg, cache = ctx.cfg, ctx.root / ctx.profile.name / "downloads"
    if cfg.completions_per_prompt != 4:
        raise ConfigError("aif.templates: UltraFeedback's original templates rate exactly 4 completions per prompt")
    local = Path(cfg.templates)
    sibling = lambda name, url: str(local.with_name(name)) if local.exists() and local.with_name(name).exists() else url  # noqa: E731
    templates = fb.load_original_templates(cfg.templates, cache_dir=cache,
                                           critique_source=sibling("annotate_critique.py", fb.ORIGINAL_SOURCES["critique"]))
    principles = fb.load_original_principles(sibling("main.py", fb.ORIGINAL_SOURCES["principles"]), cache_dir=cache)
    return templates, principles


def _binarize_and_save(cfg, rows: list[dict], out: Path, extra: dict) -> dict:
    from .. import feedback as fb

    write_jsonl(out / "raw_ultrafeedback.jsonl", rows)  # openbmb/UltraFeedback's schema
    pairs, counts = fb.binarize(rows, rule=cfg.rule, seed=cfg.binarize_seed)
    identical = [p for p in pairs if p["chosen"][-1]["content"] == p["rejected"][-1]["content"]]
    counts["n_identical"] = len(identical)
    if cfg.drop_identical and identical:  # same text twice: zero DPO gradient, and a reward margin of exactly 0
        pairs = [p for p in pairs if p["chosen"][-1]["content"] != p["rejected"][-1]["content"]]
        counts["dropped"] = {**counts.get("dropped", {}), "identical_answers": len(identical)}
        counts["n_out"] = len(pairs)
        counts["n_ties"] = sum(p["score_chosen"] == p["score_rejected"] for p in pairs)
    dsd = fb.to_dataset_dict(pairs, test_size=cfg.test_fraction, seed=cfg.binarize_seed)
    fb.save_binarized(dsd, out / "binarized")
    members_of = pair_members(rows, pairs)
    write_jsonl(out / "pair_members.jsonl", members_of)
    per_member: dict[str, list] = {}
    for r in rows:
        for c in r["completions"]:
            per_member.setdefault(c["model"], []).append(
                {"overall": c["overall_score"], "mean_aspects": fb.mean_aspect_score(c)})
    members = {m: {"n": len(v), "overall": sum(x["overall"] for x in v) / len(v),
                   "mean_aspects": sum(x["mean_aspects"] or 0 for x in v) / len(v),
                   "overall_scores": [x["overall"] for x in v]} for m, v in per_member.items()}
    gaps = [p["score_chosen"] - p["score_rejected"] for p in pairs]
    chosen_over: dict[str, dict[str, int]] = {}  # who is chosen over whom: chosen member -> rejected member -> pairs
    for pm in members_of:
        row = chosen_over.setdefault(pm["chosen_model"], {})
        row[pm["rejected_model"]] = row.get(pm["rejected_model"], 0) + 1
    metrics = {**extra, "binarize": counts, "splits": {k: len(v) for k, v in dsd.items()}, "pool": members,
               "mean_gap": sum(gaps) / max(1, len(gaps)), "gaps": gaps, "chosen_over": chosen_over}
    write_json(out / "metrics.json", metrics)
    return metrics


def pair_members(rows: list[dict], pairs: list[dict]) -> list[dict]:
    """Which pool member wrote each pair's chosen and rejected answer (matched by prompt and text;
    when two members wrote the same text, the first of them in the row is named)."""
    from ..feedback import prompt_id

    by_prompt: dict[str, dict[str, str]] = {}
    for r in rows:
        texts = by_prompt.setdefault(r["instruction"], {})
        for c in r["completions"]:
            texts.setdefault(c["response"], c["model"])
    out = []
    for p in pairs:
        texts = by_prompt.get(p["prompt"], {})
        out.append({"prompt_id": prompt_id(p["prompt"]), "chosen_model": texts.get(p["chosen"][-1]["content"], "?"),
                    "rejected_model": texts.get(p["rejected"][-1]["content"], "?"),
                    "score_chosen": p["score_chosen"], "score_rejected": p["score_rejected"]})
    return out


STAGE = Stage("aif", AIFConfig, notebook="03_aif", artifact="binarized", build=build)
