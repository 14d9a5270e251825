"""The README's recipes, followed in a temporary copy of the repository: a trainer-backed stage
(ORPO beside DPO) in five files and a benchmark in one class + one line, with no other file
edited; the command line then loads, describes and plans them."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from zephyr_lib.config import REPO


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: the recipe's anchor {old!r} is not there once"
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    for name in ("zephyr_lib", "configs", "notebooks"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "_toc.yml", root / "_toc.yml")
    # 1. the stage module: config, build, Stage record naming its TRL wrapper
    (root / "zephyr_lib" / "stages" / "orpo.py").write_text(textwrap.dedent('''\
        """Stage `orpo`: odds-ratio preference optimization (a recipe test's stage)."""
        from dataclasses import dataclass

        from ..config import opt, ref
        from ..stage import Stage
        from .training import TrainingConfig, train_and_probe


        @dataclass(frozen=True)
        class ORPOConfig(TrainingConfig):
            """Stage `orpo`: odds-ratio preference optimization with TRL."""

            init: str = ref("sft", "Run whose model is trained.")
            data: str = ref("aif", "Preference data run.")
            orpo_beta: float = opt(0.1, "ORPO's lambda.", gt=0)


        def build(ctx, out):
            return train_and_probe(ctx, out, probe_seed=30_000)


        STAGE = Stage("orpo", ORPOConfig, notebook="04b_orpo", artifact="model", build=build, resumable=True,
                      trainer="zephyr_lib.orpo")
        '''))
    # 2. the TRL wrapper
    (root / "zephyr_lib" / "orpo.py").write_text(textwrap.dedent('''\
        """The ORPO wrapper (a recipe test's stage): train(cfg, init, data, out) -> TrainResult."""
        from .trl_shared import TrainResult


        def train(cfg, init, data, out):
            return TrainResult(log_history=[], metrics={"steps": 0})
        '''))
    # 3. the page
    shutil.copy(root / "notebooks" / "04_dpo.ipynb", root / "notebooks" / "04b_orpo.ipynb")
    # 4. its name in the registry
    _edit(root / "zephyr_lib" / "stages" / "__init__.py", '"dpo", "eval"', '"dpo", "orpo", "eval"')
    # 5. one line in the table of contents
    _edit(root / "_toc.yml", "      - file: book/stages/04_dpo\n",
          "      - file: book/stages/04_dpo\n      - file: book/stages/04b_orpo\n")
    # a benchmark: one class and one line
    _edit(root / "zephyr_lib" / "evals" / "benchmarks.py", "\n\nBENCHMARKS: dict[str, type[Benchmark]] = {b.name: b for b in (MTBench, AlpacaEval, Leaderboard)}",
          textwrap.dedent('''

            class Tiny(Benchmark):
                """A recipe test's benchmark."""

                name, title = "tiny", "Tiny"
                columns = {"score": ("Tiny", 1.0)}
            ''') + "\n\nBENCHMARKS: dict[str, type[Benchmark]] = {b.name: b for b in (MTBench, AlpacaEval, Leaderboard, Tiny)}")
    # then use them in a profile
    prof = root / "configs" / "recipe.yaml"
    prof.write_text((REPO / "configs" / "smoke.yaml").read_text())
    return root


def zephyr(copy, *args):
    p = subprocess.run([sys.executable, "-m", "zephyr_lib", *args], cwd=copy, capture_output=True, text=True,
                       env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin", "HOME": str(copy),
                            "ZEPHYR_RUNS_DIR": str(copy / "runs")}, timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_a_trainer_stage_and_a_benchmark_added_by_the_readme_recipes(copy):
    described = zephyr(copy, "describe", "orpo")
    assert "Stage `orpo`" in described and "`orpo_beta`" in described and "`lora_r`" in described
    assert "one of mt_bench, alpaca_eval, leaderboard, tiny" in zephyr(copy, "describe", "eval")
    sets = ["--set", "eval.benchmarks=[mt_bench,tiny]", "--set", "eval.models=[sft,orpo]"]
    prof = copy / "configs" / "recipe.yaml"
    prof.write_text(prof.read_text().replace("\nruns:\n", "\nruns:\n  orpo: {}\n", 1))
    cfg = json.loads(zephyr(copy, "config", "--profile", "recipe", *sets))
    assert cfg["orpo"]["stage"] == "orpo" and set(cfg["orpo"]["upstream"]) == {"sft", "aif"}
    assert cfg["eval"]["config"]["benchmarks"] == ["mt_bench", "tiny"] and "orpo" in cfg["eval"]["upstream"]
    plan = zephyr(copy, "run", "--profile", "recipe", "--dry-run", "--stages", "eval", *sets)
    assert "## orpo (stage orpo @" in plan and "global_batch_size" in plan.split("## orpo")[1]
    # the existing stages keep their hashes: the recipe changed nothing they depend on
    smoke = json.loads(zephyr(copy, "config", "--profile", "smoke"))
    here = json.loads(subprocess.run([sys.executable, "-m", "zephyr_lib", "config", "--profile", "smoke"], cwd=REPO,
                                     capture_output=True, text=True, check=True).stdout)
    assert {n: r["hash"] for n, r in smoke.items()} == {n: r["hash"] for n, r in here.items()}
