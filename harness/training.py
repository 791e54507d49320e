"""The training loop every method shares (Avalanche style): the loop owns batching, the optimizer and
progress; a method changes what is trained on, the loss, and what happens after each step."""
from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from core.data import Encoded
from core.device import device_of
from core.loss import collate
from harness import clock
from harness.models import autocast


@dataclass
class MidTask:
    """Saving a task's training between optimizer steps, and resuming it there, for a method whose state_dict()
    holds everything its training changes (Method.RESUMES_MID_TASK): a long stage (mtl's one stage over a 15-task
    order runs for hours) then survives a kill. The runner makes it; harness.rundir keeps the file."""
    saved: dict | None                # what an interrupted session saved of this task's training, or None
    save: Callable[[dict], None]
    every_seconds: float              # the least time between two saves (inf: none; tests: about 0, every step)
    resumed: Callable[[dict], None]   # called with `saved` when training resumes from it


def rng_state(device: torch.device) -> dict:
    """Every random stream a training step on `device` may draw from (LoRA dropout draws from torch's)."""
    import numpy as np
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":   # only its own GPU's: another sitting may see other GPUs; none in a CPU run
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    import numpy as np
    torch.set_rng_state(state["torch"].cpu())   # generator states are CPU byte tensors, wherever a load put them
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def fit(method, task, examples: list[Encoded], *, seed: int, dtype: str = "fp32", log=None, pad_id: int,
        progress: bool = True, share_prefix: bool = False, mid_task: MidTask | None = None) -> dict:
    """Train `method` on `examples` for one stage; returns step count, final loss and seconds (wall time less
    stops: harness.clock). share_prefix: each batch's shared prompt prefix is encoded once (core.loss.collate),
    where the method allows it. mid_task: save the training's state every `every_seconds` and start from `saved`,
    which then gives the same steps, the same weights and the same losses as a session never interrupted.

    Every step: the learning rate method.learning_rate(task, step), method.training_loss, backward, clipping, the
    optimizer step, then method.after_step(task, step) (where a method updates and records what it tracks), then
    method.should_stop(task, step), which only reads."""
    settings = method.settings
    device = device_of(method.model)
    share = share_prefix and method.SHARES_TRAIN_PREFIX
    # the same float path the save was made on (--cache and --device are not compared on a resume): else the
    # task's training would mix two paths while its record names one, so it starts over
    # and on the same training examples (the saved batch order indexes them; another data folder of the same sizes
    # would silently continue on other examples)
    path = {"shared_prefix": share, "device": device.type,
            "examples": hashlib.sha1(repr([(e.prompt_ids, e.answer_ids) for e in examples]).encode()).hexdigest()
            } if mid_task else None
    saved = mid_task.saved if mid_task else None
    if saved and saved.get("path") != path:
        if log is not None:
            log("task_restarted", task=task.name, reason=f"saved on {saved.get('path')}, now {path}")
        saved = None
    if saved:   # first, so that the optimizer holds the parameters as loaded
        mid_task.resumed(saved)
        method.load_state_dict(saved["method"])
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
    started, step, recent, earlier_seconds = clock.now(), 0, [], 0.0
    if saved:
        opt.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"], device)
        rng.setstate(saved["order_rng"])
        step, recent, earlier_seconds = saved["step"], list(saved["recent"]), saved["seconds"]
        if log is not None:
            log("task_resumed", task=task.name, step=step)
    last_save = time.monotonic()
    bar = tqdm(total=total, initial=step, desc=f"train {task.name}", unit="step", disable=not progress, leave=False)
    method.model.train()
    try:
        for epoch in range(saved["epoch"] if saved else 0, epochs):
            if saved and epoch == saved["epoch"]:   # the epoch the save fell in: its order, from the next batch
                order, begin = saved["order"], (step - epoch * steps_per_epoch) * batch_size
            else:
                order, begin = list(range(len(examples))), 0
                rng.shuffle(order)
            for start in range(begin, len(order), batch_size):
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
                if mid_task and time.monotonic() - last_save >= mid_task.every_seconds:
                    mid_task.save({"step": step, "epoch": epoch, "order": order, "order_rng": rng.getstate(),
                                   "rng": rng_state(device), "method": method.state_dict(), "path": path,
                                   "optimizer": opt.state_dict(), "recent": recent[-10:],
                                   "seconds": earlier_seconds + clock.now() - started})
                    last_save = time.monotonic()
            else:
                continue
            break
    finally:
        bar.close()
        method.model.eval()
    return {"steps": step, "seconds": round(earlier_seconds + clock.now() - started, 2),
            "final_loss": round(sum(recent[-10:]) / max(1, len(recent[-10:])), 5),
            "shared_prefix": share}   # in the log's task_end: which training path made the run (docs/cli.md#caches)
