"""The paper-scale install: the `paper` extra of pyproject.toml is requirements.txt plus
requirements-paper.txt, pin for pin (so `pip install -e '.[paper]'` installs torch, transformers
and TRL too); the paper pins are exact and stay out of requirements.txt (the CPU/toy install); the
SLURM example starts the one node command on every node."""
from __future__ import annotations

import re
import tomllib

from conftest import REPO


def _pins(path):
    lines = [ln.split("#", 1)[0].strip() for ln in (REPO / path).read_text().splitlines()]
    return {re.split(r"==", ln)[0].lower(): ln for ln in lines if ln}


def test_paper_extra_is_pinned_and_separate():
    paper = _pins("requirements-paper.txt")
    assert set(paper) == {"deepspeed", "peft", "bitsandbytes"} and all("==" in v for v in paper.values())
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["paper"]
    base = _pins("requirements.txt")
    assert not set(base) & (set(paper) | {"vllm", "flash-attn"})
    assert sorted(extra) == sorted([*base.values(), *paper.values()]) and len(extra) == len(set(extra))
    assert {"torch", "transformers", "trl", "datasets", "accelerate"} <= set(base)
    assert _pins("requirements-flash.txt") == {"flash-attn": "flash-attn==2.8.3.post2"}
    vllm = _pins("requirements-vllm.txt")
    assert vllm == {"vllm": "vllm==0.32.0"}


def test_slurm_example_runs_the_node_command_once_per_node():
    text = (REPO / "tools" / "slurm_example.sh").read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=8" in text
    assert "\nsrun --ntasks-per-node=1 " in text and "export ZEPHYR_MACHINE_RANK=$SLURM_NODEID" in text
    assert '"$PYTHON" -m zephyr_lib.launch_cli node --profile "$PROFILE"' in text and "export PROFILE STAGES" in text
    assert "ZEPHYR_MAIN_PROCESS_IP" in text and "--dry-run" in text
