"""bench/gpu_check.py on a machine without CUDA: the CPU half, and --repeat's rerun comparison (the check a GPU
session runs to see whether a seed gives the same matrix twice)."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU half alone is checked here")
def test_repeat_compares_each_side_with_its_rerun(tmp_path, capsys):
    code = gpu_check.main(["--methods", "seq_lora,craft", "--model", "tiny-llama", "--train", "2", "--test", "2",
                           "--repeat", "--out", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["ok"] and not summary["cuda_available"] and summary["deterministic"] is False
    for name in ("seq_lora", "craft"):
        entry = summary["methods"][name]
        assert set(entry) == {"cpu-fp32", "repeat"} and entry["cpu-fp32"]["steps"] > 0
        # on the CPU one seed gives the same matrix and the same losses twice (dropout included, for seq_lora)
        assert entry["repeat"]["cpu-fp32"] == {"max_abs_accuracy_diff": 0.0, "matrices_identical": True,
                                               "max_abs_loss_diff": 0.0, "same_step_count": True}
    assert os.path.isdir(tmp_path / "seq_lora-cpu-fp32-again")


def test_compare_reports_the_largest_differences():
    import pandas as pd
    a = {"matrix": pd.DataFrame({"x": [50.0, 75.0]}), "losses": [1.0, 0.5]}
    b = {"matrix": pd.DataFrame({"x": [50.0, 50.0]}), "losses": [1.0, 0.25]}
    assert gpu_check.compare(a, b) == {"max_abs_accuracy_diff": 25.0, "matrices_identical": False,
                                       "max_abs_loss_diff": 0.25, "same_step_count": True}
    assert gpu_check.compare(a, {"error": "boom"}) == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU half alone is checked here")
def test_a_method_spec_runs_with_its_settings(tmp_path, capsys):
    code = gpu_check.main(["--methods", "seq_lora:dropout=0", "--model", "tiny-llama", "--train", "2", "--test", "2",
                           "--out", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["ok"] and set(summary["methods"]) == {"seq_lora:dropout=0"}
    recorded = json.load(open(tmp_path / "seq_lora+dropout=0-cpu-fp32" / "config.json"))
    assert recorded["method"] == "seq_lora" and recorded["settings"]["dropout"] == 0.0


def test_a_bad_spec_stops_before_any_run(tmp_path, capsys):
    assert gpu_check.main(["--methods", "seq_lora,seq_lora:dropot=0", "--model", "tiny-llama",
                           "--out", str(tmp_path)]) == 2
    assert "no setting 'dropot'" in capsys.readouterr().err and not os.listdir(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA is checked here")
def test_cuda_only_without_cuda_is_a_usage_error(tmp_path, capsys):
    assert gpu_check.main(["--methods", "seq_lora", "--cuda-only", "--repeat", "--model", "tiny-llama",
                           "--out", str(tmp_path)]) == 2
    assert "--cuda-only, but CUDA is not available" in capsys.readouterr().err and not os.listdir(tmp_path)


def test_the_summary_compares_the_sides_that_ran(monkeypatch, capsys, tmp_path):
    """With CUDA faked (one_run stubbed: what is checked is which sides run and which comparisons the summary
    makes of them), --cuda-only leaves the CPU out and still compares bf16 with fp32."""
    import pandas as pd
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check.torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(gpu_check, "check_device", lambda device: None)
    monkeypatch.setattr(gpu_check, "gpu_info", lambda device: {"gpu": "fake"})
    monkeypatch.setattr(gpu_check, "load_model", lambda model, device: ("backbone", "tokenizer"))
    ran = []

    def fake_run(name, backbone, tok, device, dtype, args, out, again=False):
        ran.append((name, device, dtype, again))
        return {"matrix": pd.DataFrame({"a": [75.0 if dtype == "bf16" else 50.0]}), "losses": [1.0], "seconds": 0.1}

    monkeypatch.setattr(gpu_check, "one_run", fake_run)
    # a list-valued setting stays one spec, as in a sweep
    code = gpu_check.main(["--methods", "seq_lora,craft:layers=0,1", "--cuda-only", "--bf16", "--repeat",
                           "--out", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and set(summary["methods"]) == {"seq_lora", "craft:layers=0,1"} and summary["cuda_only"]
    assert {device for _, device, _, _ in ran} == {"cuda"} and len(ran) == 8   # 2 methods x fp32/bf16 x twice
    entry = summary["methods"]["seq_lora"]
    assert "cuda_vs_cpu" not in entry and entry["bf16_vs_fp32_on_cuda"]["max_abs_accuracy_diff"] == 25.0
    assert set(entry["repeat"]) == {"cuda-fp32", "cuda-bf16"}
    ran.clear()
    assert gpu_check.main(["--methods", "seq_lora", "--bf16", "--out", str(tmp_path)]) == 0
    entry = json.loads(capsys.readouterr().out)["methods"]["seq_lora"]
    assert {device for _, device, _, _ in ran} == {"cpu", "cuda"} and entry["cuda_vs_cpu"]["matrices_identical"]
    assert entry["bf16_vs_fp32_on_cuda"]["max_abs_accuracy_diff"] == 25.0
