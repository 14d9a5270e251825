"""Preflight (zephyr_lib.preflight, `zephyr check`) against a loopback OpenAI-compatible server that
answers like OpenAI's API after 2026-10-23: GET /v1/models lists current models only, and a chat
completion for gpt-4-0613 gets HTTP 404 model_not_found.

Done-when of issue 23: `zephyr check` and the dry run fail in seconds naming the model, its
shutdown date and what to set; the pipeline and a stage never start generating against it.
"""
from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

import pytest
import yaml
from conftest import LoopbackServer, REPO, serving

from zephyr_lib import preflight

KEY = "sk-test-PREFLIGHT-0123456789abcdef"
ENV = "ZEPHYR_TEST_PREFLIGHT_KEY"
CURRENT = "gpt-6.1-sol"


class OpenAIToday(LoopbackServer):
    def __init__(self, list_models: bool = True):
        super().__init__(Handler)
        self.posts: list[dict] = []
        self.list_models = list_models


class Handler(BaseHTTPRequestHandler):
    server: OpenAIToday

    def log_message(self, *args):
        pass

    def _send(self, status: int, obj: dict):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _auth(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._send(401, {"error": {"code": "invalid_api_key", "message": f"Incorrect API key provided: "
                                       f"{self.headers.get('Authorization')}"}})
            return False
        return True

    def do_GET(self):  # noqa: N802
        if not self._auth():
            return
        if self.path != "/v1/models" or not self.server.list_models:
            return self._send(404, {"error": {"message": "no such route"}})
        self._send(200, {"object": "list", "data": [{"id": CURRENT, "object": "model"},
                                                    {"id": "gpt-4.1-mini", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with self.server.lock:
            self.server.posts.append(body)
        if not self._auth():
            return
        if body["model"] != CURRENT:
            return self._send(404, {"error": {"code": "model_not_found", "type": "invalid_request_error",
                                              "message": f"The model `{body['model']}` does not exist or you do "
                                                         "not have access to it."}})
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}}],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 1}})


@pytest.fixture
def server():
    with serving(OpenAIToday()) as srv:
        yield srv


def paper_with_judge(tmp_path, url: str, model: str, name: str = "paper_2023") -> str:
    """configs/paper.yaml with its judge endpoint as the paper had it (or ``model``) on ``url``."""
    raw = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    (ep,) = [n for n in raw["endpoints"]]
    raw["endpoints"][ep] = {"kind": "openai", "model": model, "base_url": url, "api_key_env": ENV}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


@pytest.fixture
def no_hub(monkeypatch):
    """The hub is not reachable from the test machine: hub checks report SKIP here."""
    seen = []

    def fake(ref, **kw):
        seen.append(ref)
        return preflight.Check(f"hub {ref.repo_type} {ref.repo}", "skip", "not checked in this test")

    monkeypatch.setattr(preflight, "check_hub", fake)
    return seen


def test_check_refuses_the_retired_judge_in_seconds_naming_model_date_and_setting(server, tmp_path, monkeypatch,
                                                                                   capsys, no_hub):
    from zephyr_lib.__main__ import main

    monkeypatch.setenv(ENV, KEY)
    profile = paper_with_judge(tmp_path, server.url, "gpt-4-0613")
    t0 = time.monotonic()
    assert main(["check", "--profile", profile]) == 1
    assert time.monotonic() - t0 < 10
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("FAIL") and "gpt-4-0613" in ln]
    assert "2026-10-23" in line and "endpoints.judge.model in" in line and CURRENT in line
    assert "eval" in line  # which runs use it
    assert server.posts == []  # a model known to be gone is not even called
    assert KEY not in out
    # the hub repositories of the plan were all asked for, with their pins
    repos = {(r.repo, r.revision) for r in no_hub}
    assert ("mistralai/Mistral-7B-v0.1", yaml.safe_load((REPO / "configs/paper.yaml").read_text())
            ["stages"]["base"].get("revision", "")) in repos
    assert any(r.repo == "HuggingFaceH4/zephyr-7b-beta" for r in no_hub)


def test_the_server_404_model_not_found_fails_the_check_before_the_announced_date(server, tmp_path, monkeypatch, no_hub):
    """Before the shutdown date the table lets it through; the server's own 404 still stops it."""
    monkeypatch.setenv(ENV, KEY)
    monkeypatch.setenv("ZEPHYR_TODAY", "2026-10-01")
    from zephyr_lib.plan import load_profile

    prof = load_profile(paper_with_judge(tmp_path, server.url, "gpt-4-0613"))
    checks = preflight.run_checks(prof, root=tmp_path, resources=False)
    judge = [c for c in checks if c.what.startswith("endpoint judge")]
    assert [c.status for c in judge] == ["ok", "fail"]
    assert "shuts down by OpenAI on 2026-10-23" in judge[0].detail
    assert "HTTP 404" in judge[1].detail and "model_not_found" in judge[1].detail and "gpt-4-0613" in judge[1].detail
    assert "endpoints.judge.model" in judge[1].detail
    assert [p["max_tokens"] for p in server.posts] == [1] and server.posts[0]["temperature"] == 0.0


def test_a_current_judge_passes_and_a_missing_or_wrong_key_is_named(server, tmp_path, monkeypatch, no_hub):
    from zephyr_lib.plan import load_profile

    prof = load_profile(paper_with_judge(tmp_path, server.url, CURRENT))
    monkeypatch.delenv(ENV, raising=False)
    (c,) = [c for c in preflight.run_checks(prof, root=tmp_path, resources=False) if c.what.startswith("endpoint")]
    assert c.status == "fail" and ENV in c.detail
    monkeypatch.setenv(ENV, "sk-wrong-key-0000000000000000")
    (c,) = [c for c in preflight.run_checks(prof, root=tmp_path, resources=False) if c.what.startswith("endpoint")]
    assert c.status == "fail" and "HTTP 401" in c.detail and "sk-wrong" not in c.detail
    monkeypatch.setenv(ENV, KEY)
    (c,) = [c for c in preflight.run_checks(prof, root=tmp_path, resources=False) if c.what.startswith("endpoint")]
    assert c.status == "ok" and "listed by GET" in c.detail
    server.list_models = False  # a server without /models: one one-token call instead
    (c,) = [c for c in preflight.run_checks(prof, root=tmp_path, resources=False) if c.what.startswith("endpoint")]
    assert c.status == "ok" and "one-token" in c.detail


def test_dry_run_fails_on_the_retired_judge(server, tmp_path, monkeypatch, no_hub):
    from zephyr_lib import launch_cli

    monkeypatch.setenv(ENV, KEY)
    lines: list[str] = []
    t0 = time.monotonic()
    plan = launch_cli.dry_run(paper_with_judge(tmp_path, server.url, "gpt-4-0613"), root=tmp_path, echo=lines.append)
    assert time.monotonic() - t0 < 10
    (err,) = [e for e in plan["errors"] if "gpt-4-0613" in e]
    assert "2026-10-23" in err and "endpoints.judge.model" in err
    assert any(ln.startswith("FAIL") and "gpt-4-0613" in ln for ln in lines)


def test_the_pipeline_and_a_stage_never_start_against_the_retired_judge(server, tmp_path, monkeypatch, no_hub):
    """run_pipeline stops before any stage runs; a stage opened directly (a notebook) stops before
    building: the eval stage's build (which would generate for hours) is never entered."""
    from zephyr_lib import page, runner, store
    from zephyr_lib.plan import load_profile

    monkeypatch.setenv(ENV, KEY)
    profile = paper_with_judge(tmp_path, server.url, "gpt-4-0613")
    started = []
    monkeypatch.setattr(runner, "execute_run", lambda *a, **k: started.append(a[1]))
    with pytest.raises(runner.StageFailed, match=r"preflight: .*gpt-4-0613.*2026-10-23"):
        runner.run_pipeline(profile, ["eval"], echo=lambda *a, **k: None)
    assert started == []

    import dataclasses

    from zephyr_lib import plan

    ctx = store.context(load_profile(profile), "eval", tmp_path)
    built = []
    ctx.run = dataclasses.replace(ctx.run, spec=dataclasses.replace(ctx.run.spec, build=lambda c, o: built.append(o)))
    monkeypatch.setattr(plan, "open_run", lambda *a, **k: ctx)
    with pytest.raises(preflight.PreflightError, match=r"eval.*gpt-4-0613.*2026-10-23"):
        page.open_stage("eval", profile)
    assert built == [] and server.posts == []
    assert not ctx.partial_dir.exists()


def test_toy_plan_has_nothing_to_check(capsys):
    from zephyr_lib.__main__ import main

    assert main(["check", "--profile", "toy"]) == 0
    assert "nothing to check" in capsys.readouterr().out


def test_resources_use_the_book_figures(tmp_path, no_hub):
    from zephyr_lib.plan import load_profile

    prof = load_profile("paper")
    checks = preflight.check_resources(prof, prof.order(), tmp_path, gpus=[40.0] * 8)
    (gpu,) = [c for c in checks if c.what == "GPU memory"]
    assert gpu.status == "fail" and "80 GB" in gpu.detail and "40 GB" in gpu.detail
    (disk,) = [c for c in checks if c.what.startswith("disk for") and "run(s)" in c.what]
    assert f"{sum(preflight.DISK_GB[r.stage] for r in prof.order()):.0f} GB" in disk.detail
    (gpu,) = [c for c in preflight.check_resources(prof, prof.order(), tmp_path, gpus=[80.0] * 8) if c.what == "GPU memory"]
    assert gpu.status == "ok"
    (gpu,) = [c for c in preflight.check_resources(prof, prof.order(), tmp_path, gpus=[]) if c.what == "GPU memory"]
    assert gpu.status == "skip"
