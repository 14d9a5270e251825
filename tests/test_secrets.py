"""Secrets never become parameters: names that mean a credential, values shaped like keys, and
*_api_key_env values that are not variable names are refused -- without echoing the value --
before papermill writes anything."""
from __future__ import annotations

import pytest

from zephyr_lib.config import ConfigError, check_env_var_name, looks_like_secret_value, refuse_secret_names
from zephyr_lib.plan import load_profile

KEY = "sk-proj-Abc123Def456Ghi789Jkl012"


@pytest.mark.parametrize("name", ["max_new_tokens", "pad_token", "eos_token_id", "prompt_tokens", "max_tokens",
                                  "n_tokens", "judge_api_key_env", "teacher_api_key_env", "token_budget"])
def test_names_that_only_mention_tokens_are_fine(name):
    refuse_secret_names([name])


@pytest.mark.parametrize("name", ["openai_api_key", "api_key", "apikey", "hf_token", "access_token", "auth_token",
                                  "token", "secret", "client_secret", "password", "db_passwd", "credentials",
                                  "private_key", "github_token"])
def test_credential_names_are_refused(name):
    with pytest.raises(ConfigError, match="looks like a secret"):
        refuse_secret_names([name])


def test_valid_token_settings_pass_as_overrides():
    prof = load_profile("smoke", ["aif.max_new_tokens=64", "eval.max_new_tokens=48"])
    assert prof.runs["aif"].config.max_new_tokens == 64 and prof.runs["eval"].config.max_new_tokens == 48


@pytest.mark.parametrize("value", [KEY, "sk-abcdefghijklmnopqrstuv", "hf_AbCdEfGhIjKlMnOpQrStUvWx",
                                   "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "aB3dE5gH7jK9mN1pQ3sT5vW7xY9zA1cD3f",
                                   "Bearer sk-abcdefghijklmnopqrstuv"])
def test_key_shaped_values_are_detected(value):
    assert looks_like_secret_value(value)
    with pytest.raises(ConfigError) as e:
        refuse_secret_names({"judge_model": value})
    assert value not in str(e.value) and "not shown" in str(e.value)


@pytest.mark.parametrize("value", ["gpt-4-0613", "https://api.openai.com/v1", "mistralai/Mistral-7B-v0.1",
                                   "292c16329d921287c4166934cac1a6ad1e13a6c5", "configs/accelerate/zero3.yaml",
                                   "HuggingFaceH4/ultrafeedback_binarized", "dDPO − dSFT=dpo_base", "OPENAI_API_KEY",
                                   "I do not have personal opinions", 5, 0.7, None])
def test_ordinary_values_are_not_secrets(value):
    assert not looks_like_secret_value(value)


def test_an_api_key_env_must_be_a_variable_name_and_the_error_never_shows_the_value():
    assert check_env_var_name("OPENAI_API_KEY", "aif.judge_api_key_env") == "OPENAI_API_KEY"
    for bad in (KEY, "openai_api_key", "MY KEY", ""):
        with pytest.raises(ConfigError) as e:
            check_env_var_name(bad, "aif.judge_api_key_env")
        assert "aif.judge_api_key_env must be the NAME of an environment variable" in str(e.value)
        assert (bad not in str(e.value)) if bad else True
    with pytest.raises(ConfigError) as e:
        load_profile("smoke", [f"aif.judge_api_key_env={KEY}"])
    assert KEY not in str(e.value) and "judge_api_key_env" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_profile("smoke", [f"eval.judge_model={KEY}"])
    assert KEY not in str(e.value)


def test_nested_override_values_are_checked():
    with pytest.raises(ConfigError) as e:
        refuse_secret_names({"overrides": {"aif.judge_base_url": f"https://x.example/v1?key={KEY}"}}, "notebook parameter")
    assert "notebook parameter 'overrides.aif.judge_base_url'" in str(e.value) and KEY not in str(e.value)


def test_a_profile_with_a_key_in_an_env_field_is_refused_before_any_work(tmp_path, monkeypatch):
    from zephyr_lib.runner import run_pipeline

    monkeypatch.setattr("zephyr_lib.runner.RUNS_DIR", tmp_path / "runs")
    prof = tmp_path / "p.yaml"
    prof.write_text(f"runs: {{base: {{}}, curate: {{source: api, teacher_api_key_env: {KEY}}}}}\n")
    with pytest.raises(ConfigError) as e:
        run_pipeline(str(prof), ["curate"], echo=lambda *a, **k: None)
    assert "teacher_api_key_env" in str(e.value) and KEY not in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_the_runner_checks_notebook_parameters_before_papermill_writes_them(tmp_path, monkeypatch):
    from zephyr_lib import runner

    monkeypatch.setattr(runner, "RUNS_DIR", tmp_path / "runs")
    started = []
    monkeypatch.setattr(runner.subprocess, "Popen", lambda *a, **k: started.append(a))
    prof = load_profile("smoke")
    with pytest.raises(ConfigError) as e:
        runner.execute_run(prof, "curate", {"eval.judge_model": KEY}, False, 60, tmp_path / "logs")
    assert KEY not in str(e.value) and not started and not (tmp_path / "logs").exists()
