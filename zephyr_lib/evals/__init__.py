"""Evaluation protocols of the Zephyr paper, as pure Python.

- ``mt_bench``: FastChat llm_judge's MT-Bench (question/answer/judgment schemas, the exact GPT-4
  judge messages, rating and verdict parsing, aggregation, the per-category radar plot).
- ``alpaca_eval``: AlpacaEval 1 with the ``alpaca_eval_gpt4`` annotator (model_outputs.json,
  the per-instruction order swap, the ranking prompt and parser, win rate and standard error).
- ``leaderboard``: the Open LLM Leaderboard v1 through lm-evaluation-harness (local task YAMLs,
  ``run_lm_eval``, the paper's task settings, MMLU macro average).

No module here calls a judge: they build the judge messages, parse reply texts and aggregate.
Every builder has an inverse extractor so an offline stand-in judge can work from text alone.
"""
