"""The results tables' columns come from the benchmarks (Benchmark.columns/summary), with the
stored keys the pages read; None stays None."""
from zephyr_lib.evals.benchmarks import BENCHMARKS


def test_summaries_give_the_stored_row_keys():
    mt = BENCHMARKS["mt_bench"].summary({"overall": 6.5, "ci95": [6.1, 6.9]})
    assert mt == {"mt_bench": 6.5, "mt_lo": 6.1, "mt_hi": 6.9}
    ae = BENCHMARKS["alpaca_eval"].summary({"win_rate": 71.25, "standard_error": None, "n": 80})
    assert ae == {"alpaca": 71.25, "alpaca_se": None}
    lb = BENCHMARKS["leaderboard"].summary({"arc": 0.5, "hellaswag": 0.25, "mmlu": 0.375, "truthfulqa_mc2": 1})
    assert lb == {"arc": 50.0, "hellaswag": 25.0, "mmlu": 37.5, "truthfulqa_mc2": 100}
    assert type(lb["truthfulqa_mc2"]) is int  # as `100 * metric` always gave

