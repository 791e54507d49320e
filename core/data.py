"""What flows between the layers once a task is loaded: encoded examples and what a method is told about a
stage. No file access past here."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Encoded:
    """One example as token ids: what methods train on and the evaluator scores."""
    task: str
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]    # label tokens + end-of-answer token
    label_index: int


@dataclass
class TaskContext:
    """What a method is told about the stage it is trained on (never file paths)."""
    index: int                    # 0-based position in the stream
    name: str                     # task name ("all" for a joint stage)
    tasks: list[str]              # the task(s) of this stage
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
