"""Every method on CUDA against the CPU, in one short call on a GPU machine (a few minutes on one GPU).

    python bench/gpu_check.py                        # every method, offline1, 4 train / 4 test per task
    python bench/gpu_check.py --methods seq_lora,craft --bf16
    python bench/gpu_check.py --methods seq_lora:dropout=0,o_lora:dropout=0   # a method with settings, as a sweep's

Runs a tiny bench of each method (one optimizer step per task) with the embedded model on the CPU and on
CUDA, from the same backbone, and compares them: per method the largest difference between the two accuracy
matrices (points), whether the matrices are identical, and the largest difference between the two runs'
training losses. fp32 on both sides: a difference is float rounding between kernels (a near-tie prediction
may flip), a large one is a bug. --bf16 adds a CUDA run under bf16 autocast, compared with CUDA fp32.
Without CUDA it runs the CPU half only and says so. Prints one JSON summary last; exits 1 when a run failed.

--cuda-only leaves the CPU side out: `--cuda-only --repeat [--deterministic]` is the rerun check alone.
--repeat runs every side twice and compares each with its own rerun (`repeat`): on the CPU the same seed gives
the same matrix; on CUDA it did not (2026-12-04, docs/cli.md#gpus), and --deterministic, which asks torch for
deterministic kernels (use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8), is the candidate fix to
measure with it."""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from core.errors import UsageError  # noqa: E402
from harness import config  # noqa: E402
from harness.config import BenchConfig  # noqa: E402
from harness.models import DEFAULT_MODEL, check_device, configure_offline, gpu_info, load_model  # noqa: E402
from harness.rundir import RunDir  # noqa: E402
from harness.runner import run_bench  # noqa: E402
from harness.sweep import MethodSpec, split_methods  # noqa: E402
from methods import discover  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="all",
                   help="comma-separated methods, each a name or a sweep's name:key=value (default: every method)")
    p.add_argument("--order", default="offline1")
    p.add_argument("--train", type=int, default=4, help="training examples per task (default 4)")
    p.add_argument("--test", type=int, default=4, help="test examples per task (default 4)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", default="cuda", help="the GPU to compare with the CPU (default cuda)")
    p.add_argument("--bf16", action="store_true", help="also run CUDA under bf16 autocast (compared with CUDA fp32)")
    p.add_argument("--out", default=None, help="folder for the runs (default: a temporary folder)")
    p.add_argument("--repeat", action="store_true", help="run every side twice and compare each with its rerun")
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True) and CUBLAS_WORKSPACE_CONFIG=:4096:8, set before "
                        "CUDA starts")
    p.add_argument("--cuda-only", action="store_true",
                   help="leave the CPU side out (with --repeat: CUDA's rerun check alone, in seconds; on a GPU "
                        "machine whose cores a sweep is using, the CPU side is what takes minutes)")
    return p.parse_args(argv)


def one_run(name: str, backbone, tok, device: str, dtype: str, args, out: str, again: bool = False) -> dict:
    """A tiny bench of `name` (a method spec) on a copy of `backbone`: its matrix and step losses, or the error."""
    spec = MethodSpec.parse(name)
    cfg = BenchConfig(method=spec.name, method_args=dict(spec.args), order=args.order, seed=1,
                      train_per_task=args.train, test_per_task=args.test,
                      model=args.model, device=device, dtype=dtype, progress=False, overwrite=True,
                      out=os.path.join(out, f"{spec.label}-{device.replace(':', '')}-{dtype}"
                                       + ("-again" if again else "")))
    started = time.time()
    try:
        run = run_bench(cfg, model_and_tokenizer=(copy.deepcopy(backbone), tok))
    except Exception as e:   # one method's failure is reported with the others, not a stop
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
    losses = [e["loss"] for e in RunDir(run).events() if e["event"] == "step"]
    return {"matrix": pd.read_csv(os.path.join(run, "matrix.csv"), index_col=0), "losses": losses,
            "seconds": round(time.time() - started, 1)}


def compare(a: dict, b: dict) -> dict:
    if "error" in a or "error" in b:
        return {}
    diff = (a["matrix"] - b["matrix"]).abs()
    same_steps = len(a["losses"]) == len(b["losses"])
    return {"max_abs_accuracy_diff": round(float(diff.max().max()), 2),
            "matrices_identical": bool(diff.max().max() == 0),
            "max_abs_loss_diff": round(max((abs(x - y) for x, y in zip(a["losses"], b["losses"])), default=0.0), 5)
            if same_steps else None,
            "same_step_count": same_steps}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.deterministic:   # cuBLAS reads this when CUDA starts, so before any model is loaded
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    configure_offline()
    try:   # a typo in a spec or a setting fails here, in one line, not as one method's error after the others ran
        # split as a sweep splits them, so a list-valued setting (craft:layers=3,7,11) stays whole
        names = sorted(discover()) if args.methods == "all" else split_methods(args.methods)
        for name in names:
            spec = MethodSpec.parse(name)
            config.resolved_settings(spec.name, dict(spec.args))
    except UsageError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    if cuda:
        check_device(args.device)
    elif args.cuda_only:
        print(f"gpu_check: --cuda-only, but CUDA is not available here (torch {torch.__version__})", file=sys.stderr)
        return 2
    else:
        print(f"CUDA is not available here (torch {torch.__version__}, built with CUDA {torch.version.cuda}): "
              "running the CPU half only", file=sys.stderr)
    out = args.out or tempfile.mkdtemp(prefix="gpu-check-")
    sides = [] if args.cuda_only else [("cpu", "fp32")]
    if cuda:
        sides += [(args.device, "fp32")] + ([(args.device, "bf16")] if args.bf16 else [])
    results: dict = {name: {} for name in names}
    load_seconds = {}
    for device in dict.fromkeys(d for d, _ in sides):
        started = time.time()
        backbone, tok = load_model(args.model, device)
        load_seconds[device] = round(time.time() - started, 1)
        for dtype in [t for d, t in sides if d == device]:
            for name in names:
                print(f"{name} on {device} {dtype}", file=sys.stderr)
                results[name][f"{device}-{dtype}"] = one_run(name, backbone, tok, device, dtype, args, out)
                if args.repeat:
                    results[name][f"{device}-{dtype}-again"] = one_run(name, backbone, tok, device, dtype, args, out,
                                                                       again=True)
        del backbone
        if device != "cpu":
            torch.cuda.empty_cache()
    summary = {"model": args.model, "order": args.order, "train": args.train, "test": args.test, "out": out,
               "cuda_available": cuda, "gpu": gpu_info(args.device) if cuda else None, "load_seconds": load_seconds,
               "deterministic": args.deterministic, "cuda_only": args.cuda_only, "methods": {}}
    failed = []
    for name, runs in results.items():
        entry = {side: {"error": r["error"]} if "error" in r else
                 {"seconds": r["seconds"], "steps": len(r["losses"]),
                  "last_row": r["matrix"].iloc[-1].round(2).to_dict()}
                 for side, r in runs.items() if not side.endswith("-again")}
        failed += [f"{name} {side}" for side, r in runs.items() if "error" in r]
        if args.repeat:
            entry["repeat"] = {side: compare(runs[side], runs[f"{side}-again"])
                               for side in runs if not side.endswith("-again")}
        if cuda and not args.cuda_only:
            entry["cuda_vs_cpu"] = compare(runs["cpu-fp32"], runs[f"{args.device}-fp32"])
        if cuda and args.bf16:
            entry["bf16_vs_fp32_on_cuda"] = compare(runs[f"{args.device}-fp32"], runs[f"{args.device}-bf16"])
        summary["methods"][name] = entry
    summary["failed"] = failed
    summary["ok"] = not failed
    print(json.dumps(summary, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
