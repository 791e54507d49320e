"""General-ability retention through lm-eval: the lm-eval path agrees with the harness's own evaluator, and
`general` measures a finished run before (backbone) and after (its final method state)."""
import json
import os

import numpy as np
import pytest
import torch

import tasks as task_registry
from core.errors import UsageError
from core.scoring import CausalLMScorer
from harness import general, stats
from harness.cli import main
from harness.config import BenchConfig
from harness.evaluation import accuracy, predict
from harness.models import tiny_model
from harness.prompting import PromptEncoder
from harness.runner import run_bench
from methods import get_method


def harness_accuracy(scorer, tok, name, per_task, max_tokens=16):
    data = task_registry.load_task(name, None, 1, per_task, 0)
    enc = PromptEncoder(tok, max_tokens)
    return round(accuracy(scorer, enc.encode(data, "test"), enc.candidates(data), data.labels, enc), 2)


def harness_answers(scorer, tok, name, per_task, max_tokens=16):
    """(gold, predicted) label indices of the harness's own rank evaluator."""
    data = task_registry.load_task(name, None, 1, per_task, 0)
    enc = PromptEncoder(tok, max_tokens)
    examples = enc.encode(data, "test")
    return [ex.label_index for ex in examples], predict(scorer, examples, enc.candidates(data), data.labels, enc)


def test_lm_eval_multiple_choice_agrees_with_the_rank_evaluator(tokenizer, capfd):
    import datasets
    model = tiny_model(tokenizer, seed=1)
    scorer = CausalLMScorer(model)
    got = general.evaluate(lambda task: scorer, tokenizer, PromptEncoder(tokenizer, 16), ("sms_spam", "hutto_movie"),
                           per_task=12)
    for name in ("sms_spam", "hutto_movie"):
        # the same answer to every example, in the same order
        assert got[name] == harness_answers(scorer, tokenizer, name, 12), name
        assert stats.percent_correct(got[name][1], got[name][0]) == harness_accuracy(scorer, tokenizer, name, 12)
    # lm-eval's and datasets' per-document bars are silenced for the call, and only for the call
    assert "it/s]" not in capfd.readouterr().err
    assert datasets.is_progress_bar_enabled()


def test_general_measures_a_finished_run_before_and_after(tmp_path, tokenizer, capsys):
    out = run_bench(BenchConfig(method="seq_lora", order="bbc+trec", seed=2, train_per_task=8, test_per_task=4,
                                out=str(tmp_path / "r"), model="tiny-llama", max_input_tokens=16, progress=False,
                                method_args={"lr": "0.05"}), model_and_tokenizer=(tiny_model(tokenizer, seed=0), tokenizer))
    result = general.run_general(out, ("sms_spam", "bbc"), per_task=10)
    assert json.load(open(os.path.join(out, "general.json"))) == result
    assert list(result["tasks"]) == ["sms_spam"] and result["skipped_in_stream"] == ["bbc"]   # bbc is in the stream
    assert result["metric"] == "balanced_accuracy" and result["requested"] == ["sms_spam", "bbc"]
    backbone = tiny_model(tokenizer, seed=0)
    gold, predicted = harness_answers(CausalLMScorer(backbone), tokenizer, "sms_spam", 10)
    assert result["tasks"]["sms_spam"]["before"] == round(stats.balanced_accuracy(predicted, gold), 2)
    assert result["tasks"]["sms_spam"]["accuracy_before"] == harness_accuracy(CausalLMScorer(backbone), tokenizer,
                                                                              "sms_spam", 10)
    assert result["tasks"]["sms_spam"]["predictions_before"] == stats.encode_labels(predicted)
    # "after" is the method's final state, restored from the run's last checkpoint
    cfg = json.load(open(os.path.join(out, "config.json")))
    status = json.load(open(os.path.join(out, "status.json")))
    method = get_method("seq_lora")(backbone, tokenizer, cfg["settings"], 2)
    method.setup()
    method.load_state_dict(torch.load(os.path.join(out, status["checkpoint"]), weights_only=False))
    gold, predicted = harness_answers(method.scorer("sms_spam"), tokenizer, "sms_spam", 10)
    assert result["tasks"]["sms_spam"]["after"] == round(stats.balanced_accuracy(predicted, gold), 2)
    assert abs(result["change"] - (result["after"] - result["before"])) <= 0.01
    lo, hi = result["change_ci"]
    assert lo <= result["change"] <= hi
    assert general.held_out(("sms_spam", "bbc"), ["bbc", "trec"]) == ["sms_spam"]
    # device is environment: a run recorded on another device is measured here with device=, to the same answers
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({**cfg, "device": "cuda:3"}, f)
    again = general.run_general(out, ("sms_spam", "bbc"), per_task=10, device="cpu")
    assert again["device"] == "cpu" and again["tasks"] == result["tasks"]
    # the run counts as measured for what its general.json asked, not for other tasks or sizes
    assert general.measured_as(out, ("bbc", "sms_spam"), 10)
    assert not general.measured_as(out, ("sms_spam",), 10) and not general.measured_as(out, ("sms_spam", "bbc"), 6)
    # A committed record carries no weights: `general` says so and the CLI skips it instead of failing the batch
    os.unlink(os.path.join(out, status["checkpoint"]))
    with pytest.raises(UsageError, match="has no checkpoint"):
        general.run_general(out, ("sms_spam",), per_task=10)
    capsys.readouterr()
    assert main(["general", "--tasks", "sms_spam", "--per-task", "10", out]) == 0   # its general.json is of 2 tasks
    assert "have no checkpoint" in capsys.readouterr().err
    assert main(["general", "--tasks", "sms_spam,bbc", "--per-task", "10", out]) == 0   # this one it measured
    assert "0 run(s); 1 skipped" in capsys.readouterr().out


# ---- balanced accuracy and its interval -------------------------------------------------------------------
def test_balanced_accuracy_is_the_mean_recall_of_a_hand_computed_confusion():
    # 3 classes of 4, 3 and 3 examples; confusion rows (gold) x columns (answer): [3 1 0], [2 1 0], [0 1 2]
    gold = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    predicted = [0, 0, 0, 1, 0, 0, 1, 1, 2, 2]
    assert stats.balanced_accuracy(predicted, gold) == pytest.approx(100 * (3 / 4 + 1 / 3 + 2 / 3) / 3)
    assert stats.percent_correct(predicted, gold) == 60.0
    # one label everywhere is chance whatever the balance: 50 on two classes, where accuracy reads 90 or 10
    skewed = [0] * 9 + [1]
    for label, plain in ((0, 90.0), (1, 10.0)):
        assert stats.balanced_accuracy([label] * 10, skewed) == 50.0
        assert stats.percent_correct([label] * 10, skewed) == plain
        # and under every resample: each class keeps its examples, so the lone 1 is never dropped
        assert np.all(stats.balanced_accuracy([label] * 10, skewed, stats.class_weights("t", skewed)) == 50.0)
    assert stats.balanced_accuracy([2] * 10, gold) == pytest.approx(100 / 3)
    # a class the answers never use but gold has counts (recall 0); one gold lacks does not
    assert stats.balanced_accuracy([0, 0, 2, 2], [0, 0, 1, 1]) == 50.0


def answers(gold, predicted):
    return {"sms_spam": (list(gold), list(predicted))}


def test_the_change_interval_covers_the_point_and_has_no_width_without_a_change():
    rng = np.random.default_rng(0)
    gold = [0] * 40 + [1] * 10
    before = [g if rng.random() < 0.8 else 1 - g for g in gold]
    after = [0] * 50                       # collapsed to the majority label: accuracy 80, balanced 50
    record = general.summarize(answers(gold, before) | {"hutto_movie": ([0, 1] * 25, [0, 1] * 25)},
                               answers(gold, after) | {"hutto_movie": ([0, 1] * 25, [0] * 50)})
    spam, movie = record["tasks"]["sms_spam"], record["tasks"]["hutto_movie"]
    assert spam["after"] == 50.0 and spam["accuracy_after"] == 80.0 and movie["change"] == -50.0
    for part in (spam, movie, record):
        lo, hi = part["change_ci"]
        assert lo <= part["change"] <= hi and hi < 0, part["change_ci"]
    assert record["change"] == round((spam["change"] + movie["change"]) / 2, 2)
    assert record["accuracy"]["after"] == 65.0 and record["metric"] == "balanced_accuracy"
    # the tables' resamples of the record are the ones its interval came from
    assert [round(x, 2) for x in stats.interval(stats.general_samples(record["tasks"]))] == record["change_ci"]
    same = general.summarize(answers(gold, before), answers(gold, before))
    assert same["change"] == 0.0 and same["change_ci"] == [0.0, 0.0]
    assert same["tasks"]["sms_spam"]["change_ci"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="examples differ"):   # before and after must be the same examples
        general.summarize(answers(gold, before), answers(gold[::-1], before))
    # a general.json from before balanced accuracy has no answers to resample
    assert stats.general_samples({"sms_spam": {"before": 40.0, "after": 12.0, "change": -28.0}}) is None


def test_the_default_held_out_tasks_are_in_no_order_of_the_committed_blocks_and_ship_with_the_harness():
    in_orders = {t for o in ("1", "2", "3", "offline1", "offline2", "offline3") for t in task_registry.ORDERS[o]}
    assert len(general.GENERAL_TASKS) > 2 and not in_orders & set(general.GENERAL_TASKS)
    for name in general.GENERAL_TASKS:   # offline packages or tasks/data: no data directory needed
        data = task_registry.load_task(name, None, 1, general.DEFAULT_PER_TASK, 0)
        assert len(data.test) == general.DEFAULT_PER_TASK, name
    # every order the harness defines keeps some of them: a stream never swallows the whole probe
    for order, stream in task_registry.ORDERS.items():
        assert general.held_out(general.GENERAL_TASKS, stream), order
