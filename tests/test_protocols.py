"""bench/protocols.py scores a finished run's final state by generation: it must give what the harness's own
`--eval generate` gives for the same trained model, and sort the answers it did not get right."""
import importlib.util
import json
import os

import pytest

from harness.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = ["--model", "tiny-llama", "--train-per-task", "4", "--test-per-task", "3", "--max-input-tokens", "8",
        "--order", "bbc+hutto_amazon", "--quiet"]


def load_script():
    spec = importlib.util.spec_from_file_location("protocols", os.path.join(HERE, "..", "bench", "protocols.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_answers_are_sorted_by_whose_label_they_are():
    sort = load_script().sort_answer
    own, others = {"positive", "negative"}, {"sport", "tech"}
    assert [sort(a, "positive", own, others) for a in ("positive", "negative", "sport", "great")] == [
        "right", "own_label", "other_task_label", "no_label"]


def test_generation_on_a_restored_run_matches_the_harness_generate_run(tmp_path):
    script = load_script()
    for method in ("seq_lora", "craft"):
        ranked, generated = str(tmp_path / f"{method}-rank"), str(tmp_path / f"{method}-generate")
        assert main(["bench", "--method", method, *TINY, "--out", ranked]) == 0
        assert main(["bench", "--method", method, *TINY, "--eval", "generate", "--out", generated]) == 0
        result = script.measure(ranked)
        assert result["restored_check"]["differ"] == 0   # the checkpoint is the run's final state
        final = json.load(open(os.path.join(generated, "status.json")))["rows"]["hutto_amazon"]["accuracy"]
        for name, t in result["tasks"].items():
            assert sum(t["kinds"].values()) == t["n"] == 3
            assert 100.0 * t["kinds"]["right"] / t["n"] == pytest.approx(final[name], abs=0.01), (method, name)
            recorded = json.load(open(os.path.join(ranked, "status.json")))["rows"]["hutto_amazon"]["accuracy"]
            assert t["rank"] == pytest.approx(recorded[name], abs=0.01)
    table = script.summary([script.measure(str(tmp_path / f"{m}-rank")) for m in ("seq_lora", "craft")])
    assert set(table) == {"seq_lora", "craft"}
    assert all(abs(sum(t["share"].values()) - 100) < 1e-9 for t in table.values())
