"""Strict profile loading: unknown keys, type coercion, overrides, hashes, secrets."""
from __future__ import annotations

import dataclasses
import textwrap

import pytest

from zephyr_lib.config import ConfigError, WorldConfig, parse_override, refuse_secret_names
from zephyr_lib.plan import describe, load_profile, stage_configs


def write(tmp_path, text: str):
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_every_profile_loads_and_orders_dependencies_first():
    for name in ("smoke", "toy", "paper"):
        prof = load_profile(name)
        order = [r.name for r in prof.order()]
        for r in prof.runs.values():
            for u in r.upstream:
                assert order.index(u) < order.index(r.name), (name, r.name, u)


def test_unknown_key_names_key_stage_and_file(tmp_path):
    path = write(tmp_path, """
        stages:
          sft: {learning_rate: 1.0e-3, learnin_rate: 2}
        runs: {base: {}, curate: {}, sft: {}}
    """)
    with pytest.raises(ConfigError) as e:
        load_profile(path)
    msg = str(e.value)
    assert "'learnin_rate'" in msg and "stage sft" in msg and "p.yaml" in msg


def test_yaml_traps_are_coerced_or_refused(tmp_path):
    # PyYAML reads 5e-7 (no dot) as the string '5e-7'; the field is a float
    prof = load_profile(write(tmp_path, """
        stages: {dpo: {learning_rate: 5e-7, num_train_epochs: "2"}}
        runs: {base: {}, curate: {}, sft: {}, aif: {}, dpo: {}}
    """))
    cfg = prof.runs["dpo"].config
    assert cfg.learning_rate == 5e-7 and isinstance(cfg.learning_rate, float)
    assert cfg.num_train_epochs == 2.0
    # `off` is a boolean to YAML: refused for a string field, with a hint
    with pytest.raises(ConfigError, match="quote the value"):
        load_profile(write(tmp_path, "stages: {sft: {lr_scheduler_type: off}}\nruns: {base: {}, curate: {}, sft: {}}\n"))
    with pytest.raises(ConfigError, match="expected an integer"):
        load_profile(write(tmp_path, "stages: {sft: {per_device_train_batch_size: 2.5}}\nruns: {base: {}, curate: {}, sft: {}}\n"))
    with pytest.raises(ConfigError, match="expected true/false"):
        load_profile(write(tmp_path, "stages: {sft: {packing: maybe}}\nruns: {base: {}, curate: {}, sft: {}}\n"))


def test_overrides_go_through_the_same_validation():
    prof = load_profile("smoke", ["sft.learning_rate=5e-7", "curate.truecase=off"])
    assert prof.runs["sft"].config.learning_rate == 5e-7
    assert prof.runs["curate"].config.truecase is False
    with pytest.raises(ConfigError, match="no_such_key") as e:
        load_profile("smoke", ["curate.no_such_key=1"])
    assert "curate" in str(e.value) and "smoke.yaml" in str(e.value)
    with pytest.raises(ConfigError, match="has no run 'nope'"):
        load_profile("smoke", ["nope.x=1"])
    with pytest.raises(ConfigError, match="run.key=value"):
        parse_override("learning_rate=1")
    with pytest.raises(ConfigError, match=r"warmup_ratio must be in \[0, 1\), got 1.5"):
        load_profile("smoke", ["sft.warmup_ratio=1.5"])


def test_one_override_shape_from_set_strings_and_from_a_notebook():
    from zephyr_lib.config import parse_overrides
    from zephyr_lib.plan import open_run, page_overrides

    sets = ["sft.seed=1", "curate.truecase=off", "sft.seed=2", "sft.learning_rate=5e-7"]  # values as YAML: '5e-7'
    assert parse_overrides(sets) == {"sft": {"seed": 2, "learning_rate": "5e-7"}, "curate": {"truecase": False}}
    assert parse_overrides(parse_overrides(sets)) == parse_overrides(sets)  # the dict passes as is
    assert load_profile("smoke", sets).overrides == parse_overrides(sets)
    assert load_profile("smoke", sets).run_hash("sft") == load_profile("smoke", parse_overrides(sets)).run_hash("sft")
    with pytest.raises(ConfigError, match=r"expected \{run: \{key: value\}\}"):
        parse_overrides({"sft": 1})
    # a notebook's parameter: {key: value} for its own run, {run: {key: value}} for any run, mixed
    assert page_overrides("sft", {"learning_rate": 1e-3, "curate": {"n_dialogues": 60}}) == \
        {"sft": {"learning_rate": 1e-3}, "curate": {"n_dialogues": 60}}
    assert page_overrides("sft", {"sft": {"seed": 1}, "learning_rate": 1e-3}) == {"sft": {"seed": 1, "learning_rate": 1e-3}}
    assert page_overrides("sft", None) == {}
    with pytest.raises(ConfigError, match=r"\{'curate': \{'n_dialogues': 60\}\}"):
        page_overrides("sft", {"curate.n_dialogues": 60})  # the old dotted form names the nested one
    with pytest.raises(ConfigError, match="given twice"):
        page_overrides("sft", {"sft": {"seed": 1}, "seed": 2})
    with pytest.raises(ConfigError, match="overrides must be a dict"):
        page_overrides("sft", ["learning_rate=1"])
    with pytest.raises(ConfigError, match="has no run 'nope'"):
        open_run("sft", "smoke", "sft", {"nope": {"x": 1}})
    with pytest.raises(ConfigError, match="no_such_key") as e:
        open_run("sft", "smoke", "sft", {"curate": {"no_such_key": 1}})
    assert "run 'curate'" in str(e.value)
    with pytest.raises(ConfigError, match="no_such_key") as e:
        open_run("sft", "smoke", "sft", {"no_such_key": 1})
    assert "run 'sft'" in str(e.value)


def test_hash_is_stable_and_propagates_downstream_only():
    a, b = load_profile("smoke"), load_profile("smoke")
    assert {n: a.run_hash(n) for n in a.runs} == {n: b.run_hash(n) for n in b.runs}
    c = load_profile("smoke", ["curate.n_dialogues=123"])
    assert c.run_hash("base") == a.run_hash("base")          # upstream of curate: unchanged
    assert c.run_hash("curate") != a.run_hash("curate")
    assert c.run_hash("sft") != a.run_hash("sft")            # downstream: rebuilt
    d = load_profile("smoke", ["sft.learning_rate=0.001"])   # same value as the file: same hash
    assert d.run_hash("sft") == a.run_hash("sft")


def test_runs_refer_to_existing_runs_and_no_cycles(tmp_path):
    with pytest.raises(ConfigError, match="refers to run 'ghost'"):
        load_profile(write(tmp_path, "runs: {base: {}, curate: {}, sft: {init: ghost}}\n"))
    with pytest.raises(ConfigError, match="cycle"):
        load_profile(write(tmp_path, "runs: {curate: {}, a: {stage: sft, init: b}, b: {stage: sft, init: a}}\n"))


def test_secret_like_parameters_are_refused():
    with pytest.raises(ConfigError, match="looks like a secret"):
        refuse_secret_names(["openai_api_key"])
    with pytest.raises(ConfigError, match="looks like a secret"):
        load_profile("smoke", ["sft.hf_token=abc"])
    refuse_secret_names(["judge_api_key_env"])  # the NAME of a variable is fine


def test_every_field_is_documented():
    for stage, cls in {**stage_configs(), "world": WorldConfig}.items():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{stage}.{f.name} has no help text"
        assert describe(stage).count("\n") >= len(dataclasses.fields(cls)) + 1
