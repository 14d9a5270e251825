"""vLLM as an optional, faster generation backend with the agents' ``respond_many`` interface.

``generation_agent(path, name)`` returns a :class:`VLLMAgent` when the ``vllm`` package is
importable and a CUDA device exists, else the transformers-based ``generate.ModelAgent``; both
answer ``respond_many(conversations, max_new_tokens=, temperature=, temperatures=, desc=,
return_stopped=)`` the same way: the tokenizer's chat template with the generation prompt, token
ids passed as-is (no second BOS), greedy at temperature 0, per-conversation temperatures by
grouping, answers stripped and in input order, ``stopped`` = the model ended by itself
(finish_reason "stop") rather than hitting ``max_new_tokens``.

GPU memory: vLLM reserves ``gpu_memory_utilization`` (its default 0.9) of the GPU for weights and
KV cache, so lm-eval cannot load the same model beside it. :func:`memory_plan` orders an eval of
one model: the generation benchmarks first (vLLM at the configured fraction), then
:func:`release` (engine deleted, vLLM's process groups destroyed, ``torch.cuda.empty_cache()``),
then lm-eval alone on the GPU.

vLLM is not a dependency of this project: install it on a CUDA machine (``requirements-paper.txt``)
to use it. Sampled answers (temperature > 0) are reproducible for a given seed and batch, but
not bitwise equal to transformers' samples.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Sequence

from .agent import Agent

log = logging.getLogger(__name__)

BACKENDS = ("auto", "vllm", "transformers")


class VLLMUnavailableError(RuntimeError):
    """vLLM was asked for explicitly but cannot run here (package missing or no CUDA device)."""


def _vllm_installed() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def _cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch / broken driver: no CUDA
        return False


def available() -> bool:
    """True when the vllm package is importable and a CUDA device exists."""
    return _vllm_installed() and _cuda()


def _import_vllm():
    if not _vllm_installed():
        raise VLLMUnavailableError(
            "generation backend 'vllm' needs the vllm package, which is not installed in this "
            "environment: install it on a Linux machine with a CUDA GPU (pip install vllm), or use "
            "backend='transformers' (or 'auto', which falls back to transformers generation)")
    if not _cuda():
        raise VLLMUnavailableError(
            "generation backend 'vllm' needs a CUDA device, and none is visible here; use "
            "backend='transformers' (or 'auto', which falls back to transformers generation)")
    return importlib.import_module("vllm")


class VLLMAgent:
    """A model served in-process by ``vllm.LLM``; same interface as ``generate.ModelAgent``.

    ``path``: a local model folder or a hub id (its tokenizer must carry the chat template, as
    every model this project saves does). ``llm_kwargs`` go to ``vllm.LLM`` (e.g. dtype,
    gpu_memory_utilization, max_model_len).
    """

    attn_implementation = "vllm"  # vLLM picks its own attention backend (flash-attn where it can)

    def __init__(self, path: str | Path, name: str | None = None, tensor_parallel_size: int = 1, seed: int = 0,
                 *, top_p: float = 1.0, **llm_kwargs: Any):
        vllm = _import_vllm()
        from transformers import AutoTokenizer

        self.path = Path(path) if Path(str(path)).exists() else path  # a hub id stays a string
        self.name = name or Path(str(path)).name
        self.seed, self.top_p = seed, top_p
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{path}: the tokenizer has no chat template")
        self._sampling_params = vllm.SamplingParams
        self.llm = vllm.LLM(model=str(path), tokenizer=str(path), tensor_parallel_size=int(tensor_parallel_size),
                            seed=int(seed), **llm_kwargs)

    def __repr__(self) -> str:
        return f"VLLMAgent(name={self.name!r}, path={str(self.path)!r})"

    def _params(self, temperature: float, max_new_tokens: int, top_p: float | None = None):
        eos = self.tokenizer.eos_token_id
        top_p = self.top_p if top_p is None else top_p
        kw: dict[str, Any] = {"temperature": float(temperature), "top_p": top_p if temperature > 0 else 1.0,
                              "max_tokens": int(max_new_tokens), "skip_special_tokens": True}
        if eos is not None:
            kw["stop_token_ids"] = [int(eos)]
        return self._sampling_params(**kw)

    def respond_many(self, conversations: Sequence[list[dict]], *, max_new_tokens: int = 128,
                     temperature: float = 0.0, temperatures: Sequence[float] | None = None,
                     top_p: float | None = None, desc: str | bool | None = None, return_stopped: bool = False):
        """The :class:`zephyr_lib.agent.Agent` call; ``top_p`` (None: the agent's own) applies to
        sampled answers."""
        if self.llm is None:
            raise RuntimeError(f"{self.name}: the vLLM engine was released (vllm_backend.release); make a new agent")
        convs = [list(c) for c in conversations]
        temps = [float(t) for t in temperatures] if temperatures is not None else [float(temperature)] * len(convs)
        if len(temps) != len(convs):
            raise ValueError(f"{len(temps)} temperatures for {len(convs)} conversations")
        prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        out: list[str | None] = [None] * len(convs)
        stopped = [False] * len(convs)
        groups: dict[float, list[int]] = {}
        for i, t in enumerate(temps):
            groups.setdefault(t, []).append(i)
        for t, idx in groups.items():
            if desc:
                log.info("%s: %d conversation(s) at temperature %s", desc, len(idx), t)
            results = self.llm.generate([{"prompt_token_ids": ids[i]} for i in idx], self._params(t, max_new_tokens, top_p),
                                        use_tqdm=bool(desc))
            if len(results) != len(idx):
                raise RuntimeError(f"vllm returned {len(results)} outputs for {len(idx)} prompts")
            for i, r in zip(idx, results):
                best = r.outputs[0]
                out[i] = best.text.strip()
                stopped[i] = best.finish_reason == "stop"
        return (out, stopped) if return_stopped else out


DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default


def memory_plan(benchmarks: Sequence[str], *, use_vllm: bool,
                gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
                gpu_gib: float | None = None, model_gib: float | None = None,
                setting: str = "eval.vllm_gpu_memory_utilization") -> dict:
    """How one model's evaluation shares the GPU between vLLM and lm-eval.

    Returns ``{"steps": [...], "gpu_memory_utilization": f}``: the generation benchmarks (MT-Bench,
    AlpacaEval) first, with vLLM holding fraction ``f`` of the GPU when ``use_vllm``; then, if a
    log-likelihood benchmark follows, ``"release"`` (:func:`release` the generation agent) before
    ``"leaderboard"`` loads the model into lm-eval on an empty GPU. The two never hold the GPU at
    the same time. With ``gpu_gib`` and ``model_gib`` (weights), a fraction that cannot hold
    the weights is a ValueError naming ``setting``."""
    from .evals.benchmarks import BENCHMARKS  # their order, and which score log-likelihoods (needs_weights)

    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"memory_plan: unknown benchmark(s) {unknown}")
    f = float(gpu_memory_utilization)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"{setting}={gpu_memory_utilization!r}: must be in (0, 1]")
    if use_vllm and gpu_gib is not None and model_gib is not None and f * gpu_gib <= model_gib:
        raise ValueError(f"{setting}={f}: vLLM would get {f * gpu_gib:.1f} GiB of the {gpu_gib:.0f} GiB GPU, "
                         f"not enough for the model's {model_gib:.1f} GiB of weights plus a KV cache")
    gen = [b for b, cls in BENCHMARKS.items() if b in benchmarks and not cls.needs_weights]
    ll = [b for b, cls in BENCHMARKS.items() if b in benchmarks and cls.needs_weights]
    steps = list(gen)
    if ll and gen:
        steps.append("release")
    steps += ll
    return {"steps": steps, "gpu_memory_utilization": f if use_vllm and gen else None}


def release(agent: Any) -> None:
    """Free the GPU memory a generation agent holds, before another model (lm-eval) is loaded.

    A VLLMAgent: its engine is deleted and vLLM's model-parallel and distributed state destroyed
    (so a second engine or lm-eval can start in the same process); a ModelAgent: its model is
    deleted. Then garbage collection and ``torch.cuda.empty_cache()``. The agent cannot generate
    afterwards (its ``respond_many`` raises)."""
    import gc

    if isinstance(agent, VLLMAgent):
        if getattr(agent, "llm", None) is not None:
            agent.llm = None
            try:
                from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
            except ImportError:  # an older/newer vLLM layout: deleting the engine is what remains
                log.warning("vllm.distributed.parallel_state not found: the engine was deleted without destroying "
                            "its process groups")
            else:
                destroy_model_parallel()
                destroy_distributed_environment()
    elif getattr(agent, "model", None) is not None:
        agent.model = None
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except ImportError:
        pass


def generation_agent(path: str | Path, name: str | None = None, backend: str = "auto", *, seed: int = 0,
                     batch_size: int = 32, tensor_parallel_size: int = 1, device: str = "auto",
                     attn_implementation: str = "auto", **vllm_kwargs: Any) -> Agent:
    """A generation agent for a trained model: VLLMAgent or generate.ModelAgent.

    backend="auto": vLLM when :func:`available` (package importable and CUDA present), else
    transformers (``batch_size`` applies there; vLLM options are then ignored).
    backend="vllm": vLLM or :class:`VLLMUnavailableError` saying why. backend="transformers":
    always ``generate.ModelAgent``, on ``device`` (``modeling.resolve_device``: auto = the GPU when
    there is one) with ``attn_implementation`` (``modeling.resolve_attn_implementation``; vLLM uses
    its own kernels). The agent's ``attn_implementation`` says which attention it runs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r}; expected one of {BACKENDS}")
    if backend == "vllm" or (backend == "auto" and available()):
        return VLLMAgent(path, name, tensor_parallel_size=tensor_parallel_size, seed=seed, **vllm_kwargs)
    if backend == "transformers" and vllm_kwargs:
        raise TypeError(f"options {sorted(vllm_kwargs)} apply to backend='vllm' only")
    if backend == "auto" and (vllm_kwargs or tensor_parallel_size != 1):
        log.info("vllm unavailable: generating with transformers; ignoring vllm options %s",
                 sorted(vllm_kwargs) + (["tensor_parallel_size"] if tensor_parallel_size != 1 else []))
    from .generate import ModelAgent
    return ModelAgent(path, name=name, batch_size=batch_size, seed=seed, device=device,
                      attn_implementation=attn_implementation)
