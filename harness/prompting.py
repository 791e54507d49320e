"""Prompts (O-LoRA style) and their token encoding: instruction, options, input, `Answer:`; the answer is
the label text followed by the end-of-turn token. Chat models get the prompt through their chat template."""
from __future__ import annotations

import hashlib
import re

from core.data import Encoded
from tasks.base import TaskData

DEFAULT_MAX_INPUT_TOKENS = 64   # measured: bbc prompts 194 -> 130 tokens, a training step 6.8 s -> 3.5 s
# How an input longer than max_input_tokens is cut. head: its first tokens (the default since the start; on
# orders 4-6 it drops MultiRC's question and answer from every example, CB's hypothesis from 70%: docs/protocol.md).
# fields: where head would drop a line's start (O-LoRA's inputs are `field: text` lines), every line is cut to a
# common length instead, the long ones first, so each field keeps its start; elsewhere the same text as head.
TRUNCATIONS = ("head", "fields")
FIELD_LABEL = re.compile(r"\s*[A-Za-z][\w ]{0,38}:")   # a line's `field:` label: `sentence 2:`, `candidate answer:`
# Llama 3's template writes today's date into every prompt unless given one: a fixed date (the template's own
# example) keeps prompts, and so results, the same on every day
TEMPLATE_DATE = "26 Jul 2024"


def prompt_text(instruction: str, labels: tuple[str, ...], text: str) -> str:
    return f"{instruction}\nOptions: {', '.join(labels)}\n{text}\nAnswer:"


class PromptEncoder:
    def __init__(self, tokenizer, max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS, truncate: str = "head"):
        if truncate not in TRUNCATIONS:
            raise ValueError(f"unknown truncation {truncate!r}; choose one of {', '.join(TRUNCATIONS)}")
        self.tok = tokenizer
        self.max_input_tokens = max_input_tokens
        self.truncate = truncate
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        # The answer ends where the chat template ends an assistant turn (<|im_end|> for ChatML, <end_of_turn> for
        # Gemma, <|eot_id|> for Llama 3, </s> for Llama 2 and Mistral); a base model's answer ends at its eos.
        self.end_id = self._end_of_turn() if self.chat else tokenizer.eos_token_id

    def _end_of_turn(self) -> int:
        """The one token the chat template puts right after an assistant's message (eos where it puts none or
        several)."""
        marker = "ANSWER_END_PROBE"
        try:
            text = self.tok.apply_chat_template([{"role": "user", "content": "Q"},
                                                 {"role": "assistant", "content": marker}], tokenize=False,
                                                date_string=TEMPLATE_DATE)
        except Exception:   # a template that cannot render an assistant turn (jinja raises its own errors)
            return self.tok.eos_token_id
        after = text[text.index(marker) + len(marker):].strip() if marker in text else ""
        ids = self.tok(after, add_special_tokens=False).input_ids if after else []
        return ids[0] if len(ids) == 1 else self.tok.eos_token_id

    def describe(self) -> dict:
        """How prompts are made, for config.json: the chat template (by hash) or plain text, and the answer's end."""
        template = getattr(self.tok, "chat_template", None)
        return {"format": "chat" if self.chat else "plain",
                "chat_template_sha1": hashlib.sha1(str(template).encode()).hexdigest()[:12] if self.chat else None,
                "end_of_answer": self.tok.convert_ids_to_tokens(self.end_id),
                "max_input_tokens": self.max_input_tokens}

    def _cut(self, text: str) -> tuple[str, bool]:
        """The input as this encoder's cut gives it, and whether a line lost its start to it (a head cut ending
        before the last line: MultiRC's question and answer; a fields cut only where the lines outnumber the
        budget)."""
        ids = self.tok(text, add_special_tokens=False).input_ids
        if len(ids) <= self.max_input_tokens:
            return text, False
        head = self.tok.decode(ids[: self.max_input_tokens])
        if self._keeps_every_line(text, head):
            return head + " ...", False
        fields = self._cut_fields(text) if self.truncate == "fields" else None
        return (head + " ...", True) if fields is None else (fields, False)

    def _truncate(self, text: str) -> str:
        return self._cut(text)[0]

    def drops_a_field(self, text: str) -> bool:
        return self._cut(text)[1]

    def fields_dropped(self, data: TaskData) -> dict:
        """{split: [inputs that lose a line's start, inputs]} over the task's training and scored examples."""
        return {split: [sum(self.drops_a_field(ex.text) for ex in getattr(data, split)), len(getattr(data, split))]
                for split in ("train", "test")}

    @staticmethod
    def _keeps_every_line(text: str, head: str) -> bool:
        """Whether the head cut keeps the start of the input's last non-empty line (so of every line): some of its
        text beyond its `field:` label, as `sentence 2:` alone says nothing of the hypothesis."""
        lines = text.split("\n")
        starts = [i for i, line in enumerate(lines) if line.strip()]
        kept = head.split("\n")
        if not starts or starts[-1] == starts[0] or len(kept) > starts[-1] + 1:
            return True   # one non-empty line: a head cut always keeps its start
        if len(kept) < starts[-1] + 1:
            return False
        label = FIELD_LABEL.match(lines[starts[-1]])
        return len(kept[-1].strip()) > (len(label.group(0).strip()) if label else 0)

    def _cut_fields(self, text: str) -> str | None:
        """Every line cut to its first `cap` tokens, the largest cap that fits the budget beside the newlines (a
        token each); a cut line ends in ` ...`, as a head cut does (not counted: a prompt can come out a token or two
        longer than a head cut's, 66 tokens against 65 at most on orders 1-6). None where not even one token a
        line fits (more lines than the budget)."""
        lines = text.split("\n")
        ids = [self.tok(line, add_special_tokens=False).input_ids for line in lines]
        budget = self.max_input_tokens - (len(lines) - 1)
        cap = max(map(len, ids))
        while cap > 1 and sum(min(len(i), cap) for i in ids) > budget:
            cap -= 1
        if sum(min(len(i), cap) for i in ids) > budget:
            return None
        return "\n".join(line if len(i) <= cap else self.tok.decode(i[:cap]) + " ..." for line, i in zip(lines, ids))

    def prompt_string(self, task: TaskData, text: str) -> str:
        """The prompt as text (chat template applied, special tokens spelled out), for lm-eval's tasks."""
        body = prompt_text(task.instruction, task.labels, self._truncate(text))
        if self.chat:
            return self.tok.apply_chat_template([{"role": "user", "content": body}],
                                                add_generation_prompt=True, tokenize=False, date_string=TEMPLATE_DATE)
        return body

    def prompt_ids(self, task: TaskData, text: str) -> tuple[int, ...]:
        return tuple(self.tok(self.prompt_string(task, text), add_special_tokens=not self.chat).input_ids)

    def answer_string(self, label: str) -> str:
        # Base models continue "Answer:" with a space; chat models start a fresh assistant turn.
        return label if self.chat else " " + label

    def answer_ids(self, label: str) -> tuple[int, ...]:
        return tuple(self.tok(self.answer_string(label), add_special_tokens=False).input_ids) + (self.end_id,)

    def candidates(self, task: TaskData) -> list[tuple[int, ...]]:
        return [self.answer_ids(label) for label in task.labels]

    def encode(self, task: TaskData, split: str) -> list[Encoded]:
        index = {label: i for i, label in enumerate(task.labels)}
        return [Encoded(task.name, self.prompt_ids(task, ex.text), self.answer_ids(ex.label), index[ex.label])
                for ex in getattr(task, split)]

    def decode_answer(self, ids) -> str:
        ids = list(ids)
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        return self.tok.decode(ids, skip_special_tokens=True).strip()
