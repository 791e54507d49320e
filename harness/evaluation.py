"""Evaluation: rank classification over the task's label set (default) and greedy generation with exact
match (O-LoRA's protocol). Both run through a Scorer, the one thing a method exposes for test time:
a forward over the prompt (returning its last logits and KV cache) and a forward over continuation tokens.
The prompt is encoded once per example; every candidate label is scored from the same cache."""
from __future__ import annotations

import copy
import hashlib
import os
import string
import sys

import torch
from tqdm.auto import tqdm

from core.data import Encoded
from core.loss import MIN_SHARED_PREFIX
from core.scoring import Scorer, left_pad
from harness import clock
from harness.models import autocast
from harness.stats import NO_ANSWER_INDEX, encode_labels, percent_correct

EVAL_MODES = ("rank", "generate")
# Raise when how an input's answer is scored changes (candidate_logprobs, the packing, normalize_answer): the
# backbone's shared base scores made before are then scored again (Evaluator.inputs_fingerprint).
SCORING_VERSION = 1



class SharedPrefix:
    """The tokens every prompt of a call begins with (a task's chat template, instruction and options: 38-73%
    of its prompt, docs/cli.md#caches), encoded once per call by the scorer; each batch then
    encodes only its prompts' own tokens on top of a copy of that cache."""

    def __init__(self, scorer: Scorer, prompts: list[tuple[int, ...]], share: bool = True):
        self.length, self.past = 0, None
        if not share or len(prompts) < 2:
            return   # whole prompts
        common = os.path.commonprefix(prompts)
        # Every prompt keeps tokens of its own: at least its last (it gives the next-token logits), more where
        # the scorer edits the last few (CRAFT).
        own = max(1, getattr(scorer, "min_own_tokens", 1))
        self.length = max(0, min(len(common), min(len(p) for p in prompts) - own))
        if self.length >= MIN_SHARED_PREFIX and getattr(scorer, "prefix_forward", None) is not None:
            self.past = scorer.prefix_forward(torch.tensor([common[:self.length]], dtype=torch.long,
                                                           device=scorer.device))

    def encode(self, scorer: Scorer, prompts: list[tuple[int, ...]], pad_id: int):
        """(last logits, KV cache, attention mask over the whole prompts) for a batch of the call's prompts."""
        if self.past is None:
            ids, mask, pos = left_pad(prompts, pad_id, scorer.device)
            logits, past = scorer.prompt_forward(ids, mask, pos)
            return logits, past, mask
        ids, own_mask, own_pos = left_pad([p[self.length:] for p in prompts], pad_id, scorer.device)
        past = copy.deepcopy(self.past)
        past.batch_repeat_interleave(len(prompts))
        # Left padding of the own tokens sits between prefix and text: masked, and positions skip it.
        mask = torch.cat([torch.ones((len(prompts), self.length), dtype=torch.long, device=own_mask.device), own_mask],
                         dim=1)
        logits, past = scorer.prompt_forward(ids, mask, own_pos + self.length, past)
        return logits, past, mask


def encoder_for(scorer: Scorer, prompts: list[tuple[int, ...]], share_prefix: bool):
    if getattr(scorer, "own_encoding", False):
        return OwnEncoding()   # the scorer keeps its own cache of the prompts (CRAFT's frozen backbone)
    return SharedPrefix(scorer, prompts, share_prefix)


class OwnEncoding:
    def encode(self, scorer, prompts, pad_id):
        return scorer.encode_prompts(prompts, pad_id)


def _batches_of(prompts: list[tuple[int, ...]], batch_size: int):
    # Sorting by length keeps padding (wasted compute) low; results are mapped back to input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


class Continuations:
    """Every candidate's tokens after its first (each scored from the logits of the token before it), as
    [C, width] rows, scored in one of two layouts: padded, one row per candidate on its own copy of the prompt
    cache; or packed, all candidates back to back in one row on the prompt's one cache, under a 4-D mask that
    lets a token see its prompt's real tokens and the earlier tokens of its own candidate only."""

    def __init__(self, candidates: list[tuple[int, ...]], pad_id: int, device):
        self.n = len(candidates)
        self.width = max(len(c) for c in candidates) - 1
        pad = [self.width + 1 - len(c) for c in candidates]
        self.ids, self.target, self.mask = (torch.tensor(rows, dtype=torch.long, device=device) for rows in (
            [list(c[:-1]) + [pad_id] * k for c, k in zip(candidates, pad)],
            [list(c[1:]) + [0] * k for c, k in zip(candidates, pad)],
            [[1] * (len(c) - 1) + [0] * k for c, k in zip(candidates, pad)]))
        self.real = self.mask.bool()
        owner = torch.arange(self.n, device=device)[:, None].expand_as(self.real)[self.real]   # [L]
        self.offset = torch.arange(self.width, device=device).expand_as(self.real)[self.real]
        self.block = torch.ones((len(owner), len(owner)), dtype=torch.bool, device=device).tril() & \
            (owner[:, None] == owner[None, :])
        self.flat_ids, self.flat_target = self.ids[self.real], self.target[self.real]   # the packed row, [L]

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """[b, L] values of the packed row -> [b, C, width], padding 0."""
        grid = values.new_zeros((len(values), self.n, self.width))
        grid[:, self.real] = values
        return grid

    def padded(self, scorer: Scorer, past, mask):
        """(log-probability of every target token, whether it is the argmax): [b, C, width] each, padding 0."""
        b = len(mask)
        past.batch_repeat_interleave(self.n)
        full_mask = torch.cat([mask.repeat_interleave(self.n, 0), self.mask.repeat(b, 1)], dim=1)
        pos = mask.sum(-1, keepdim=True).repeat_interleave(self.n, 0) + torch.arange(self.width, device=mask.device)
        logits = scorer.continue_forward(self.ids.repeat(b, 1), full_mask, pos, past)
        logp, hit = _target_logprobs(logits, self.target.repeat(b, 1))
        return logp.view(b, self.n, self.width), hit.view(b, self.n, self.width)

    def packed(self, scorer: Scorer, past, mask):
        """What padded returns, from one row of L = all candidates' tokens per prompt."""
        b, length = len(mask), len(self.block)
        seen = torch.cat([mask.bool()[:, None, None, :].expand(b, 1, length, mask.shape[1]),
                          self.block.expand(b, 1, length, length)], dim=-1)
        logits = scorer.continue_forward(self.flat_ids.expand(b, -1), seen, mask.sum(-1, keepdim=True) + self.offset,
                                         past)
        return tuple(self.unpack(v) for v in _target_logprobs(logits, self.flat_target.expand(b, -1)))


def _target_logprobs(logits, target):
    logits = logits.float()
    logp = torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return logp, logits.argmax(-1) == target


@torch.no_grad()
def candidate_logprobs(scorer: Scorer, prompts: list[tuple[int, ...]], candidates: list[tuple[int, ...]],
                       pad_id: int, batch_size: int = 16, progress=None,
                       share_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """For every prompt and candidate continuation: (total log-probability [N, C], greedy [N, C] = whether
    greedy decoding would produce exactly that continuation). One prompt forward per example (on top of the
    prompts' shared prefix, encoded once, unless share_prefix is off); every candidate is scored from its
    KV cache: all of them on one copy of it where the scorer packs_candidates, else (or with share_prefix
    off) on a copy per candidate."""
    cont = Continuations(candidates, pad_id, scorer.device)
    first = torch.tensor([c[0] for c in candidates], device=scorer.device)
    pack = share_prefix and getattr(scorer, "packs_candidates", False)
    out = torch.zeros((len(prompts), cont.n))
    greedy_out = torch.zeros((len(prompts), cont.n), dtype=torch.bool)
    prefix = encoder_for(scorer, prompts, share_prefix)
    # a scorer that encodes prompts from a cache of its own (CRAFT's) can take the candidates in the same forward
    joint = pack and cont.width > 0 and getattr(scorer, "own_encoding", False) and \
        getattr(scorer, "encode_with_continuation", None) is not None
    for idx in _batches_of(prompts, batch_size):
        b = len(idx)
        batch = [prompts[i] for i in idx]
        if joint:
            last_logits, logits = scorer.encode_with_continuation(batch, pad_id, cont.flat_ids, cont.block, cont.offset)
            logp, hit = (cont.unpack(v) for v in _target_logprobs(logits, cont.flat_target.expand(b, -1)))
        else:
            last_logits, past, mask = prefix.encode(scorer, batch, pad_id)
            if cont.width > 0:
                logp, hit = (cont.packed if pack else cont.padded)(scorer, past, mask)
        scores = torch.log_softmax(last_logits.float(), -1)[:, first]               # [b, C]
        greedy = last_logits.argmax(-1, keepdim=True) == first[None, :]             # [b, C]
        if cont.width > 0:
            scores = scores + (logp * cont.mask).sum(-1)
            greedy = greedy & (hit | ~cont.real).all(-1)
        scores, greedy = scores.cpu(), greedy.cpu()   # one copy per batch, not one per row
        for j, i in enumerate(idx):
            out[i], greedy_out[i] = scores[j], greedy[j]
        if progress is not None:
            progress.update(b)
    return out, greedy_out


def rank_predictions(scorer: Scorer, examples: list[Encoded], candidates: list[tuple[int, ...]], pad_id: int,
                     batch_size: int = 16, progress=None, share_prefix: bool = True) -> list[int]:
    """Index of the candidate with the highest total log-probability (label tokens + end token)."""
    scores, _ = candidate_logprobs(scorer, [ex.prompt_ids for ex in examples], candidates, pad_id, batch_size,
                                   progress, share_prefix)
    return scores.argmax(-1).tolist()


@torch.no_grad()
def generate_predictions(scorer: Scorer, examples: list[Encoded], end_id: int, pad_id: int, max_new_tokens: int,
                         batch_size: int = 16, progress=None, share_prefix: bool = True) -> list[list[int]]:
    """Greedy generation through the scorer's cache, stopping at the end token; returns generated ids."""
    outs: list[list[int]] = [[] for _ in examples]
    prompts = [ex.prompt_ids for ex in examples]
    prefix = encoder_for(scorer, prompts, share_prefix)
    for idx in _batches_of(prompts, batch_size):
        logits, past, mask = prefix.encode(scorer, [prompts[i] for i in idx], pad_id)
        done = torch.zeros(len(idx), dtype=torch.bool, device=logits.device)
        next_pos = mask.sum(-1, keepdim=True)
        for _ in range(max_new_tokens):
            tok = logits.argmax(-1)
            for j, i in enumerate(idx):
                if not done[j]:
                    outs[i].append(int(tok[j]))
            done |= tok == end_id
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones((len(idx), 1), dtype=torch.long, device=mask.device)], dim=1)
            logits = scorer.continue_forward(tok.unsqueeze(-1), mask, next_pos, past)[:, -1, :]
            next_pos = next_pos + 1
        if progress is not None:
            progress.update(len(idx))
    return outs


def normalize_answer(text: str) -> str:
    """O-LoRA's answer normalisation for exact match: lower case, punctuation removed, whitespace collapsed (its
    src/compute_metrics.py, normalize_answer and exact_match_score, at commit 07117e1 of cmnfriend/O-LoRA;
    articles are kept, as there)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(text.split())


def predict(scorer: Scorer, examples: list[Encoded], candidates: list[tuple[int, ...]], labels: tuple[str, ...],
            encoder, mode: str = "rank", batch_size: int = 16, progress=None, share_prefix: bool = True) -> list[int]:
    """The predicted label index per test example: the best-scored label (rank), or the label the normalised
    generation equals (generate; NO_ANSWER_INDEX when it equals none)."""
    if not examples:
        raise ValueError("no test examples")
    pad_id = encoder.tok.pad_token_id
    if mode == "rank":
        return rank_predictions(scorer, examples, candidates, pad_id, batch_size, progress, share_prefix)
    if mode == "generate":
        max_new = max(len(c) for c in candidates) + 2
        gens = generate_predictions(scorer, examples, encoder.end_id, pad_id, max_new, batch_size, progress,
                                    share_prefix)
        index: dict[str, int] = {}
        for i, label in enumerate(labels):
            index.setdefault(normalize_answer(label), i)
        return [index.get(normalize_answer(encoder.decode_answer(g)), NO_ANSWER_INDEX) for g in gens]
    raise ValueError(f"unknown evaluation mode {mode!r}")


def accuracy(scorer: Scorer, examples: list[Encoded], candidates: list[tuple[int, ...]], labels: tuple[str, ...],
             encoder, mode: str = "rank", batch_size: int = 16, progress=None, share_prefix: bool = True) -> float:
    """Accuracy in percent on encoded test examples."""
    preds = predict(scorer, examples, candidates, labels, encoder, mode, batch_size, progress, share_prefix)
    return 100.0 * sum(p == ex.label_index for p, ex in zip(preds, examples)) / len(examples)


class Evaluator:
    """Scores every task of a stream after each stage and owns the score caches: a method names its test-time
    model with `evaluation_key(task)`, and a task whose key was scored before is not scored again; or, where
    its test-time model differs per input, with `example_keys(task, prompts)`, and only the inputs whose key is
    new are scored (with the caches on: reused scores were computed in other batches, the same up to float
    rounding)."""

    def __init__(self, encoder, tasks: dict, mode: str, batch_size: int, dtype: str, progress: bool = True,
                 log=None, share_prefix: bool = True):
        self.encoder, self.mode, self.batch_size, self.dtype = encoder, mode, batch_size, dtype
        self.share_prefix = share_prefix   # the caches on (--cache on): the shared prefix and per-input reuse
        self.by_example: dict = {}   # (task, example index, example key) -> predicted label index
        self.names = list(tasks)
        self.test = {name: encoder.encode(task, "test") for name, task in tasks.items()}
        self.candidates = {name: encoder.candidates(task) for name, task in tasks.items()}
        self.labels = {name: task.labels for name, task in tasks.items()}
        self.progress, self.log = progress, log
        self.scores: dict = {}   # (evaluation key, task) -> (accuracy, predictions as stats.encode_labels)

    def inputs_fingerprint(self, task: str) -> str:
        """A short hash of what this evaluator scores on `task`: every test prompt's token ids, the label
        candidates' and the gold indices, and the scoring code's version. Unlike the test rows' fingerprint it
        follows the prompt code: a change to the template, the cut or the tokenizer changes it."""
        digest = hashlib.sha1(repr((SCORING_VERSION, self.mode, self.candidates[task])).encode())
        for ex in self.test[task]:
            digest.update(repr((ex.prompt_ids, ex.label_index)).encode())
        return digest.hexdigest()[:16]

    def remember(self, key, task: str, accuracy: float, predictions: str) -> None:
        self.scores[(key, task)] = (accuracy, predictions)

    def evaluate(self, row: str, scorer_for, key_for, tasks: list[str] | None = None,
                 example_keys_for=None) -> dict:
        """Accuracy on the stream's tasks (or `tasks`) after stage `row`, and the predicted label of every test
        example: {"accuracy": {task: %}, "predictions": {task: str}, "eval_seconds": s, "scored": n}, and
        "examples_reused": how many inputs took a score from an earlier evaluation, where example_keys_for gave keys."""
        started = clock.now()
        result, predictions, scored, reused, keyed = {}, {}, 0, 0, False
        names = self.names if tasks is None else tasks
        total = sum(len(self.test[n]) for n in names)
        with tqdm(total=total, desc=f"eval after {row}", unit="ex", disable=not self.progress, leave=False) as bar:
            for name in names:
                key = key_for(name)
                if key is not None and (key, name) in self.scores:
                    result[name], predictions[name] = self.scores[(key, name)]
                    bar.update(len(self.test[name]))
                    continue
                examples, scorer = self.test[name], scorer_for(name)
                with autocast(self.dtype, scorer.device):   # the keys may route inputs, as scoring would
                    keys = example_keys_for(name, [ex.prompt_ids for ex in examples]) \
                        if example_keys_for is not None and self.share_prefix else None
                    todo = range(len(examples)) if keys is None else \
                        [i for i, k in enumerate(keys) if (name, i, k) not in self.by_example]
                    fresh = predict(scorer, [examples[i] for i in todo], self.candidates[name], self.labels[name],
                                    self.encoder, self.mode, self.batch_size, bar, self.share_prefix) if todo else []
                # a cell whose inputs all came from the per-input cache counts too: the sweep's cost model takes
                # eval seconds per cell as the mean over a row's cells, reused inputs included
                scored += 1
                if keys is None:
                    preds = fresh
                else:
                    keyed = True
                    self.by_example.update({(name, i, keys[i]): p for i, p in zip(todo, fresh)})
                    preds = [self.by_example[(name, i, k)] for i, k in enumerate(keys)]
                    reused += len(examples) - len(todo)
                    bar.update(len(examples) - len(todo))
                result[name] = percent_correct(preds, [ex.label_index for ex in examples])
                predictions[name] = encode_labels(preds)
                if key is not None:
                    self.scores[(key, name)] = (result[name], predictions[name])
        seconds = round(clock.now() - started, 2)
        if self.log is not None:
            self.log("evaluation", after=row, accuracy=result, seconds=seconds,
                     **({"examples_reused": reused} if keyed else {}))
        if self.progress:
            tqdm.write(f"after {row:>14}: " + "  ".join(f"{n}={result[n]:.1f}" for n in names), file=sys.stderr)
        # scored: the cells this call evaluated (the rest came whole from the task-level score cache): what its
        # seconds paid for
        return {"accuracy": result, "predictions": predictions, "eval_seconds": seconds, "scored": scored,
                **({"examples_reused": reused} if keyed else {})}
