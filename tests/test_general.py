"""General-ability retention through lm-eval: the lm-eval path agrees with the harness's own evaluator, and
`general` measures a finished run before (backbone) and after (its final method state)."""
import json
import os

import pytest
import torch

import tasks as task_registry
from core.errors import UsageError
from core.scoring import CausalLMScorer
from harness import general
from harness.cli import main
from harness.config import BenchConfig
from harness.evaluation import accuracy
from harness.models import tiny_model
from harness.prompting import PromptEncoder
from harness.runner import run_bench
from methods import get_method


def harness_accuracy(scorer, tok, name, per_task, max_tokens=16):
    data = task_registry.load_task(name, None, 1, per_task, 0)
    enc = PromptEncoder(tok, max_tokens)
    return round(accuracy(scorer, enc.encode(data, "test"), enc.candidates(data), data.labels, enc), 2)


def test_lm_eval_multiple_choice_agrees_with_the_rank_evaluator(tokenizer, capfd):
    import datasets
    model = tiny_model(tokenizer, seed=1)
    scorer = CausalLMScorer(model)
    got = general.evaluate(lambda task: scorer, tokenizer, PromptEncoder(tokenizer, 16), ("sms_spam", "hutto_movie"),
                           per_task=12)
    for name in ("sms_spam", "hutto_movie"):
        assert got[name] == harness_accuracy(scorer, tokenizer, name, 12), name
    # lm-eval's and datasets' per-document bars are silenced for the call, and only for the call
    assert "it/s]" not in capfd.readouterr().err
    assert datasets.is_progress_bar_enabled()


def test_general_measures_a_finished_run_before_and_after(tmp_path, tokenizer, capsys):
    out = run_bench(BenchConfig(method="seq_lora", order="bbc+trec", seed=2, train_per_task=8, test_per_task=4,
                                out=str(tmp_path / "r"), model="tiny-llama", max_input_tokens=16, progress=False,
                                method_args={"lr": "0.05"}), model_and_tokenizer=(tiny_model(tokenizer, seed=0), tokenizer))
    result = general.run_general(out, ("sms_spam",), per_task=10)
    assert json.load(open(os.path.join(out, "general.json"))) == result
    backbone = tiny_model(tokenizer, seed=0)
    assert result["tasks"]["sms_spam"]["before"] == harness_accuracy(CausalLMScorer(backbone), tokenizer, "sms_spam", 10)
    # "after" is the method's final state, restored from the run's last checkpoint
    cfg = json.load(open(os.path.join(out, "config.json")))
    status = json.load(open(os.path.join(out, "status.json")))
    method = get_method("seq_lora")(backbone, tokenizer, cfg["settings"], 2)
    method.setup()
    method.load_state_dict(torch.load(os.path.join(out, status["checkpoint"]), weights_only=False))
    assert result["tasks"]["sms_spam"]["after"] == harness_accuracy(method.scorer("sms_spam"), tokenizer, "sms_spam", 10)
    assert result["change"] == round(result["after"] - result["before"], 2)
    assert general.held_out(("sms_spam", "bbc"), ["bbc", "trec"]) == ["sms_spam"]
    # A committed record carries no weights: `general` says so and the CLI skips it instead of failing the batch
    os.unlink(os.path.join(out, status["checkpoint"]))
    os.unlink(os.path.join(out, "general.json"))
    with pytest.raises(UsageError, match="has no checkpoint"):
        general.run_general(out, ("sms_spam",), per_task=10)
    assert main(["general", "--tasks", "sms_spam", "--per-task", "10", out]) == 0
    assert "have no checkpoint" in capsys.readouterr().err and not os.path.exists(os.path.join(out, "general.json"))
