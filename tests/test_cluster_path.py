"""The cluster path of issue 23, without a cluster:

* ``tools/slurm_example.sh`` / ``tools/submit_paper.sh`` on a fresh clone (no runs/, no .venv) with
  fake ``sbatch``, ``srun`` and ``scontrol`` on PATH that record what they are asked to run;
* ``zephyr fetch`` fills a local fixture hub cache (the download is replaced by one that writes
  the cache layout; the URL files come from a loopback server), then ``HF_HUB_OFFLINE=1 zephyr run
  --dry-run`` in a fresh process finds every repository of the plan there.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import REPO, serving

FAKES = {
    "sbatch": 'echo "sbatch $*" >> "$FAKE_LOG"; echo "4242$FAKE_N"; ',
    "srun": 'echo "PYTHON=$PYTHON PROFILE=$PROFILE STAGES=$STAGES" >> "$FAKE_LOG"; echo "srun $*" >> "$FAKE_LOG"',
    "scontrol": 'echo gpu001; echo gpu002',
}


@pytest.fixture
def fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    assert not (clone / "runs").exists() and not (clone / ".venv").exists()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    # the "active environment": a python on PATH that can import the clone's zephyr_lib
    py = bin_dir / "python3"
    py.write_text(f'#!/usr/bin/env bash\nexec {sys.executable} "$@"\n')
    py.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "FAKE_LOG": str(tmp_path / "calls.log"),
           "PYTHONPATH": str(clone), "SLURM_JOB_NODELIST": "gpu[001-002]", "SLURM_SUBMIT_DIR": str(clone),
           "SLURM_CPUS_PER_TASK": "64"}
    return clone, env, tmp_path / "calls.log", py


def test_training_job_on_a_fresh_clone(fresh_clone):
    clone, env, log, py = fresh_clone
    r = subprocess.run(["bash", "tools/slurm_example.sh"], cwd=clone, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "HF_TOKEN is not set" in r.stderr and "Mistral-7B-v0.1" in r.stderr
    assert not log.exists()  # nothing started without the token
    r = subprocess.run(["bash", "tools/slurm_example.sh"], cwd=clone, env={**env, "HF_TOKEN": "hf_test"},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (clone / "runs" / "logs").is_dir()
    calls = log.read_text().splitlines()
    assert calls[0] == f"PYTHON={py} PROFILE=paper STAGES=dpo"  # the active environment's interpreter
    assert calls[1].startswith("srun --ntasks-per-node=1 --cpus-per-task=64 --kill-on-bad-exit=1 bash -c")
    assert '  exec "$PYTHON" -m zephyr_lib.launch_cli node --profile "$PROFILE"' in log.read_text()
    # offline compute nodes need no token once `zephyr fetch` filled the cache
    log.unlink()
    r = subprocess.run(["bash", "tools/slurm_example.sh"], cwd=clone, env={**env, "HF_HUB_OFFLINE": "1"},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # no python with zephyr_lib: a clear error, not a traceback on 16 GPUs
    r = subprocess.run(["bash", "tools/slurm_example.sh"], cwd=clone,
                       env={**env, "HF_TOKEN": "x", "ZEPHYR_PYTHON": "/usr/bin/false"}, capture_output=True, text=True)
    assert r.returncode == 2 and "activate the paper environment" in r.stderr


def test_submit_chains_a_one_gpu_eval_job_after_training(fresh_clone):
    clone, env, log, _ = fresh_clone
    r = subprocess.run(["bash", "tools/submit_paper.sh"], cwd=clone, env={**env, "ZEPHYR_SKIP_DRY_RUN": "1"},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    train, ev = log.read_text().splitlines()
    assert train == "sbatch --parsable --export=ALL tools/slurm_example.sh"
    assert ev == "sbatch --parsable --export=ALL --dependency=afterok:4242 tools/slurm_eval.sh"
    text = (clone / "tools" / "slurm_eval.sh").read_text()
    assert "#SBATCH --gpus-per-node=1" in text and "#SBATCH --nodes=1" in text and "--stages eval,results" in text
    log.unlink()
    r = subprocess.run(["bash", "tools/slurm_eval.sh"], cwd=clone, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "srun --ntasks=1 --cpus-per-task=64 " in log.read_text() and (clone / "runs" / "logs").is_dir()


class FilesAndModels(SimpleHTTPRequestHandler):
    """Serves the reference files, and GET /v1/models as an OpenAI-compatible judge would."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if self.path == "/v1/models":
            body = json.dumps({"data": [{"id": "gpt-6.1-sol"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


def fake_download(cache: Path, seen: list):
    """Writes what snapshot_download would: <type>s--org--name/snapshots/<commit>/<files> (+ refs/main)."""
    def download(ref):
        seen.append(ref)
        folder = cache / f"{ref.repo_type}s--{ref.repo.replace('/', '--')}"
        sha = ref.revision or "f" * 40
        snap = folder / "snapshots" / sha
        for name in ref.files or ("config.json",):
            (snap / name).parent.mkdir(parents=True, exist_ok=True)
            (snap / name).write_text("{}")
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(sha)
        return str(snap)
    return download


def test_fetch_then_an_offline_dry_run_finds_everything(reference_data, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from zephyr_lib import fetch
    from zephyr_lib.plan import load_profile

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    handler = functools.partial(FilesAndModels, directory=str(reference_data))
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as srv:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        raw = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
        raw["endpoints"]["judge"].update(base_url=f"{url}/v1", api_key_env="ZEPHYR_TEST_FETCH_KEY")
        raw["stages"]["eval"].update(
            mt_bench_questions=f"{url}/mt_bench/question.jsonl", judge_prompts=f"{url}/mt_bench/judge_prompts.jsonl",
            mt_bench_references=f"{url}/mt_bench/reference_answer/gpt-4.jsonl",
            alpaca_rejudge=f"{url}/alpaca_eval/zephyr-7b-beta_outputs.json")
        path = tmp_path / "paper_fetch.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        prof = load_profile(str(path))
        seen, lines = [], []
        assert fetch.fetch_plan(prof, root=tmp_path / "runs", echo=lines.append,
                                download=fake_download(cache, seen)) == 0
        assert {(r.repo, r.revision) for r in seen} >= {
            ("mistralai/Mistral-7B-v0.1", raw["stages"]["base"]["revision"]),
            ("HuggingFaceH4/zephyr-7b-beta", "3bac358730f8806e5c3dc7c7e19eb36e045bf720"),
            ("HuggingFaceH4/ultrachat_200k", ""), ("HuggingFaceH4/ultrafeedback_binarized", raw["stages"]["aif"]["revision"]),
            ("tatsu-lab/alpaca_eval", "")}
        downloads = sorted(p.name for p in (tmp_path / "runs" / "paper_fetch" / "downloads").glob("*.json*")
                           if not p.name.endswith(".source.json"))
        assert len(downloads) == 4 and all("FAIL" not in ln for ln in lines)

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "ZEPHYR_RUNS_DIR": str(tmp_path / "runs"),
               "ZEPHYR_TEST_FETCH_KEY": "sk-test-0000000000000000", "PYTHONPATH": str(REPO)}
        r = subprocess.run([sys.executable, "-m", "zephyr_lib", "run", "--profile", str(path), "--dry-run"],
                           env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        hub_lines = [ln for ln in r.stdout.splitlines() if " hub " in f" {ln}" and ln[:4] in ("OK  ", "FAIL")]
        assert len(hub_lines) == len({(x.repo, x.revision) for x in seen}) and all(ln.startswith("OK") for ln in hub_lines)
        assert "in the local hub cache" in hub_lines[0]
        # and without the fetch: every repository is named as missing, with the fix
        env["HF_HUB_CACHE"] = str(tmp_path / "empty")
        r = subprocess.run([sys.executable, "-m", "zephyr_lib", "check", "--profile", str(path), "--stages", "base"],
                           env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 1 and "FAIL hub model mistralai/Mistral-7B-v0.1" in r.stdout and "zephyr fetch" in r.stdout
