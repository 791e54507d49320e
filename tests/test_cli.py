"""Bad input: one clear line on stderr, exit status 2, no traceback, no run directory that looks finished."""
import json
import os
import shutil

import pytest
import torch

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


@pytest.mark.parametrize("method,arg,message", [
    ("seq_lora", "epochs=0", "seq_lora setting epochs must be at least 1, not 0"),   # would train nothing, "finished"
    ("ewc", "batch_size=0", "ewc setting batch_size must be at least 1, not 0"),      # the shared loop's, inherited
    ("craft", "lr=0", "craft setting lr must be above 0, not 0.0"),                    # a method that redefines lr
    ("replay", "r=0", "replay setting r must be at least 1, not 0"),                   # the LoRA methods' own
])
def test_a_setting_past_its_limit_fails_before_anything_runs(capsys, tmp_path, method, arg, message):
    out = tmp_path / "run"
    fails(capsys, ["bench", "--method", method, "--method-arg", arg, "--order", "bbc,trec", *TINY, "--out", str(out)],
          message)
    assert not out.exists()
    runs = tmp_path / "runs"   # and a sweep refuses the spec before its first cell
    fails(capsys, ["sweep", "--methods", f"seq_lora,{method}:{arg}", "--orders", "bbc,trec",
                   "--seeds", "1", "--runs", str(runs), *TINY], message)
    assert not any(runs.glob("*/*/seed*/status.json"))


def test_data_dir_problems(capsys, tmp_path, monkeypatch, cl_data):
    monkeypatch.delenv("CL_DATA_DIR", raising=False)
    elsewhere = ["--out", str(tmp_path / "b")]   # refused before the run folder is made (checked last)
    # without a data dir, orders 1-6 read the packaged subset, and config.json says so
    assert main(["bench", "--order", "1", *TINY, "--out", str(tmp_path / "a"), "--stop-after-task", "0"]) == 0
    assert {d["source"] for d in json.load(open(tmp_path / "a" / "config.json"))["data"].values()} == {"packaged"}
    fails(capsys, ["bench", "--order", "1", "--data-dir", str(tmp_path / "missing"), *TINY, *elsewhere],
          "does not exist")
    with open(os.path.join(cl_data, "TC/yahoo/labels.json"), "w") as f:
        f.write("{not json")
    fails(capsys, ["bench", "--order", "1", "--data-dir", cl_data, *TINY, *elsewhere], "malformed JSON")
    with open(os.path.join(cl_data, "TC/yahoo/labels.json"), "w") as f:
        json.dump(["Health", "Sports"], f)
    with open(os.path.join(cl_data, "TC/yahoo/test.json"), "w") as f:
        json.dump([], f)
    fails(capsys, ["bench", "--order", "1", "--data-dir", cl_data, *TINY, *elsewhere], "no usable rows")
    os.chmod(os.path.join(cl_data, "TC/yahoo/train.json"), 0)
    if os.geteuid() != 0:  # root reads anything
        fails(capsys, ["bench", "--order", "1", "--data-dir", cl_data, *TINY, *elsewhere], "permission denied")
    assert not (tmp_path / "b").exists()


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


# Hostile input, case by case: the options that replace the defaults ({tmp} is the test's folder) and the words of
# the one-line error. {tmp} holds `file` (a regular file), `empty/` (a folder) and FILES; every bench writes to
# {tmp}/out, which must not exist afterwards: nothing half-made for a later command to refuse or resume.
def _setup(tmp, write=None):
    (tmp / "file").write_text("not a folder")
    (tmp / "empty").mkdir()
    for name, content in (write or {}).items():
        (tmp / name).write_bytes(content)


BENCH_REFUSALS = {
    "model path missing": (["--model", "{tmp}/no-model"], "no such folder"),
    "model folder without a model": (["--model", "{tmp}/empty"], "folder without a model"),
    "model is a file": (["--model", "{tmp}/file"], "is a file"),
    "model hub id not cached": (["--model", "nobody/no-such-model"], "nor in the hub cache"),
    "model empty": (["--model", ""], "--model is empty"),
    "out is a file": (["--out", "{tmp}/file"], "is a file, not a folder"),
    "out inside a file": (["--out", "{tmp}/file/run"], "cannot be made: "),
    "out empty": (["--out", ""], "--out is empty"),
    "data-dir is a file": (["--data-dir", "{tmp}/file"], "is a file, not a directory"),
    "device absent": (["--device", "cuda:99"], "--device 'cuda:99': "),   # no CUDA here, or not 100 GPUs
    "device unknown": (["--device", "gpu"], "--device 'gpu' is not a torch device"),
    "seed negative": (["--seed", "-1"], "--seed must be between 0 and"),
    "seed too big": (["--seed", str(2**64)], "--seed must be between 0 and"),
    "order of no task": (["--order", ","], "names no task"),
    "method-config null": (["--method-config", "{tmp}/null.json"], "bad value 'null' for setting 'lr'"),
    "method-config list": (["--method-config", "{tmp}/list.json"], "bad value '[1]' for setting 'lr'"),
    "method-config binary": (["--method-config", "{tmp}/binary.json"], "cannot read --method-config"),
    "base-cache corrupt": (["--base-cache", "{tmp}/corrupt.json"], "cannot read --base-cache"),
    "base-cache not scores": (["--base-cache", "{tmp}/words.json"], "not an accuracy"),
    "base-cache a folder": (["--base-cache", "{tmp}/empty"], "is a folder, not a file"),
    "base-cache inside a file": (["--base-cache", "{tmp}/file/cache.json"], "cannot be made: "),
}
FILES = {"null.json": b'{"lr": null}', "list.json": b'{"lr": [1]}', "binary.json": b"\xff\xfe",
         "corrupt.json": b"{not json", "words.json": b'{"bbc|x": "high"}'}


@pytest.mark.parametrize("case", BENCH_REFUSALS)
def test_bench_refuses_before_making_a_run(capsys, tmp_path, case):
    _setup(tmp_path, FILES)
    args, pattern = BENCH_REFUSALS[case]
    argv = ["bench", "--order", "bbc,trec", *TINY, "--out", str(tmp_path / "out"),
            *[a.format(tmp=tmp_path) for a in args]]
    fails(capsys, argv, pattern)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variable, value, pattern", [("CL_THREADS", "two", "CL_THREADS must be a positive"),
                                                      ("CL_THREADS", "-1", "CL_THREADS must be a positive"),
                                                      ("CL_CACHE_DIR", "{tmp}/file", "(CL_CACHE_DIR) cannot be")])
def test_bench_refuses_a_bad_environment(capsys, tmp_path, monkeypatch, variable, value, pattern):
    _setup(tmp_path)
    monkeypatch.setenv(variable, value.format(tmp=tmp_path))
    fails(capsys, ["bench", "--order", "bbc,trec", *TINY, "--out", str(tmp_path / "out")], pattern)
    assert not (tmp_path / "out").exists()


def test_a_model_that_fails_to_load_leaves_no_run(capsys, tmp_path, tokenizer):
    # config and tokenizer fine, weights damaged: found only when the run loads it, after its folder is made
    from harness.models import DEFAULT_MODEL, embedded_cache
    model = tmp_path / "model"
    shutil.copytree(embedded_cache(DEFAULT_MODEL), model, ignore=shutil.ignore_patterns("model.safetensors", ".*"))
    (model / "model.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "new" / "nested" / "run", tmp_path / "kept"):
        fails(capsys, ["bench", "--order", "bbc,trec", *TINY, "--model", str(model), "--out", str(out)],
              "cannot load model")
    assert not (tmp_path / "new").exists() and os.listdir(tmp_path / "kept") == []


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory, tokenizer):
    """A seq_lora run stopped after its first task (status, config, checkpoint-0.pt): resumable."""
    out = tmp_path_factory.mktemp("unfinished") / "run"
    cfg = BenchConfig(order="bbc,trec", train_per_task=4, test_per_task=4, out=str(out), model="tiny-llama",
                      max_input_tokens=8, progress=False, stop_after_task=1)
    run_bench(cfg, model_and_tokenizer=(tiny_model(tokenizer), tokenizer))
    return out


DAMAGE = {
    "status a list": ("status.json", "[1]", "status.json is corrupt"),
    "status empty": ("status.json", "", "status.json is corrupt"),
    "status without rows": ("status.json", '{"state": "running"}', "status.json is corrupt (its rows"),
    "status of an unknown state": ("status.json", '{"state": "paused", "rows": {}}', "status.json is corrupt"),
    "status a folder": ("status.json", None, "status.json is a folder"),
    "config missing": ("config.json", False, "config.json is missing"),
    "config corrupt": ("config.json", "{not json", "cannot read"),
    "config a list": ("config.json", "[]", "holds a JSON list"),
    "checkpoint corrupt": ("checkpoint-0.pt", "garbage", "checkpoint-0.pt is corrupt"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_run_is_refused(capsys, tmp_path, unfinished_run, case):
    name, text, pattern = DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(unfinished_run, run)
    os.unlink(run / name)
    if text is None:
        os.mkdir(run / name)
    elif text is not False:
        (run / name).write_text(text)
    before = sorted(os.listdir(run))
    fails(capsys, ["bench", "--order", "bbc,trec", *TINY, "--out", str(run)], pattern)
    assert sorted(os.listdir(run)) == before and "matrix.csv" not in before


# (what is wrong, the sweep arguments that say it, what the one-line error says)
SWEEP_REFUSALS = [
    ("runs is a file", ["--runs", "{tmp}/file"], "--runs {tmp}/file is a file"),
    ("runs inside a file", ["--runs", "{tmp}/file/runs"], "cannot be made: "),
    ("seed negative", ["--seeds", "-1"], "--seeds must be between 0 and"),
    ("seed twice", ["--seeds", "1,1"], "more than once"),
    ("method twice", ["--methods", "zero_shot,zero_shot"], "more than once"),
    ("model missing", ["--model", "{tmp}/no-model"], "no such folder"),
    ("base cache corrupt", ["--runs", "{tmp}/runs"], "cannot read --base-cache {tmp}/runs/base-cache.json"),
]


@pytest.mark.parametrize("case,args,pattern", SWEEP_REFUSALS, ids=[case for case, _, _ in SWEEP_REFUSALS])
def test_sweep_refuses_before_running(capsys, tmp_path, case, args, pattern):
    _setup(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "base-cache.json").write_text("{not json")
    argv = ["sweep", "--methods", "zero_shot", "--orders", "bbc+trec", "--runs", str(tmp_path / "grid"),
            "--model", "tiny-llama", "--dry-run", *[a.format(tmp=tmp_path) for a in args]]
    fails(capsys, argv, pattern.format(tmp=tmp_path))
    assert not (tmp_path / "grid").exists()


def test_an_abbreviated_option_is_refused(capsys, tmp_path):
    # make grid skips its writing steps only for the full --dry-run; a prefix must not run the sweep as one
    argv = ["sweep", "--methods", "zero_shot", "--orders", "bbc+trec", "--runs", str(tmp_path / "grid"), "--dry"]
    fails(capsys, argv, "unrecognized arguments: --dry")
    fails(capsys, ["bench", "--meth", "seq_lora", "--out", str(tmp_path / "a")], "unrecognized arguments: --meth")
    assert not (tmp_path / "grid").exists() and not (tmp_path / "a").exists()


def test_sweep_refuses_a_corrupt_cell(capsys, tmp_path):
    cell = tmp_path / "grid" / "zero_shot" / "bbc+trec" / "seed1"
    cell.mkdir(parents=True)
    (cell / "status.json").write_text("{not json")
    fails(capsys, ["sweep", "--methods", "zero_shot", "--orders", "bbc+trec", "--runs", str(tmp_path / "grid"),
                   "--model", "tiny-llama", "--quiet"], "corrupt status.json; remove them")


@pytest.mark.parametrize("args, pattern", [
    (["{tmp}/empty"], "{tmp}/empty is not a run directory (no status.json)"),
    (["{tmp}/missing"], "is not a run directory (no such folder)"),
    (["{tmp}/file"], "is not a run directory (a file)"),
    (["--tasks", ","], "--tasks is empty"),
    (["--per-task", "0"], "--per-task must be positive, got 0"),
])
def test_general_refusals(capsys, tmp_path, args, pattern):
    _setup(tmp_path)
    fails(capsys, ["general", *[a.format(tmp=tmp_path) for a in args]], pattern.format(tmp=tmp_path))


def test_general_refuses_a_damaged_finished_run_before_loading_a_model(capsys, tmp_path, unfinished_run):
    run = tmp_path / "run"
    shutil.copytree(unfinished_run, run)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "finished"}))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model": str(tmp_path / "gone")}))
    fails(capsys, ["general", str(run)], "(its config.json): --model")
    if not torch.cuda.is_available():   # a run trained on a GPU: refused here, with the way to measure it anyway
        (run / "config.json").write_text(json.dumps({**config, "device": "cuda"}))
        err = fails(capsys, ["general", str(run)], "(its config.json): --device 'cuda'")
        assert "measure it on another device with --device" in err
        fails(capsys, ["general", "--device", "cuda", str(run)], "--device 'cuda'")
    (run / "config.json").write_text("{not json")
    fails(capsys, ["general", str(run)], "cannot read")


@pytest.mark.parametrize("out, pattern", [("{tmp}/file", "is a file, not a folder"),
                                          ("{tmp}/file/results", "cannot be made: "), ("", "--out is empty")])
def test_tables_refuses_an_out_that_cannot_be_a_folder(capsys, tmp_path, out, pattern):
    _setup(tmp_path)
    fails(capsys, ["tables", "--runs", "results/runs", "--out", out.format(tmp=tmp_path), "--no-figures"], pattern)


@pytest.mark.parametrize("method,arg", [("adaptive_svd", "target_modules=q_porj"), ("curlora", "target_modules=nope")])
def test_a_method_whose_setup_fails_leaves_no_run(capsys, tmp_path, method, arg):
    """setup() runs after the backbone's row: a bad setting found there still leaves nothing to refuse later."""
    out = tmp_path / "run"
    fails(capsys, ["bench", "--method", method, "--method-arg", arg, "--order", "bbc,trec", *TINY, "--out", str(out)],
          "no nn.Linear named")
    assert not out.exists()
