"""Open LLM Leaderboard via lm-eval (zephyr_lib.evals.leaderboard) on a tiny random Mistral."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zephyr_lib.evals import leaderboard as lb

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"


# ---------------------------------------------------------------- settings and averages

def test_macro_vs_micro_average():
    scores = {"anatomy": 0.5, "virology": 1.0, "marketing": 0.25}
    sizes = {"anatomy": 100, "virology": 300, "marketing": 100}
    assert lb.macro_average(scores) == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    assert lb.micro_average(scores, sizes) == pytest.approx((50 + 300 + 25) / 500)
    with pytest.raises(ValueError, match="no size"):
        lb.micro_average(scores, {"anatomy": 1})
    with pytest.raises(ValueError):
        lb.macro_average({})


def test_paper_settings_match_installed_lm_eval():
    installed = sorted(p.stem[len("mmlu_"):] for p in (LM_EVAL_TASKS / "mmlu" / "default").glob("mmlu_*.yaml"))
    assert list(lb.MMLU_SUBJECTS) == installed and len(installed) == 57
    bench = lb.PAPER_SETTINGS["benchmarks"]
    assert {k: (v["task"], v["num_fewshot"], v["metric"]) for k, v in bench.items()} == {
        "arc": ("arc_challenge", 25, "acc_norm"), "hellaswag": ("hellaswag", 10, "acc_norm"),
        "mmlu": ("mmlu", 5, "acc"), "truthfulqa": ("truthfulqa_mc2", 0, "acc")}
    assert bench["mmlu"]["average"] == "macro" and len(bench["mmlu"]["subtasks"]) == 57
    assert lb.PAPER_SETTINGS["add_bos_token"] is False
    for task in ("arc/arc_challenge.yaml", "hellaswag/hellaswag.yaml", "truthfulqa/truthfulqa_mc2.yaml"):
        assert (LM_EVAL_TASKS / task).is_file()


# ---------------------------------------------------------------- task writers

ARC = [{"question": f"What comes after {i}?", "choices": [str(i + 1), f"the number {i + 7}", "a cat"],
        "answer": i % 3} for i in range(10)]
HELLASWAG = [{"context": f"Cooking: A man holds pan number {i}. He", "endings": [" cooks.", " flies far away.",
                                                                                  " sings a long song."],
              "label": i % 3} for i in range(6)]
MMLU = [{"question": f"Which letter is {c}?", "choices": ["a", "b", "c", "d"], "answer": i}
        for i, c in enumerate("abcd")]
# answers of equal token length, so the random model gives them comparable probabilities
TQA = [{"question": "Which code is valid?", "mc2_targets": {"choices": ["Xq.", "Zq.", "Wq."], "labels": [1, 0, 1]}},
       {"question": "What is 2+2?", "mc2_targets": {"choices": ["4.", "Four."], "labels": [1, 1]}}]


def test_written_yaml_uses_absolute_paths_and_lm_eval_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = lb.write_mc_task("tasks", "t_arc", ARC, "arc", fewshot_rows=ARC[:3])
    config = yaml.safe_load(path.read_text())
    files = config["dataset_kwargs"]["data_files"]
    assert set(files) == {"test", "train"} and all(Path(f).is_absolute() and Path(f).is_file() for f in files.values())
    assert config["num_fewshot"] == 3  # min(25, number of few-shot rows)
    arc_yaml = yaml.safe_load((LM_EVAL_TASKS / "arc" / "arc_easy.yaml").read_text())
    assert config["doc_to_text"] == arc_yaml["doc_to_text"] == "Question: {{question}}\nAnswer:"
    assert [m["metric"] for m in config["metric_list"]] == ["acc", "acc_norm"]

    path = lb.write_mc_task(tmp_path / "tasks", "t_tqa", TQA, "truthfulqa_mc2")
    text = path.read_text()
    assert text.endswith("process_results: !function zephyr_lm_eval_utils.process_results_mc2\n")
    assert "from lm_eval.tasks.truthfulqa.utils import process_results_mc2" in (
        tmp_path / "tasks" / "zephyr_lm_eval_utils.py").read_text()
    mc1 = yaml.safe_load((LM_EVAL_TASKS / "truthfulqa" / "truthfulqa_mc1.yaml").read_text())
    assert yaml.safe_load(text.split("process_results:")[0])["doc_to_text"] == mc1["doc_to_text"]

    names = lb.write_mmlu_tasks(tmp_path / "tasks", {"college_biology": MMLU}, {"college_biology": MMLU[:2]})
    config = yaml.safe_load((tmp_path / "tasks" / f"{names[0]}.yaml").read_text())
    assert names == ["local_mmlu_college_biology"]
    assert config["description"] == "The following are multiple choice questions (with answers) about college biology.\n\n"
    assert config["fewshot_split"] == "dev" and config["fewshot_config"] == {"sampler": "first_n"}
    assert config["doc_to_choice"] == ["A", "B", "C", "D"] and config["num_fewshot"] == 2


@pytest.mark.parametrize("kind, rows, message", [
    ("arc", [{"question": "q", "choices": ["a", "b"], "answer": 2}], "row 0: field 'answer'"),
    ("arc", [{"question": "q", "choices": ["a"], "answer": 0}], "row 0: field 'choices'"),
    ("hellaswag", [{"context": "c", "endings": ["a", "b"]}], "row 0: field 'label'"),
    ("mmlu", [{"question": "q", "choices": ["a", "b", "c"], "answer": 0}], "should hold 4 choices"),
    ("truthfulqa_mc2", [{"question": "q", "mc2_targets": {"choices": ["a", "b"], "labels": [0, 0]}}], "no true answer"),
    ("truthfulqa_mc2", [{"question": "q", "mc2_targets": {"choices": ["a", "b"], "labels": [1]}}], "labels"),
    ("winogrande", ARC, "kind should be one of"),
])
def test_bad_rows(tmp_path, kind, rows, message):
    with pytest.raises(ValueError, match=message):
        lb.write_mc_task(tmp_path, "t", rows, kind)


def test_bad_names_and_fewshot(tmp_path):
    with pytest.raises(ValueError, match="task name"):
        lb.write_mc_task(tmp_path, "bad-name", ARC, "arc")
    with pytest.raises(ValueError, match="num_fewshot=5 but 2 few-shot rows"):
        lb.write_mc_task(tmp_path, "t", ARC, "arc", fewshot_rows=ARC[:2], num_fewshot=5)
    with pytest.raises(ValueError, match="0-shot"):
        lb.write_mc_task(tmp_path, "t", TQA, "truthfulqa_mc2", fewshot_rows=TQA)


def test_hellaswag_row_uses_lm_eval_preprocessing():
    row = lb.hellaswag_row("Baking cookies", "A woman [title] mixes flour.", "then she", [" bakes  [x]them."], 0)
    assert row == {"context": "Baking cookies: A woman. mixes flour. Then she", "endings": ["bakes them."], "label": 0}


# ---------------------------------------------------------------- running lm-eval

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    model_dir = tmp_path_factory.mktemp("tiny_mistral")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["Question: What comes after 3? Answer: 4.", "The following are multiple choice questions.",
              "A man holds a pan. He cooks. Is the sky blue? Yes, the sky is blue."]
    tok.train_from_iterator(corpus * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                           bos_token_id=0, eos_token_id=1, pad_token_id=1)
    MistralForCausalLM(config).save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def lm_eval_run(tiny_model, tmp_path_factory):
    task_dir = tmp_path_factory.mktemp("tasks")
    lb.write_mc_task(task_dir, "tiny_arc", ARC, "arc", fewshot_rows=ARC[:4], num_fewshot=2)
    lb.write_mc_task(task_dir, "tiny_arc0", ARC, "arc")
    lb.write_mc_task(task_dir, "tiny_hellaswag", HELLASWAG, "hellaswag")
    mmlu = lb.write_mmlu_tasks(task_dir, {"anatomy": MMLU, "virology": MMLU[:2]},
                               {"anatomy": MMLU[:2], "virology": MMLU[2:]}, num_fewshot=1)
    lb.write_mc_task(task_dir, "tiny_tqa", TQA, "truthfulqa_mc2")
    cont = lb.write_mmlu_tasks(task_dir, {"anatomy": MMLU}, prefix="cont_mmlu", num_fewshot=0, kind="mmlu_continuation")
    tasks = ["tiny_arc", "tiny_arc0", "tiny_hellaswag", "tiny_tqa", *mmlu, *cont]
    return {"metrics": lb.run_lm_eval(tiny_model, task_dir, tasks, batch_size=4), "mmlu": mmlu,
            "task_dir": task_dir}


def test_run_lm_eval_metrics(lm_eval_run):
    m = lm_eval_run["metrics"]
    expected = {"tiny_arc": ("acc", "acc_norm"), "tiny_arc0": ("acc", "acc_norm"),
                "tiny_hellaswag": ("acc", "acc_norm"), "tiny_tqa": ("acc",),
                "local_mmlu_anatomy": ("acc",), "local_mmlu_virology": ("acc",)}
    for task, metrics in expected.items():
        for metric in metrics:
            assert 0.0 <= m[f"{task}/{metric}"] <= 1.0, (task, metric)
            assert f"{task}/{metric}_stderr" in m
    assert (m["tiny_arc/n"], m["tiny_hellaswag/n"], m["tiny_tqa/n"], m["local_mmlu_virology/n"]) == (10, 6, 2, 2)
    assert (m["tiny_arc/num_fewshot"], m["tiny_arc0/num_fewshot"], m["local_mmlu_anatomy/num_fewshot"]) == (2, 0, 1)
    assert 0.5 < m["tiny_tqa/acc"] < 1.0  # the second question has only true answers (MC2 = 1)
    summary = lb.leaderboard_summary(m, {"arc": "tiny_arc", "hellaswag": "tiny_hellaswag",
                                         "mmlu": lm_eval_run["mmlu"], "truthfulqa": "tiny_tqa"})
    assert summary["arc"] == pytest.approx(100 * m["tiny_arc/acc_norm"])
    assert summary["mmlu"] == pytest.approx(50 * (m["local_mmlu_anatomy/acc"] + m["local_mmlu_virology/acc"]))
    assert summary["average"] == pytest.approx(sum(summary[k] for k in ("arc", "hellaswag", "mmlu", "truthfulqa")) / 4)


@pytest.fixture(scope="module")
def loglik(tiny_model):
    """Sum of log-probabilities of ``continuation`` after ``context``, encoded as lm-eval's
    _encode_pair does for causal models (whole string, then split after the context tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()

    def score(context: str, continuation: str) -> float:
        ctx_ids = tok.encode(context, add_special_tokens=False)
        whole = tok.encode(context + continuation, add_special_tokens=False)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0], dim=-1)
        return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx_ids), len(whole)))

    return score


def test_lm_eval_accuracy_matches_direct_loglikelihoods(lm_eval_run, loglik):
    """0-shot ARC: recompute acc and acc_norm (log-likelihood / choice length in characters)."""
    acc, acc_norm = [], []
    for row in ARC:
        lls = [loglik(f"Question: {row['question']}\nAnswer:", " " + c) for c in row["choices"]]
        best = max(range(len(lls)), key=lambda i: lls[i])
        best_norm = max(range(len(lls)), key=lambda i: lls[i] / len(row["choices"][i]))
        acc.append(best == row["answer"])
        acc_norm.append(best_norm == row["answer"])
    m = lm_eval_run["metrics"]
    assert m["tiny_arc0/acc"] == pytest.approx(sum(acc) / len(acc))
    assert m["tiny_arc0/acc_norm"] == pytest.approx(sum(acc_norm) / len(acc_norm))


def test_mmlu_continuation_scores_the_answer_text_not_a_letter(lm_eval_run, loglik, tmp_path):
    """The continuation variant (lm-eval's mmlu_continuation template): same rows, the choice's
    text is scored after "Question: ...\nAnswer:"; acc recomputed from log-likelihoods."""
    config = yaml.safe_load((Path(lm_eval_run["task_dir"]) / "cont_mmlu_anatomy.yaml").read_text())
    template = yaml.safe_load((LM_EVAL_TASKS / "mmlu" / "continuation" / "_continuation_template_yaml").read_text())
    assert config["doc_to_text"] == template["doc_to_text"] and config["doc_to_choice"] == "{{choices}}"
    assert config["description"] == "The following are questions (with answers) about anatomy.\n\n"
    acc = []
    for row in MMLU:
        context = config["description"] + f"Question: {row['question'].strip()}\nAnswer:"
        lls = [loglik(context, " " + c) for c in row["choices"]]
        acc.append(max(range(4), key=lambda i: lls[i]) == row["answer"])
    assert lm_eval_run["metrics"]["cont_mmlu_anatomy/acc"] == pytest.approx(sum(acc) / len(acc))


def test_mc2_matches_direct_probability_mass(lm_eval_run, loglik):
    """TruthfulQA MC2 = normalized probability mass of the true answers under lm-eval's prompt."""
    import math

    from lm_eval.utils import apply_template

    mc1 = yaml.safe_load((LM_EVAL_TASKS / "truthfulqa" / "truthfulqa_mc1.yaml").read_text())
    values = []
    for row in TQA:
        context = apply_template(mc1["doc_to_text"], row)
        assert context.startswith("Q: What is human life expectancy") and context.endswith(
            f"\n\nQ: {row['question']}\nA:")
        probs = [math.exp(loglik(context, " " + c)) for c in row["mc2_targets"]["choices"]]
        values.append(sum(p for p, l in zip(probs, row["mc2_targets"]["labels"]) if l) / sum(probs))
    assert 0.2 < values[0] < 0.9 and values[1] == pytest.approx(1.0)
    assert lm_eval_run["metrics"]["tiny_tqa/acc"] == pytest.approx(sum(values) / len(values), rel=1e-4)


def test_unknown_task_is_reported(tiny_model, lm_eval_run):
    with pytest.raises(ValueError, match="not found"):
        lb.run_lm_eval(tiny_model, lm_eval_run["task_dir"], ["no_such_task"])


def test_shared_contexts_give_lm_evals_numbers(tiny_model, lm_eval_run):
    """Every task of the tiny run scored with each context run once: the same metrics as stock HFLM."""
    tasks = [t for t in lm_eval_run["metrics"] if t.endswith("/acc")]
    names = sorted({t.split("/")[0] for t in tasks})
    shared = lb.run_lm_eval(tiny_model, lm_eval_run["task_dir"], names, batch_size=4, share_contexts=True)
    for key, value in lm_eval_run["metrics"].items():
        if key.split("/")[-1] in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
            assert shared[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_shared_contexts_request_by_request(tiny_model):
    """Log-probabilities and greedy flags per request, against HFLM's own path: shared contexts
    with one- and many-token continuations, a batch smaller than the groups, and requests longer
    than the window (truncated from the left by lm-eval, so scored by HFLM's path)."""
    from lm_eval.models.huggingface import HFLM

    kwargs = {"pretrained": str(tiny_model), "dtype": "float32", "device": "cpu", "max_length": 24}
    stock, shared = HFLM(batch_size=3, **kwargs), lb.prefix_shared_hflm(batch_size=2, **kwargs)
    tok = stock.tokenizer
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    contexts = ["Question: What comes after 3? Answer:", "A man holds a pan.", "Is the sky blue?",
                "The following are multiple choice questions. " * 3]  # the last is longer than the window
    conts = [" 4.", " Yes", " He cooks. Is the sky blue? Yes", " blue"]
    requests = [((c, k), enc(c), enc(k)) for c in contexts for k in conts]
    assert any(len(a) + len(b) > 25 for _, a, b in requests) and any(len(b) == 1 for _, _, b in requests)
    want = stock._loglikelihood_tokens(requests, disable_tqdm=True)
    got = shared._loglikelihood_tokens(requests, disable_tqdm=True)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], rel=1e-5, abs=1e-5)
    assert len({w[0] for w in want}) > 8  # the requests really differ


def test_compiled_templates_render_the_same_text_and_restore_lm_eval():
    from lm_eval import utils

    original = utils.apply_template
    doc = {"question": "How many legs does a cat have?", "choices": ["2", "4"]}
    template = "Question: {{question}}\nAnswer:{{ choices | join(',') | regex_replace('4', 'four') }}"
    with lb.compiled_templates():
        assert utils.apply_template is not original
        assert [utils.apply_template(template, doc) for _ in range(2)] == [original(template, doc)] * 2
    assert utils.apply_template is original
