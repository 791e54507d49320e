"""Bad input: one clear line on stderr, exit status 2, no traceback, no run directory that looks finished."""
import json
import os

import pytest

from harness.cli import main
from harness.config import BenchConfig
from harness.models import tiny_model
from harness.runner import run_bench

TINY = ["--model", "tiny-llama", "--quiet", "--train-per-task", "4", "--test-per-task", "4",
        "--max-input-tokens", "8"]


def fails(capsys, argv, pattern):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert pattern in err, err
    return err


def test_unknown_method_order_task(capsys, tmp_path):
    fails(capsys, ["bench", "--method", "nope", "--out", str(tmp_path / "a")], "unknown method 'nope'")
    fails(capsys, ["bench", "--order", "9", "--out", str(tmp_path / "a")], "unknown order '9'")
    fails(capsys, ["bench", "--order", "bbc,nope", "--out", str(tmp_path / "a")], "unknown task 'nope'")
    assert not (tmp_path / "a").exists()


def test_bad_sizes_and_settings(capsys, tmp_path):
    fails(capsys, ["bench", "--train-per-task", "0", "--out", str(tmp_path / "a")],
          "--train-per-task: expected a positive number of examples or 'all', got '0'")
    fails(capsys, ["bench", "--train-per-task", "x"], "expected a positive number of examples or 'all', got 'x'")
    fails(capsys, ["bench", "--method-arg", "nonsense=1"], "has no setting 'nonsense'")
    fails(capsys, ["bench", "--method-arg", "lr=fast"], "bad value 'fast' for setting 'lr'")
    fails(capsys, ["bench", "--method-arg", "lr"], "expects key=value")


def test_data_dir_problems(capsys, tmp_path, monkeypatch, cl_data):
    monkeypatch.delenv("CL_DATA_DIR", raising=False)
    fails(capsys, ["bench", "--order", "1", *TINY, "--out", str(tmp_path / "a")], "CL_DATA_DIR")
    fails(capsys, ["bench", "--order", "1", "--data-dir", str(tmp_path / "missing"), *TINY], "does not exist")
    with open(os.path.join(cl_data, "TC/yahoo/labels.json"), "w") as f:
        f.write("{not json")
    fails(capsys, ["bench", "--order", "1", "--data-dir", cl_data, *TINY], "malformed JSON")
    with open(os.path.join(cl_data, "TC/yahoo/labels.json"), "w") as f:
        json.dump(["Health", "Sports"], f)
    with open(os.path.join(cl_data, "TC/yahoo/test.json"), "w") as f:
        json.dump([], f)
    fails(capsys, ["bench", "--order", "1", "--data-dir", cl_data, *TINY], "no usable rows")
    os.chmod(os.path.join(cl_data, "TC/yahoo/train.json"), 0)
    if os.geteuid() != 0:  # root reads anything
        fails(capsys, ["bench", "--order", "1", "--data-dir", cl_data, *TINY], "permission denied")


def test_finished_run_is_refused_unless_overwrite(capsys, tmp_path, tokenizer):
    out = tmp_path / "run"
    cfg = BenchConfig(order="bbc,trec", train_per_task=4, test_per_task=4, out=str(out), model="tiny-llama",
                      max_input_tokens=8, progress=False, method="zero_shot")
    run_bench(cfg, model_and_tokenizer=(tiny_model(tokenizer), tokenizer))
    fails(capsys, ["bench", "--method", "zero_shot", "--order", "bbc,trec", "--out", str(out), *TINY],
          "already holds a finished run")
    # an unfinished run with other settings is not silently mixed with this one
    status = json.load(open(out / "status.json"))
    status["state"] = "running"
    json.dump(status, open(out / "status.json", "w"))
    fails(capsys, ["bench", "--method", "seq_lora", "--order", "bbc,trec", "--out", str(out), *TINY],
          "different settings (method")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    fails(capsys, ["bench", "--out", str(tmp_path / "junk"), *TINY], "holds no run")


def test_list_names_methods_tasks_orders(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("seq_lora", "replay", "zero_shot", "trec", "hutto_amazon", "dbpedia", "offline1", "offline3"):
        assert word in out
    assert "dbpedia -> amazon -> yahoo -> agnews" in out


def test_bad_craft_setting_fails_before_the_model_loads(capsys):
    fails(capsys, ["bench", "--method", "craft", "--method-arg", "routing=sometimes"], "routing must be one of")
