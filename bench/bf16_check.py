"""bf16 autocast against fp32 on trained models: how many test predictions it changes, and what that does to AA.

For each method, train through the first tasks of an order twice from the same seeds, once in fp32 and once under
bf16 autocast, through the runner's own loop (`harness.training.fit`). After each task, score every task learned so
far both ways, and compare predictions:
- eval:  the fp32-trained model scored under bf16 against the same model scored in fp32;
- train: the bf16-trained model against the fp32-trained one, both scored in fp32;
- both:  `--dtype bf16` as a run uses it (trained and scored in bf16) against fp32 throughout.
The untrained backbone has many near ties, so it is not measured here (make perf reports it). Last line: JSON.

    python bench/bf16_check.py                       # seq_lora and craft, offline1's first 3 tasks, 64/100
    python bench/bf16_check.py --methods seq_lora --tasks 2 --test 40
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tasks  # noqa: E402
from core.data import TaskContext  # noqa: E402
from harness.evaluation import rank_predictions  # noqa: E402
from harness.models import autocast, configure_offline, load_model, set_threads  # noqa: E402
from harness.prompting import PromptEncoder  # noqa: E402
from harness.runner import seed_everything  # noqa: E402
from harness.training import fit  # noqa: E402
from methods import get_method  # noqa: E402


def train_and_score(model, tok, method_name, data, train, test, cands, seed, train_dtype):
    """Train through `data` in `train_dtype`; after task k, predictions on tasks 0..k in fp32 and in bf16."""
    method_cls = get_method(method_name)
    method = method_cls(copy.deepcopy(model), tok, method_cls.resolve_settings({}), seed, cache_mb=4096)
    method.setup()
    preds = {}
    for k, d in enumerate(data):
        seed_everything(seed * 1000 + k)   # as the runner seeds each stage
        ctx = TaskContext(index=k, name=d.name, tasks=[d.name], labels={d.name: d.labels})
        method.before_task(ctx, train[d.name])
        fit(method, ctx, method.training_examples(ctx, train[d.name]), seed=seed * 1000 + k, dtype=train_dtype,
            pad_id=tok.pad_token_id, progress=False)
        method.after_task(ctx, train[d.name])
        for seen in data[:k + 1]:
            for dtype in ("fp32", "bf16"):
                with autocast(dtype):
                    preds[(k, seen.name, dtype)] = rank_predictions(method.scorer(seen.name), test[seen.name],
                                                                    cands[seen.name], tok.pad_token_id)
    return preds


def final_aa(preds, test, names, last, dtype):
    accs = [100 * sum(p == ex.label_index for p, ex in zip(preds[(last, n, dtype)], test[n])) / len(test[n])
            for n in names]
    return sum(accs) / len(accs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="seq_lora,craft")
    p.add_argument("--order", default="offline1")
    p.add_argument("--tasks", type=int, default=3, help="how many of the order's first tasks to train through")
    p.add_argument("--train", type=int, default=64, help="training examples per task")
    p.add_argument("--test", type=int, default=100, help="test examples per task")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model", default="smollm2-135m")
    a = p.parse_args()
    configure_offline()
    set_threads()
    model, tok = load_model(a.model)
    enc = PromptEncoder(tok)
    names = tasks.get_order(a.order)[:a.tasks]
    data = [tasks.load_task(n, os.environ.get(tasks.DATA_ENV), a.train, a.test, a.seed) for n in names]
    train = {d.name: enc.encode(d, "train") for d in data}
    test = {d.name: enc.encode(d, "test") for d in data}
    cands = {d.name: enc.candidates(d) for d in data}
    last = len(data) - 1
    summary = {"order": a.order, "tasks": names, "train": a.train, "test": a.test, "seed": a.seed, "methods": {}}
    for name in a.methods.split(","):
        runs = {dt: train_and_score(model, tok, name, data, train, test, cands, a.seed, dt) for dt in ("fp32", "bf16")}
        cells = [(k, n) for k in range(len(data)) for n in names[:k + 1]]
        total = sum(len(test[n]) for _, n in cells)

        def changed(a_run, a_dt, b_run, b_dt):
            return sum(x != y for k, n in cells
                       for x, y in zip(runs[a_run][(k, n, a_dt)], runs[b_run][(k, n, b_dt)]))

        row = {"predictions": total,
               "changed_eval": changed("fp32", "fp32", "fp32", "bf16"),
               "changed_train": changed("fp32", "fp32", "bf16", "fp32"),
               "changed_both": changed("fp32", "fp32", "bf16", "bf16"),
               "AA_fp32": round(final_aa(runs["fp32"], test, names, last, "fp32"), 2),
               "AA_bf16_eval": round(final_aa(runs["fp32"], test, names, last, "bf16"), 2),
               "AA_bf16_train": round(final_aa(runs["bf16"], test, names, last, "fp32"), 2),
               "AA_bf16_both": round(final_aa(runs["bf16"], test, names, last, "bf16"), 2)}
        summary["methods"][name] = row
        print(f"{name}: of {total} predictions (every task seen, after every task), bf16 changed "
              f"{row['changed_eval']} in evaluation, {row['changed_train']} through training, {row['changed_both']} "
              f"both; final AA fp32 {row['AA_fp32']}, bf16 eval {row['AA_bf16_eval']}, bf16 train "
              f"{row['AA_bf16_train']}, bf16 both {row['AA_bf16_both']}", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
