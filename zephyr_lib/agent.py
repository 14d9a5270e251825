"""The one protocol of everything that answers prompts (foundation floor: no package imports).

Every kind :func:`zephyr_lib.agents.make_agent` returns satisfies :class:`Agent` (a test checks
it with ``isinstance``): the toy world's programs (``toyworld.ToyAgent``), a trained model
(``generate.ModelAgent``, or ``vllm_backend.VLLMAgent`` on a GPU) and a model behind an endpoint
(``agents.OpenAIAgent``). It sits on the foundation floor so that each of them, and each caller
(the pool, the benchmarks, the eval stage, the training probe), can name it without an import
circle; :mod:`zephyr_lib.agents` re-exports it beside the factory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol, Sequence, overload, runtime_checkable


@runtime_checkable
class Agent(Protocol):
    """Anything that answers prompts.

    ``name``: what the agent is called in logs and outputs. ``path``: the model's weights (a local
    folder, or a hub id as a string) for benchmarks that load them themselves (log-likelihood
    scoring); ``None`` for programs and API models, which have none.

    ``respond_many`` answers each conversation (its last turn is the user's), in input order.
    ``temperatures`` gives one temperature per conversation (it overrides ``temperature``);
    ``top_p`` is nucleus sampling's mass (1.0: off); ``desc`` labels the progress bar (False: none).
    An answer is ``None`` only for a failed API call where the agent was asked to return one
    (``OpenAIAgent(on_error="none")``). With ``return_stopped=True`` it returns ``(answers,
    stopped)``, ``stopped[i]`` saying whether answer ``i`` ended by itself (eos) within
    ``max_new_tokens``; an agent that cannot know raises ``NotImplementedError``.
    """

    name: str
    path: str | Path | None

    @overload
    def respond_many(self, conversations: Sequence[list[dict]], *, max_new_tokens: int = ...,
                     temperature: float = ..., temperatures: Sequence[float] | None = ..., top_p: float = ...,
                     desc: str | bool | None = ..., return_stopped: Literal[False] = ...) -> list[str | None]: ...

    @overload
    def respond_many(self, conversations: Sequence[list[dict]], *, max_new_tokens: int = ...,
                     temperature: float = ..., temperatures: Sequence[float] | None = ..., top_p: float = ...,
                     desc: str | bool | None = ...,
                     return_stopped: Literal[True]) -> tuple[list[str | None], list[bool]]: ...

    def respond_many(self, conversations, *, max_new_tokens=128, temperature=0.0, temperatures=None, top_p=1.0,
                     desc=None, return_stopped=False): ...
