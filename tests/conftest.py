"""Shared fixtures: the reference-data folder and a tiny trained-from-scratch model."""
from __future__ import annotations

import contextlib
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference-data"


@pytest.fixture(scope="session")
def reference_data() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (expected ../shared/reference-data beside the repo)")
    return REFERENCE


@pytest.fixture
def lm_head_rows(monkeypatch) -> list[int]:
    """The number of positions TRL's fused LM head scores, one entry per call (a spy on
    ``trl.trainer.utils._ChunkedLogProbFunction`` for this test)."""
    from trl.trainer import utils as trl_utils

    rows: list[int] = []
    chunked = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return chunked.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    return rows


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tokenizer trained on toy-world text and a tiny random-init MistralForCausalLM, saved."""
    from zephyr_lib import modeling
    from zephyr_lib.stages.base import BaseConfig
    from zephyr_lib.toyworld import World

    out = tmp_path_factory.mktemp("tiny_base") / "model"
    docs = World().pretraining_docs(1500, seed=0)
    tok = modeling.train_tokenizer(docs, 400, out)
    cfg = BaseConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256)
    modeling.build_model(tok, cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat_data(tmp_path_factory) -> Path:
    """A small ultrachat_200k-schema DatasetDict written by the toy teacher."""
    from zephyr_lib import curate
    from zephyr_lib.toyworld import World, toy_agent, write_dialogues

    w = World()
    tasks = w.tasks(240, seed=0, followups=0, categories=("math", "humanities", "stem"))
    dialogues = write_dialogues(w, toy_agent(w, "teacher_strong"), tasks)
    dsd = curate.split_dataset([curate.to_ultrachat_200k_row(d) for d in dialogues], test_frac=0.1, seed=0)
    return curate.save_dataset(dsd, tmp_path_factory.mktemp("chat") / "beta")


class LoopbackServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (a free port) with a lock for its counters; ``url`` is its
    OpenAI-compatible base (``/v1``). Tests subclass it with their own handler and state."""

    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@contextlib.contextmanager
def serving(server):
    """Run a loopback http.server on a thread for the duration of the block, then shut it down."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
