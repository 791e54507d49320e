"""The training loop every method shares (Avalanche style): the loop owns batching, the optimizer and
progress; a method changes what is trained on, the loss, and what happens after each step."""
from __future__ import annotations

import random
import time

import torch
from tqdm.auto import tqdm

from core.data import Encoded
from core.device import device_of
from core.loss import collate
from harness.models import autocast


def fit(method, task, examples: list[Encoded], *, seed: int, dtype: str = "fp32", log=None, pad_id: int,
        progress: bool = True, share_prefix: bool = False) -> dict:
    """Train `method` on `examples` for one stage; returns step count, final loss and wall time. share_prefix:
    each batch's shared prompt prefix is encoded once (core.loss.collate), where the method allows it.

    Every step: the learning rate method.learning_rate(task, step), method.training_loss, backward, clipping, the
    optimizer step, then method.after_step(task, step) (where a method updates and records what it tracks), then
    method.should_stop(task, step), which only reads."""
    settings = method.settings
    params = [p for p in method.trainable_parameters() if p.requires_grad]
    if not params or not examples:
        return {"steps": 0, "seconds": 0.0}
    # No weight decay: it would zero pyreft's orthogonal parametrisation of R (docs/design.md#weight-decay).
    opt = torch.optim.AdamW(params, lr=method.learning_rate(task, 1), weight_decay=0.0)
    batch_size = int(settings["batch_size"])
    epochs = int(settings["epochs"])
    rng = random.Random(f"{seed}:fit:{task.name}")
    steps_per_epoch = (len(examples) + batch_size - 1) // batch_size
    total = steps_per_epoch * epochs
    started, step, recent = time.time(), 0, []
    bar = tqdm(total=total, desc=f"train {task.name}", unit="step", disable=not progress, leave=False)
    device = device_of(method.model)
    share = share_prefix and method.SHARES_TRAIN_PREFIX
    method.model.train()
    try:
        for epoch in range(epochs):
            order = list(range(len(examples)))
            rng.shuffle(order)
            for start in range(0, len(order), batch_size):
                lr = method.learning_rate(task, step + 1)
                for group in opt.param_groups:
                    group["lr"] = lr
                batch = collate([examples[i] for i in order[start:start + batch_size]], pad_id, device, share)
                with autocast(dtype, device):
                    loss, parts = method.training_loss(batch, task)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, float(settings.get("grad_clip", 1.0)))
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                method.after_step(task, step)
                loss = loss.detach()   # only read from here on (float() of a grad tensor warns on every step)
                recent.append(float(loss))
                bar.update(1)
                bar.set_postfix(loss=f"{sum(recent[-10:]) / len(recent[-10:]):.3f}")
                if log is not None:
                    scheduled = {} if lr == float(settings["lr"]) else {"lr": lr}   # logged where a method schedules it
                    log("step", task=task.name, step=step, epoch=epoch, loss=round(float(loss), 5), **scheduled,
                        **{k: round(float(v), 6) for k, v in parts.items()})
                if method.should_stop(task, step):
                    break
            else:
                continue
            break
    finally:
        bar.close()
        method.model.eval()
    return {"steps": step, "seconds": round(time.time() - started, 2),
            "final_loss": round(sum(recent[-10:]) / max(1, len(recent[-10:])), 5),
            "shared_prefix": share}   # in the log's task_end: which training path made the run (docs/cli.md#caches)
