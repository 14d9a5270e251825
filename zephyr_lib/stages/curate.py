"""Stage `curate`: the UltraChat-style dSFT corpus, raw (α, as Zephyr-7B-α was trained on) and
curated (β: truecased, boilerplate filtered, deduplicated), in ultrachat_200k's schema.

The corpus comes from the toy world's teacher stand-in (``source: toy``), from a real teacher
endpoint through UltraChat's self-prompting loop (``source: api``), or from raw UltraChat files.
Notebook: ``notebooks/01_curate.ipynb``. Run: ``python -m zephyr_lib run --profile toy --stages curate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import N_ALPACA_MAX, ConfigError, StageConfig, endpoint, opt  # noqa: F401 (N_ALPACA_MAX: aif, training)
from ..io import write_json, write_jsonl
from ..stage import Stage


@dataclass(frozen=True)
class CurateConfig(StageConfig):
    """Stage `curate`: the UltraChat-style corpus (α, raw) and its curated version (β)."""

    source: str = opt("toy", "'toy' (the teacher stand-in writes the corpus), 'api' (the `teacher` endpoint writes it from teacher_seeds), HuggingFaceH4/ultrachat_200k (the paper's data as published, used as β), or a raw UltraChat .jsonl path or hub id (stingning/ultrachat).")
    revision: str = opt("", "Hub revision of `source` (empty = the default branch).", hash_omit_default=True)
    max_bad_row_fraction: float = opt(0.001, "source HuggingFaceH4/ultrachat_200k: share of a split's rows that may be malformed (dropped, counted by kind in metrics.json's bad_rows) before the run stops with the file, first bad row and field named.", ge=0, lt=1, hash_omit_default=True)
    teacher: str = endpoint("", "source 'api': the endpoint that plays the teacher and the user simulator (the paper: GPT-3.5-turbo).")
    teacher_failure_budget: float = opt(0.0, "source 'api': share of dialogues allowed to be lost to failed or unusable teacher replies before the run counts as incomplete (lost dialogues are dropped and counted either way).", ge=0, lt=1, hash_omit_default=True)
    teacher_seeds: str = opt("", "source 'api': a text file (path or URL) of topics or opening questions, one per line.", hash_omit_default=True)
    n_dialogues: int = opt(3000, "Dialogues the teacher writes (toy) or rows read (real data, 0 = all).", ge=0)
    max_followups: int = opt(1, "Most self-prompted follow-up turns per dialogue (UltraChat's loop).", ge=0)
    truecase: bool = opt(True, "Apply truecasing heuristics for β.")
    filter_boilerplate: bool = opt(True, "Drop dialogues whose assistant turns contain a boilerplate phrase, for β.")
    dedup: bool = opt(True, "Drop exact duplicate dialogues.")
    boilerplate_phrases: list[str] = opt([], "Phrases that mark boilerplate (empty = the library's default list).")
    test_fraction: float = opt(0.05, "Fraction of dialogues held out for test_sft / test_gen.", gt=0, lt=1)
    seed: int = opt(0, "Seed for generation and splits.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source == "api" and not (self.teacher and self.teacher_seeds):
            raise ConfigError("curate.source 'api' needs `teacher` (an endpoint name) and `teacher_seeds`")
        if self.source == "toy" and self.n_dialogues == 0:
            raise ConfigError("curate.n_dialogues must be >= 1 for source 'toy', got 0 (0 means 'every row' only "
                              "for real data)")


def build(ctx, out: Path) -> dict:
    from .. import curate as cur
    from ..toyworld import shared_world, toy_agent, write_dialogues

    cfg = ctx.cfg
    phrases = tuple(cfg.boilerplate_phrases) or cur.DEFAULT_PHRASES
    if cfg.source == cur.H4_HUB_ID or Path(cfg.source).name == "ultrachat_200k":  # hub id, or a local copy
        # the paper's dSFT data: H4's curated splits as they are (no α: the raw-UltraChat runs give that)
        metrics = cur.save_ultrachat_200k(cfg.source, out, revision=cfg.revision or None,
                                          max_bad_row_fraction=cfg.max_bad_row_fraction)
        write_json(out / "metrics.json", metrics)
        return metrics
    if cfg.source == "toy":
        world = shared_world(ctx.world)
        tasks = world.tasks(cfg.n_dialogues, seed=cfg.seed, followups=cfg.max_followups,
                            exclude=world.eval_prompts(N_ALPACA_MAX), prefix="uc")
        dialogues = write_dialogues(world, toy_agent(world, "teacher", seed=cfg.seed), tasks)
        raw = [cur.to_raw_ultrachat(t.id, d) for t, d in zip(tasks, dialogues)]
        from ..toyworld.world import spec_key
        write_jsonl(out / "toy_specs.jsonl", [{"id": t.id, "spec": spec_key(t)} for t in tasks])  # what each first turn asks
    elif cfg.source == "api":  # UltraChat's loop against a real teacher (cached, so resumable)
        from .. import ultrachat
        from ..agents import judge_for
        from ..io import fetch
        seeds = [x.strip() for x in fetch(cfg.teacher_seeds, ctx.root / "downloads").read_text().splitlines() if x.strip()]
        from ..judges import require_inputs
        teacher = judge_for(ctx, cfg.teacher)
        dialogues, stats = ultrachat.ultrachat_dialogues(teacher, seeds[: cfg.n_dialogues or None],
                                                         max_turns=1 + cfg.max_followups)
        # the budget counts dialogues: a failed call or an unusable (empty) reply drops its whole dialogue
        stats["teacher_failures"] = require_inputs({"dialogues": (stats["n_dropped"], stats["n_seeds"])},
                                                   cfg.teacher_failure_budget,
                                                   where=f"curate run {ctx.run.name!r} (teacher)",
                                                   what={"dialogues": "dialogues"})
        write_json(out / "teacher_stats.json", {k: v for k, v in stats.items() if k != "kept"})
        raw = ultrachat.raw_ultrachat_rows(dialogues)
    else:
        raw = list(cur.load_raw_ultrachat(cfg.source, limit=cfg.n_dialogues))
    write_jsonl(out / "raw_ultrachat.jsonl", raw)  # raw UltraChat's schema: {"id", "data": [...]}
    alpha, alpha_report = cur.curate(raw, phrases=phrases, truecase=False, filter_boilerplate=False, dedup=cfg.dedup,
                                     source=cfg.source)
    beta, beta_report = cur.curate(raw, phrases=phrases, truecase=cfg.truecase,
                                   filter_boilerplate=cfg.filter_boilerplate, dedup=cfg.dedup, source=cfg.source)
    sizes = {}
    for name, kept in (("alpha", alpha), ("beta", beta)):
        dsd = cur.split_dataset([cur.to_ultrachat_200k_row(m) for m in kept], test_frac=cfg.test_fraction, seed=cfg.seed)
        cur.save_dataset(dsd, out / name)
        sizes[name] = {split: len(ds) for split, ds in dsd.items()}
    rates = {name: cur.defect_rates([m["content"] for d in kept for m in d if m["role"] == "assistant"], phrases)
             for name, kept in (("alpha", alpha), ("beta", beta))}
    metrics = {"n_generated": len(raw), "splits": sizes, "defects": rates,
               "alpha_report": _slim(alpha_report), "beta_report": _slim(beta_report)}
    write_json(out / "examples.json", beta_report.get("truecase_examples", []))
    write_json(out / "metrics.json", metrics)
    return metrics


def _slim(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("truecase_examples", "errors")}


STAGE = Stage("curate", CurateConfig, notebook="01_curate", artifact="beta", build=build)
