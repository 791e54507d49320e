"""Evaluator throughput against a naive per-example `model.generate` loop, measured in one run on the same
examples of the embedded model; prints accuracies (so speed is not bought with wrong answers) and ratios.

    make perf                      # or: python bench/eval_throughput.py --n 48 --task hutto_amazon
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tasks  # noqa: E402
from core.scoring import CausalLMScorer  # noqa: E402
from harness.evaluation import accuracy  # noqa: E402
from harness.models import autocast, configure_offline, load_model, set_threads  # noqa: E402
from harness.prompting import PromptEncoder  # noqa: E402


@torch.no_grad()
def naive_generate(model, enc, examples, labels, max_new):
    hits = 0
    for ex in examples:
        out = model.generate(torch.tensor([ex.prompt_ids]), max_new_tokens=max_new, do_sample=False,
                             pad_token_id=enc.tok.pad_token_id, eos_token_id=enc.end_id)
        hits += enc.decode_answer(out[0, len(ex.prompt_ids):].tolist()).casefold() == labels[ex.label_index].casefold()
    return 100.0 * hits / len(examples)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="hutto_amazon")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtypes", default="fp32,bf16")
    a = p.parse_args()
    configure_offline()
    set_threads()
    model, tok = load_model(a.model)
    enc = PromptEncoder(tok)
    data = tasks.load_task(a.task, os.environ.get("CL_DATA_DIR"), 1, a.n, seed=1)
    examples, cands = enc.encode(data, "test"), enc.candidates(data)
    max_new = max(len(c) for c in cands) + 2
    scorer = CausalLMScorer(model)
    rows = []

    def timed(name, fn):
        start = time.perf_counter()
        acc = fn()
        secs = time.perf_counter() - start
        rows.append((name, acc, len(examples) / secs))

    timed("naive generate, 1 example at a time (fp32)", lambda: naive_generate(model, enc, examples, data.labels, max_new))
    for dtype in a.dtypes.split(","):
        with autocast(dtype):
            timed(f"rank over labels, batch {a.batch_size} ({dtype})",
                  lambda: accuracy(scorer, examples, cands, data.labels, enc, "rank", a.batch_size))
            timed(f"batched greedy generate, batch {a.batch_size} ({dtype})",
                  lambda: accuracy(scorer, examples, cands, data.labels, enc, "generate", a.batch_size))
    base = rows[0][2]
    print(f"\n{a.n} test examples of {a.task} on {a.model}, {torch.get_num_threads()} threads")
    print(f"{'evaluator':<48} {'acc %':>6} {'ex/s':>7} {'vs naive':>9}")
    for name, acc, rate in rows:
        print(f"{name:<48} {acc:6.1f} {rate:7.2f} {rate / base:8.2f}x")


if __name__ == "__main__":
    main()
