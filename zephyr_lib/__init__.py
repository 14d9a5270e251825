"""zephyr_lib: the shared library behind the Zephyr reproduction's stage notebooks.

Stages (one vocabulary everywhere: configs, modules, notebooks, run folders, glue keys):
base -> curate -> sft -> aif -> dpo -> eval -> results
(the registry: ``zephyr_lib.stages.STAGES``).
Run the whole pipeline with ``python -m zephyr_lib run --profile toy`` (or ``make book``).
"""
__version__ = "0.1.0"
