"""A task joining a CRAFT group, step by step: what the budget stop reads against what the group's tasks feel.

Trains the stream's tasks as `harness bench` does (same seeds, same draws), then, for the last task, after each
of its first `--steps` updates: the anchor-batch KL the stop rule reads (measured in that step's forward, so on
the state before the update), the KL of the state the update reached on every anchor of the group (what the
merge and `budget_check=all` measure), the same KL with each distribution renormalised over the first answer
tokens of the group's tasks (is the shift in the answers, or elsewhere in the vocabulary?), and how many anchors'
choice among those tokens flips. The last task's budget stop is held off so its whole trajectory shows (the
earlier tasks train and merge as in a run); the report says at which step each `budget_check` would have stopped
at the budget given. Writes a markdown report.

    python bench/craft_joining.py --tasks MNLI,CB --data-dir ../shared/data/CL_Benchmark --eval-split val
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tasks  # noqa: E402
from core.data import TaskContext  # noqa: E402
from harness.config import BenchConfig  # noqa: E402
from harness.models import configure_offline, load_model, set_threads  # noqa: E402
from harness.prompting import TRUNCATIONS, PromptEncoder  # noqa: E402
from harness.rundir import write_report  # noqa: E402
from harness.runner import seed_everything  # noqa: E402
from harness.training import fit  # noqa: E402
from methods.craft import CRAFT, kl  # noqa: E402

HELD_OFF = 1e9   # the joining task's budget in the probe: never reached, so every step shows


def joining_steps(craft: CRAFT, stream: list[str], train: dict, steps: int, seed: int, pad_id: int):
    """Train `stream` as the runner does, the last task for at most `steps` updates; one dict per update of the
    last task (see the module's docstring), and the routing of the last task."""
    rows = []
    label_ids: list[int] = []
    for k, name in enumerate(stream):
        seed_everything(seed * 1000 + k)   # the runner's per-stage seeds, so the draws are a run's
        ctx = TaskContext(index=k, name=name, tasks=[name])
        craft.before_task(ctx, train[name])
        last = k == len(stream) - 1
        if last:
            group_tasks = craft._group.tasks
            ids = torch.tensor(sorted({ex.answer_ids[0] for t in group_tasks for ex in train[t]}), dtype=torch.long)
            label_ids = ids.tolist()
            prior = craft._prior_logp
            record = craft.after_step

            def after_step(task, step):
                record(task, step)
                if prior is not None:
                    with torch.no_grad():
                        now = craft._batched_logprobs(craft._anchor_prompts, craft.current)
                    was_l, now_l = (torch.log_softmax(x[:, ids], -1) for x in (prior, now))
                    rows.append({"step": step, "batch_kl": craft._kls[-1], "all_kl": float(kl(prior, now).mean()),
                                 "label_kl": float(kl(was_l, now_l).mean()),
                                 "flips": int((was_l.argmax(-1) != now_l.argmax(-1)).sum()), "anchors": len(prior),
                                 "task_loss": craft._losses[-1]})
                if step >= steps:
                    craft._stop = (step, f"the probe's --steps {steps}")
            craft.after_step = after_step
            craft.settings = {**craft.settings, "forgetting_budget": HELD_OFF}
        fit(craft, ctx, train[name], seed=seed * 1000 + k, pad_id=pad_id, progress=False)
        if last:
            craft.after_step = record
        else:
            craft.after_task(ctx, train[name])
        print(f"{name}: trained", file=sys.stderr)
    ended = craft._stop[1] if craft._stop is not None else "epochs done"
    return rows, craft.diagnostics["routing"][stream[-1]], label_ids, ended


def would_stop(rows: list[dict], budget: float, kl_term: bool = True) -> dict:
    """The step after which each budget_check stops at `budget` (None: not within the steps shown, or never:
    without the KL term craft has no budget stop)."""
    if not kl_term:
        return {"batch": None, "all": None}
    batch = next((r["step"] for r in rows if r["batch_kl"] >= budget), None)
    every = next((r["step"] for r in rows if r["batch_kl"] >= budget and r["all_kl"] >= budget), None)
    return {"batch": batch, "all": every}


def report(rows, routing, label_ids, budget, kl_term, ended, command) -> str:
    lines = ["# A task joining a CRAFT group", "", f"`{command}`", "",
             f"Routing of the joining task: {routing}. Label tokens of the group's tasks (first answer tokens): "
             f"{label_ids}.", "",
             "| step | batch KL (stop rule) | KL, all anchors | KL, label tokens | label choice flipped | task loss |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['batch_kl']:.3f} | {r['all_kl']:.3f} | {r['label_kl']:.3f} | "
              f"{r['flips']}/{r['anchors']} | {r['task_loss']:.3f} |" for r in rows]
    stop = would_stop(rows, budget, kl_term)
    said = {k: (f"after step {v}" if v is not None else f"not within {len(rows)} steps") for k, v in stop.items()}
    lines += ["", f"The joining task's training ended after step {rows[-1]['step']}: {ended}. At forgetting_budget "
              f"{budget}"
              + ("" if kl_term else " (kl_term=false: craft has no budget stop)") +
              f": budget_check=batch stops {said['batch']}; budget_check=all {said['all']}. The batch KL of step k is measured on the state after update k-1; the other columns "
              "on the state after update k.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--tasks", required=True, help="comma-separated stream; the last task is the one that joins")
    p.add_argument("--steps", type=int, default=8, help="updates of the joining task to follow")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-per-task", type=int, default=BenchConfig.train_per_task)
    p.add_argument("--eval-split", default="test", help="only decides which rows are held out of training")
    p.add_argument("--data-dir", default=os.environ.get(tasks.DATA_ENV))
    p.add_argument("--model", default=BenchConfig.model)
    p.add_argument("--max-input-tokens", type=int, default=BenchConfig.max_input_tokens)
    p.add_argument("--truncate", default=BenchConfig.truncate, choices=TRUNCATIONS)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a craft setting (repeatable)")
    p.add_argument("--out", help="markdown report (default: stdout)")
    a = p.parse_args(argv)
    stream = a.tasks.split(",")
    if len(stream) < 2:
        p.error("--tasks needs at least two tasks: the last one joins the group of an earlier one")
    settings = dict(s.split("=", 1) for s in a.set)
    budget = float(CRAFT.resolve_settings(settings)["forgetting_budget"])
    configure_offline()
    set_threads()
    model, tok = load_model(a.model)
    encoder = PromptEncoder(tok, a.max_input_tokens, a.truncate)
    train = {n: encoder.encode(tasks.load_task(n, a.data_dir, a.train_per_task, BenchConfig.test_per_task, a.seed,
                                               a.eval_split), "train") for n in dict.fromkeys(stream)}
    seed_everything(a.seed)   # as the runner, before the method is made
    craft = CRAFT(model, tok, CRAFT.resolve_settings(settings), a.seed, cache_mb=512)
    craft.setup()
    started = time.time()
    rows, routing, label_ids, ended = joining_steps(craft, stream, train, a.steps, a.seed, tok.pad_token_id)
    if not rows:
        print(f"error: {stream[-1]} opened its own group ({routing['reason']}): nothing to protect, no KL to follow",
              file=sys.stderr)
        return 2
    command = "python bench/craft_joining.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(rows, routing, label_ids, budget, bool(craft.settings["kl_term"]), ended, command)
    print(f"{time.time() - started:.0f} s", file=sys.stderr)
    write_report(text, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
