"""The toy world: the offline, clearly labelled stand-in for the paper's data sources and models.

- :mod:`.world`: a fictional knowledge base (towns with region, flag colour, population, goods)
  and a seeded task generator in MT-Bench's 8 categories, with a checkable spec per turn.
- :mod:`.agents`: the teacher (GPT-3.5 stand-in) and its variants, with defect profiles.
- :mod:`.checker`: grades an answer against its spec (what the judge stand-in uses).
- :mod:`.judge`: the judge (GPT-4 stand-in), which reads real judge prompts and replies in text.

Nothing here is a language model. It exists so the whole paper can run offline on a 2-core CPU.
"""
from .agents import ToyAgent, agent_profiles, toy_agent, write_dialogues  # noqa: F401
from .checker import Assessment, assess  # noqa: F401
from .world import CATEGORIES, Task, World  # noqa: F401


@__import__("functools").lru_cache(maxsize=4)
def shared_world(cfg) -> World:
    """One :class:`World` per world config in this process. The toy agents and the toy judge
    answer only prompts their world has generated, so every stage of a process that generates
    prompts, answers them and judges them must use the same instance."""
    return World(cfg)
