"""`make perf`: each cached path against the path it replaces, in one process on the embedded model, on the same
examples, with the numbers it produces compared (a speed-up bought with changed answers would show).

Measured: rank evaluation on whole prompts, on the shared prompt prefix with a copy of each prompt's cache per
label, and with every label packed on one copy, on a 2-label and a 14-label task (dbpedia where the CL_Benchmark
data is found, else the packaged subset's); a seq_lora training step on whole prompts and with each batch's
shared prompt prefix encoded once; a CRAFT training step (with each batch's
backbone heads computed in the step, as in a one-epoch run, and with them cached) and a CRAFT evaluation with and
without its frozen-backbone cache (with it, the labels scored in the edited tails' forward or in a second one); bf16 autocast against fp32; and the share of this CPU's measured matmul
throughput each path reaches. The last line is one JSON object.

    make perf              # or: python bench/perf.py --n 48 --steps 4
    python bench/perf.py --only craft   # CRAFT's rows alone
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tasks  # noqa: E402
from core.data import TaskContext  # noqa: E402
from core.loss import answer_loss, collate  # noqa: E402
from core.scoring import CausalLMScorer  # noqa: E402
from harness.evaluation import candidate_logprobs  # noqa: E402
from harness.models import autocast, configure_offline, load_model, set_threads  # noqa: E402
from harness.prompting import PromptEncoder  # noqa: E402
from methods import get_method  # noqa: E402


def timed(fn, repeat: int = 1):
    """(result of the last call, seconds per call: the best of `repeat`, so a busy moment does not count)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def timed_in_turns(fns: dict, repeat: int = 2):
    """timed for several paths, run in turns: a busy spell of a loaded machine then slows each of them, not one."""
    out, best = {}, dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for key, fn in fns.items():
            out[key], secs = timed(fn)
            best[key] = min(best[key], secs)
    return out, best


def matmul_gflops(dtype: torch.dtype, n: int = 1024) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    _, secs = timed(lambda: [a @ b for _ in range(8)], repeat=3)
    return 8 * 2 * n**3 / secs / 1e9


def backbone_params(model) -> int:
    """Parameters a token passes through (the decoder, not the embedding table)."""
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)


def step_seconds(method, ctx, examples, pad_id: int, steps: int, dtype: str = "fp32",
                 share_prefix: bool = False) -> float:
    """Median seconds of a training step (forward, loss, backward; the optimizer is the same for every path)."""
    times = []
    for k in range(steps):
        batch = collate(examples[8 * k: 8 * k + 8], pad_id, share_prefix=share_prefix)
        start = time.perf_counter()
        with autocast(dtype):
            loss, _ = method.training_loss(batch, ctx)
        loss.backward()
        times.append(time.perf_counter() - start)
        for p in method.trainable_parameters():
            p.grad = None
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=48, help="test examples per task")
    p.add_argument("--steps", type=int, default=5, help="training steps timed per path (median)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--only", choices=("all", "craft"), default="all", help="craft: only CRAFT's cache against no cache")
    a = p.parse_args()
    configure_offline()
    set_threads()
    model, tok = load_model(a.model)
    enc = PromptEncoder(tok)
    pad = tok.pad_token_id
    data_dir = os.environ.get("CL_DATA_DIR")   # else the packaged subset: the same dbpedia test examples
    many = "dbpedia"
    peak = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    n_params = backbone_params(model)
    results: dict = {"threads": torch.get_num_threads(), "matmul_gflops": {k: round(v, 1) for k, v in peak.items()}}
    lines = [f"{a.model}, {torch.get_num_threads()} threads; matmul peak fp32 {peak['fp32']:.0f} GFLOPS, "
             f"bf16 {peak['bf16']:.0f} GFLOPS", "", f"{'path':<58} {'value':>10} {'ratio':>7} {'of peak':>8}"]

    def row(name, value, unit, ratio=None, flops=None, secs=None, dtype="fp32"):
        share = f"{100 * flops / secs / 1e9 / peak[dtype]:7.0f}%" if flops else ""
        lines.append(f"{name:<58} {value:>7.2f} {unit:<3}{'' if ratio is None else f'{ratio:6.2f}x':>7} {share:>8}")

    bbc = tasks.load_task("bbc", None, 8 * a.steps, 4, seed=1)   # training batches: seq_lora's and craft's second task
    train = enc.encode(bbc, "train")
    if a.only == "all":
        # ---- evaluation: shared prefix, candidates packed on one prompt cache ----------------------------
        scorer = CausalLMScorer(model)
        can_pack = scorer.packs_candidates
        eval_total = {"whole": 0.0, "packed": 0.0}

        def rank(share_prefix=True, pack=True):
            scorer.packs_candidates = pack and can_pack
            return candidate_logprobs(scorer, prompts, cands, pad, 16, share_prefix=share_prefix)

        for name in ("hutto_amazon", many):
            d = tasks.load_task(name, data_dir if name == many else None, 8, a.n, seed=1)
            prompts, cands = [ex.prompt_ids for ex in enc.encode(d, "test")], enc.candidates(d)
            tokens = sum(len(x) for x in prompts)
            out, t = timed_in_turns({"whole": lambda: rank(share_prefix=False), "copied": lambda: rank(pack=False),
                                     "packed": rank})
            (full, _), (copied, _), (packed, _) = out["whole"], out["copied"], out["packed"]
            t_full, t_copied, t_packed = t["whole"], t["copied"], t["packed"]
            eval_total["whole"] += t_full
            eval_total["packed"] += t_packed
            label = f"rank eval {name} ({len(cands)} labels), ex/s"
            row(f"{label}, whole prompts", len(prompts) / t_full, "", None, 2 * n_params * tokens, t_full)
            row(f"{label}, per-label copies", len(prompts) / t_copied, "", t_full / t_copied,
                2 * n_params * tokens, t_copied)
            row(f"{label}, packed labels", len(prompts) / t_packed, "", t_full / t_packed,
                2 * n_params * tokens, t_packed)
            same = all(torch.equal(full.argmax(-1), s.argmax(-1)) for s in (copied, packed))
            change = max(float((full - s).abs().max()) for s in (copied, packed))
            lines.append(f"{'':<4}packed over per-label copies {t_copied / t_packed:.2f}x; same predictions "
                         f"(all three): {same}; largest score change {change:.1e}")
            results.setdefault("eval", {})[name] = {"whole_ex_s": round(len(prompts) / t_full, 2),
                                                    "copied_ex_s": round(len(prompts) / t_copied, 2),
                                                    "packed_ex_s": round(len(prompts) / t_packed, 2),
                                                    "packed_over_copies": round(t_copied / t_packed, 2),
                                                    "same_predictions": same}
            if name == "hutto_amazon":
                with autocast("bf16"):
                    (b16, _), t_b16 = timed(rank)
                row(f"{label}, packed, bf16", len(prompts) / t_b16, "", t_packed / t_b16,
                    2 * n_params * tokens, t_b16, "bf16")
                changed = int((b16.argmax(-1) != packed.argmax(-1)).sum())
                lines.append(f"{'':<4}bf16 changed {changed} of {len(prompts)} predictions of the untrained backbone")
                results["bf16_eval_speedup"] = round(t_packed / t_b16, 2)
        results["eval_speedup"] = round(eval_total["whole"] / eval_total["packed"], 2)

        # ---- training: seq_lora ----------------------------------------------------------------------
        tokens = sum(len(ex.prompt_ids) + len(ex.answer_ids) for ex in train[:8])
        ctx = TaskContext(0, "bbc", ["bbc"])
        backbone = copy.deepcopy(model)   # peft wraps the model it is given in place
        lora = get_method("seq_lora")(model, tok, {}, seed=1)
        lora.setup()
        lora.model.train()
        t_lora = step_seconds(lora, ctx, train, pad, a.steps)
        t_shared = step_seconds(lora, ctx, train, pad, a.steps, share_prefix=True)
        t_lora16 = step_seconds(lora, ctx, train, pad, a.steps, "bf16", share_prefix=True)
        lora.model.eval()   # dropout off: the two paths are then the same computation
        with torch.no_grad():
            gap = max(abs(float(answer_loss(lora.model, collate(train[8 * k: 8 * k + 8], pad))
                                - answer_loss(lora.model, collate(train[8 * k: 8 * k + 8], pad, share_prefix=True))))
                      for k in range(a.steps))
        prefix = collate(train[:8], pad, share_prefix=True)["prefix"]["ids"].shape[1]
        shared_tokens = tokens - 7 * prefix   # the prefix is encoded once for the batch's 8 rows
        # forward 2N per token, backward 2N (activations only: the backbone's weights take no gradient)
        row("seq_lora training step (batch 8), whole prompts, s", t_lora, "", None, 4 * n_params * tokens, t_lora)
        row("seq_lora training step, shared prefix, s", t_shared, "", t_lora / t_shared, 4 * n_params * shared_tokens,
            t_shared)
        lines.append(f"{'':<4}shared prefix {prefix} of {tokens / 8:.0f} tokens a row (bbc); largest loss change with "
                     f"dropout off {gap:.1e}")
        row("seq_lora training step, shared prefix, bf16 autocast, s", t_lora16, "", t_shared / t_lora16,
            4 * n_params * shared_tokens, t_lora16, "bf16")
        results.update(seq_lora_step_s=round(t_lora, 3), train_speedup=round(t_lora / t_shared, 2),
                       bf16_train_speedup=round(t_shared / t_lora16, 2))
        model = backbone

    # ---- CRAFT: frozen-backbone cache ----------------------------------------------------------------
    amazon = tasks.load_task("hutto_amazon", None, 8 * a.steps, a.n, seed=1)
    first = enc.encode(amazon, "train")
    test = [ex.prompt_ids for ex in enc.encode(amazon, "test")]
    cands = enc.candidates(amazon)
    craft_times, craft_scores = {}, {}
    for cache_mb in (0, 4096):
        craft = get_method("craft")(model, tok, {"routing": "single"}, seed=1, cache_mb=cache_mb)
        craft.setup()
        # a first task makes a group with anchors, so the timed steps include the anchor KL, as in a stream
        c0 = TaskContext(0, "hutto_amazon", ["hutto_amazon"])
        craft.before_task(c0, first)
        craft.after_task(c0, first)
        c1 = TaskContext(1, "bbc", ["bbc"])
        craft.before_task(c1, train)
        craft.current.train()
        step = step_seconds(craft, c1, train, pad, a.steps)
        # the same batches again: their heads are cached now, as in a later epoch (a task's first epoch computes
        # every training prompt's head once, in its step; its later epochs, anchors and merges find theirs)
        warm = step_seconds(craft, c1, train, pad, a.steps) if cache_mb else step
        craft.current.eval()
        craft.after_task(c1, train)
        candidate_logprobs(craft.scorer("hutto_amazon"), test, cands, pad, 16)   # the first evaluation fills caches

        def craft_eval(one_forward=True):
            scorer = craft.scorer("hutto_amazon")
            if not one_forward:   # the edited tails, then the labels on their cache: two forwards a batch
                scorer.encode_with_continuation = None
            return candidate_logprobs(scorer, test, cands, pad, 16)
        paths = {"one": craft_eval, "two": lambda: craft_eval(one_forward=False)} if cache_mb else {"full": craft_eval}
        out, t = timed_in_turns(paths)
        craft_times[cache_mb] = (step, warm, t)
        craft_scores[cache_mb] = {k: v[0] for k, v in out.items()}
        craft.hooks.remove()
    (s_full, _, t_full), (s_cached, s_warm, t_cached) = craft_times[0], craft_times[4096]
    e_full, e_cached, e_two = t_full["full"], t_cached["one"], t_cached["two"]
    full_scores = craft_scores[0]["full"]
    same = all(torch.equal(full_scores.argmax(-1), s.argmax(-1)) for s in craft_scores[4096].values())
    row("craft training step (batch 8 + 4 anchors), no cache, s", s_full, "")
    row("craft training step, backbone cache, heads computed, s", s_cached, "", s_full / s_cached)
    row("craft training step, backbone cache, heads cached, s", s_warm, "", s_full / s_warm)
    row("craft rank eval hutto_amazon, no cache, ex/s", len(test) / e_full, "")
    row("craft rank eval, backbone cache (warm), tails then labels, ex/s", len(test) / e_two, "", e_full / e_two)
    row("craft rank eval, backbone cache (warm), one forward, ex/s", len(test) / e_cached, "", e_full / e_cached)
    lines.append(f"    same predictions: {same}; largest score change "
                 f"{max(float((full_scores - s).abs().max()) for s in craft_scores[4096].values()):.1e}")
    results.update(craft_train_speedup=round(s_full / s_cached, 2), craft_train_speedup_warm=round(s_full / s_warm, 2),
                   craft_eval_speedup=round(e_full / e_cached, 2), craft_eval_one_forward=round(e_two / e_cached, 2),
                   craft_same_predictions=same)
    print("\n".join(lines))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
