"""Every tensor a method builds at train and test time goes to the model's device (checked on a fake second
device, tests/fake_device.py: its limits are in its docstring), --device is checked up front, and checkpoints
load onto the model's device."""
import json
import os

import pandas as pd
import pytest
import torch

from core.errors import UsageError
from core.loss import answer_loss, collate
from harness.config import BenchConfig
from harness.models import autocast, check_device, tiny_model
from harness.runner import machine_info, run_bench
from methods import discover
from tests.fake_device import FAKE, OnFake, on_fake_device
from tests.test_cli import TINY, fails

ORDER = "bbc,hutto_amazon"
# CRAFT's paths differ with its backbone cache on and off, and with test-time routing by task id
VARIANTS = [(name, {}) for name in sorted(discover())] + [("craft", {"cache": "off"}),
                                                            ("craft", {"method_args": {"test_routing": "task_id"}})]


def bench(tmp_path, tokenizer, method, device=None, **overrides):
    model = tiny_model(tokenizer, seed=0)
    if device is not None:
        model = model.to(device)
    fields = dict(method=method, order=ORDER, seed=2, train_per_task=2, test_per_task=2, model="tiny-llama",
                  max_input_tokens=12, eval_batch_size=3, progress=False, out=str(tmp_path / "run"))
    fields.update(overrides)
    fields["method_args"] = {"batch_size": "2", **fields.get("method_args", {})}
    return run_bench(BenchConfig(**fields), model_and_tokenizer=(model, tokenizer))


def losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [e["loss"] for e in map(json.loads, f) if e["event"] == "step"]


def test_the_fake_device_catches_a_batch_left_on_the_cpu(tokenizer, monkeypatch):
    # The bug this file guards against: inputs built on the CPU for a model elsewhere. On CUDA it fails at the
    # first forward; the fake device must fail the same way, or the tests below prove nothing.
    model = tiny_model(tokenizer)
    from core.data import Encoded
    batch_of = [Encoded("t", (1, 2, 3), (4, 5), 0), Encoded("t", (6, 7), (8, 5), 1)]
    with on_fake_device(monkeypatch):
        model.to(FAKE)
        with pytest.raises(RuntimeError, match="same device"):
            answer_loss(model, collate(batch_of, tokenizer.pad_token_id))
        loss = answer_loss(model, collate(batch_of, tokenizer.pad_token_id, FAKE))
        assert isinstance(loss, OnFake) and loss.device == FAKE and loss.item() > 0


@pytest.mark.parametrize("method,overrides", VARIANTS, ids=[f"{m}-{'-'.join(map(str, o.values())) or 'default'}"
                                                             for m, o in VARIANTS])
def test_every_method_runs_on_the_models_device(tmp_path, tokenizer, monkeypatch, method, overrides):
    """A whole stream (training, rank evaluation, checkpoints) with the model on the fake device: no op mixes
    devices, and the numbers are the CPU run's (the fake device computes on the CPU): the same matrix, and the same
    logged losses up to one unit of their fifth decimal. On an AMD EPYC host (2026-12-03) one seq_lora step's loss
    sat on a rounding boundary and the fake path's float noise (below 1e-6) flipped it; Intel hosts gave every
    loss bit for bit."""
    cpu = bench(tmp_path / "cpu", tokenizer, method, **overrides)
    with on_fake_device(monkeypatch):
        fake = bench(tmp_path / "fake", tokenizer, method, device=FAKE, **overrides)
    assert losses(fake) == pytest.approx(losses(cpu), abs=1.01e-5, rel=0)
    pd.testing.assert_frame_equal(pd.read_csv(os.path.join(fake, "matrix.csv")),
                                  pd.read_csv(os.path.join(cpu, "matrix.csv")))


def test_generation_resume_and_bf16_follow_the_model(tmp_path, tokenizer, monkeypatch):
    """Greedy-generation evaluation, a run resumed from its checkpoint (loaded onto the model's device: CRAFT's
    groups and signatures are used as loaded) and bf16 autocast asked for the model's device type."""
    with on_fake_device(monkeypatch) as record:
        common = dict(eval="generate", dtype="bf16", out=str(tmp_path / "craft"))
        bench(tmp_path, tokenizer, "craft", device=FAKE, stop_after_task=1, **common)
        out = bench(tmp_path, tokenizer, "craft", device=FAKE, **common)
    assert pd.read_csv(os.path.join(out, "matrix.csv")).shape == (3, 3)
    assert record["autocast_types"] and set(record["autocast_types"]) == {FAKE.type}


def test_autocast_follows_the_device_type():
    assert autocast("fp32", "cuda:1").__class__.__name__ == "nullcontext"
    ctx = autocast("bf16", torch.device("cpu"))
    assert ctx.device == "cpu" and ctx.fast_dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused_in_one_line(device, tmp_path, capsys):
    with pytest.raises(UsageError, match="CUDA"):
        check_device(device)
    fails(capsys, ["bench", *TINY, "--device", device, "--out", str(tmp_path / "r")], "CUDA")
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("device,message", [("gpu", "not a torch device"), ("cuda:x", "not a torch device")])
def test_a_bad_device_name_is_refused(device, message):
    with pytest.raises(UsageError, match=message):
        check_device(device)


def test_machine_info_names_the_gpu_only_on_cuda():
    assert "gpu" not in machine_info("cpu")
    if torch.cuda.is_available():
        info = machine_info("cuda")
        assert info["gpu"] and info["gpu_memory_gb"] > 0 and info["cuda"]
