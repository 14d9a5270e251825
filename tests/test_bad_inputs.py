"""Bad inputs refused at load time with one clear line naming the file, run and setting."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from zephyr_lib.config import ConfigError, build
from zephyr_lib.plan import load_profile, stage_configs


@pytest.mark.parametrize("bad", ["inf", "-inf", ".nan", "nan", "1e999"])
def test_every_float_field_refuses_non_finite_numbers(bad):
    import yaml

    value = yaml.safe_load(bad)
    checked = 0
    for stage, cls in stage_configs().items():
        for f in dataclasses.fields(cls):
            if typing.get_type_hints(cls)[f.name] is not float:
                continue
            with pytest.raises(ConfigError) as e:
                build(cls, {f.name: value}, f"run {stage!r}")
            assert f"run {stage!r}.{f.name}: expected a finite number" in str(e.value) and "\n" not in str(e.value)
            checked += 1
    assert checked >= 10
    with pytest.raises(ConfigError, match=r"override of run 'sft' .*learning_rate: expected a finite number"):
        load_profile("smoke", [f"sft.learning_rate={bad}"])


@pytest.mark.parametrize("setting, message", [
    ("aif.pool=[teacher, teacher_sloppy, teacher_strong, base, endpoint:nope]",
     "pool names 'endpoint:nope', but endpoint 'nope' is not defined; endpoints of this profile: toy"),
    ("eval.models=[sft, endpoint:nope]", "models names 'endpoint:nope', but endpoint 'nope' is not defined"),
    ("aif.n_prompts=0", "aif.n_prompts must be >= 1 for source 'toy', got 0"),
    ("curate.n_dialogues=0", "curate.n_dialogues must be >= 1 for source 'toy', got 0"),
    ("sft.seed=-1", "seed must be >= 0"),
    ("aif.completions_per_prompt=1", "completions_per_prompt must be >= 2"),
    ("eval.n_bootstrap=0", "n_bootstrap must be >= 100"),
])
def test_unknown_endpoints_and_zero_sized_work_name_the_setting(setting, message):
    with pytest.raises(ConfigError) as e:
        load_profile("smoke", [setting])
    run = setting.split(".")[0]
    assert message in str(e.value) and f"override of run {run!r}" in str(e.value) and "\n" not in str(e.value)


def test_binary_empty_and_non_mapping_profiles_are_one_line(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(ConfigError, match=r"binary.yaml: not a text \(UTF-8\) file: byte 0"):
        load_profile(str(binary))
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"runs:\x00\x00")
    with pytest.raises(ConfigError, match=r"nul.yaml: not a text file \(it holds NUL bytes\)"):
        load_profile(str(nul))
    for text in ("", "\n\n", "# only a comment\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        with pytest.raises(ConfigError, match=r"empty.yaml: the profile is empty"):
            load_profile(str(empty))
    listed = tmp_path / "list.yaml"
    listed.write_text("- sft\n- dpo\n")
    with pytest.raises(ConfigError, match=r"list.yaml: expected a YAML mapping .* got a list"):
        load_profile(str(listed))


def test_a_notebook_refuses_a_secret_shaped_papermill_parameter_in_its_first_cell(tmp_path):
    """papermill -p openai_api_key sk-… injects the key as a global in a cell after the
    parameters cell; the notebook's next cell (open_stage) refuses it before opening any run."""
    import subprocess
    import sys

    from conftest import REPO

    key = "sk-proj-" + "Ab3" * 12
    out = tmp_path / "out.ipynb"
    p = subprocess.run([sys.executable, "-m", "papermill", str(REPO / "notebooks" / "02_sft.ipynb"), str(out),
                        "-p", "profile", "smoke", "-p", "openai_api_key", key, "-k", "python3", "--cwd", str(REPO),
                        "--no-progress-bar"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode != 0
    assert "notebook parameter 'openai_api_key' looks like a secret" in p.stderr and key not in p.stderr
    assert "delete that file" in p.stderr
    # the value alone is enough, whatever the name
    from zephyr_lib.page import refuse_secret_globals

    with pytest.raises(ConfigError, match="notebook parameter 'judge' has a value that looks like an API key"):
        refuse_secret_globals({"__name__": "__main__", "profile": "toy", "judge": key, "In": [key]})
    refuse_secret_globals({"__name__": "__main__", "profile": "toy", "run": "sft", "overrides": {},
                           "max_new_tokens": 5, "In": [key], "_i1": key})  # the kernel's own history is not a parameter
