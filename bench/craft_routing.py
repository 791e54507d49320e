"""CRAFT's stage 1 alone: which tasks of each order share a group, at which `route_threshold`.

Routing reads only the frozen backbone (a task's signature is its answer-position distribution averaged over a
probe of its training prompts), so it can be replayed without training: the same probe draw as
`Craft.before_task`, the same KL(task || group), the same group signature (the mean of its tasks'
distributions). Groupings change only where the threshold crosses a KL printed here, so a tuning grid over
`route_threshold` needs one value per distinct grouping, not a fine sweep. Writes a markdown report.

    python bench/craft_routing.py --orders 1,2,3,4,5,6,offline1,offline2,offline3 --out results/craft_routing.md
"""
from __future__ import annotations

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tasks  # noqa: E402
from harness.config import BenchConfig  # noqa: E402
from harness.models import configure_offline, load_model, set_threads  # noqa: E402
from harness.prompting import TRUNCATIONS, PromptEncoder  # noqa: E402
from harness.rundir import atomic_write  # noqa: E402
from methods import get_method  # noqa: E402
from methods.craft import Group, kl  # noqa: E402

THRESHOLDS = (0.25, 0.5, 1.0, 1.5, 2.0)


def route(signatures: dict[str, torch.Tensor], order: list[str], threshold: float):
    """Stage 1 over an order: [(task, group index, {group: KL})], as Craft.before_task decides (routing=kl), with
    craft's own Group keeping each group's signature (the mean of its tasks' distributions)."""
    groups: list[Group] = []
    decisions = []
    for name in order:
        kls = {g.gid: float(kl(signatures[name], g.signature_log)) for g in groups}
        near = min(kls, key=kls.get) if kls else None
        if near is None or kls[near] > threshold:
            groups.append(Group(len(groups), None))   # routing needs no intervention state
            near = len(groups) - 1
        groups[near].add_signature(signatures[name])
        decisions.append((name, near, kls))
    return decisions


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", default="1,2,3,4,5,6,offline1,offline2,offline3")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-per-task", type=int, default=BenchConfig.train_per_task)
    p.add_argument("--data-dir", default=os.environ.get(tasks.DATA_ENV))
    p.add_argument("--model", default=BenchConfig.model)
    p.add_argument("--max-input-tokens", type=int, default=BenchConfig.max_input_tokens)
    p.add_argument("--truncate", default=BenchConfig.truncate, choices=TRUNCATIONS)
    p.add_argument("--out", help="markdown report (default: stdout)")
    a = p.parse_args()
    configure_offline()
    set_threads()
    model, tok = load_model(a.model)
    encoder = PromptEncoder(tok, a.max_input_tokens, a.truncate)
    craft = get_method("craft")(model, tok, {}, seed=a.seed)
    craft.setup()
    probe_size = int(craft.settings["probe_size"])
    orders = {o: tasks.get_order(o) for o in a.orders.split(",")}
    signatures: dict[str, torch.Tensor] = {}
    for name in dict.fromkeys(t for order in orders.values() for t in order):
        data = tasks.load_task(name, a.data_dir, a.train_per_task, 1, a.seed)
        examples = encoder.encode(data, "train")
        rng = random.Random(f"{a.seed}:craft:{name}")   # Craft.before_task's draw: the probe comes first
        probe = [ex.prompt_ids for ex in rng.sample(examples, min(len(examples), probe_size))]
        signatures[name] = craft._signature(probe)
        print(f"signature: {name}", file=sys.stderr)

    lines = ["# CRAFT routing (stage 1) on the frozen backbone",
             "",
             f"`python bench/craft_routing.py --orders {a.orders} --seed {a.seed}"
             + (f" --data-dir {a.data_dir}" if a.data_dir else "") + "` "
             f"({a.model}, probe of {probe_size} "
             f"training prompts per task drawn as `Craft.before_task` draws them, {a.train_per_task} training "
             f"examples per task). KL(task || group) in nats; a task joins the nearest group when that KL is at most "
             f"`route_threshold` (default {craft.settings['route_threshold']}).", ""]
    for o, order in orders.items():
        lines += [f"## Order {o}", "", "| threshold | groups |", "|---|---|"]
        for th in THRESHOLDS:
            decisions = route(signatures, order, th)
            groups: dict[int, list[str]] = {}
            for name, g, _ in decisions:
                groups.setdefault(g, []).append(name)
            shown = " · ".join("{" + ", ".join(m) + "}" if len(m) > 1 else m[0] for m in groups.values())
            lines.append(f"| {th} | {len(groups)}: {shown} |")
        default = route(signatures, order, float(craft.settings["route_threshold"]))
        lines += ["", "Nearest group's KL when each task arrives (default threshold):", ""]
        lines.append(", ".join(f"{n} {min(k.values()):.2f}" if k else f"{n} (first)" for n, _, k in default))
        lines.append("")
    names = list(signatures)
    lines += ["## KL(row || column) between task signatures", "",
              "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in names:
        lines.append(f"| {r} | " + " | ".join(f"{float(kl(signatures[r], signatures[c])):.2f}" for c in names) + " |")
    text = "\n".join(lines) + "\n"
    if a.out:
        atomic_write(a.out, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
