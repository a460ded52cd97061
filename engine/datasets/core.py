"""Prompt sets: the items, their provenance, the known kinds/formats/splits, and the one error type."""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..resources import ASSETS_DIR as RESOURCE_ASSETS_DIR

MAX_CHARS = 8000
"""Rows whose instruction is longer than this are skipped (see ``max_chars``)."""

TEMPLATE_MAX_CHARS = 32000
"""Default length limit for jailbreak templates, which are much longer than prompts."""

MAX_FILE_BYTES = 50 * 1000 * 1000
"""Prompt and template files are read only up to this size (50 MB); a bigger file is a DatasetError."""

SLOT = "{instruction}"
GPTFUZZER_SLOT = "[INSERT PROMPT HERE]"

KINDS = (
    "harmful",
    "harmless",
    "harmless_sounds_harmful",
    "jailbreak_template",
    "inversion_question",
    "unknown",
)

FORMATS = (
    "auto",
    "advbench",
    "jbb",
    "xstest",
    "sorrybench",
    "alpaca",
    "catqa",
    "csv",
    "jsonl",
    "json",
    "txt",
)

SPLITS = ("train", "test")

ASSETS_ENV = "STEERING_EXPLORER_ASSETS"
_DEFAULT_ASSETS_DIR = RESOURCE_ASSETS_DIR  # checkout, or the installed package data (engine/resources.py)
ASSETS_DIR: Path = Path(os.environ[ASSETS_ENV]) if os.environ.get(ASSETS_ENV) else _DEFAULT_ASSETS_DIR

BUILTIN: dict[str, tuple[str, str]] = {
    "harmful": ("harmful.jsonl", "harmful"),
    "harmless": ("harmless.jsonl", "harmless"),
    "harmless_sounds_harmful": (
        "harmless_sounds_harmful.jsonl",
        "harmless_sounds_harmful",
    ),
    "jailbreak_templates": ("jailbreak_templates.jsonl", "jailbreak_template"),
    "inversion_questions": ("inversion_questions.jsonl", "inversion_question"),
}

# Default instruction columns for generic files, in order of preference.
DEFAULT_COLUMNS = (
    "instruction",
    "prompt",
    "bad_q",
    "goal",
    "Goal",
    "question",
    "Question",
    "text",
)
TEMPLATE_COLUMNS = ("template", "instruction", "text", "prompt")


class DatasetError(ValueError):
    """A prompt file or data set cannot be used; the message says where and why."""


@dataclass(frozen=True)
class PromptItem:
    """One prompt. ``meta`` holds small extra fields; it is compared but not hashed."""

    id: str
    instruction: str
    category: str | None = None
    split: str | None = None
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)


@dataclass
class Skipped:
    """A malformed row that was left out: its 1-based row number and why."""

    row: int
    reason: str


@dataclass
class PromptSet:
    """An ordered collection of prompts with provenance."""

    name: str
    kind: str
    items: list[PromptItem]
    skipped: list[Skipped] = field(default_factory=list)
    source: str = ""
    sha256: str = ""
    normalized: bool = False

    def instructions(self) -> list[str]:
        return [it.instruction for it in self.items]

    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[PromptItem]:
        return iter(self.items)

    def _with_items(self, items: list[PromptItem]) -> PromptSet:
        return dataclasses.replace(self, items=items, skipped=list(self.skipped))

    def filter(
        self,
        split: str | None = None,
        category: str | Iterable[str] | None = None,
    ) -> PromptSet:
        """Items whose split equals ``split`` and whose category is ``category``
        (a string or a collection of strings); ``None`` means no constraint."""
        if split is not None and split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        cats: set[str] | None
        if category is None:
            cats = None
        elif isinstance(category, str):
            cats = {category}
        else:
            cats = set(category)
        items = [
            it for it in self.items if (split is None or it.split == split) and (cats is None or it.category in cats)
        ]
        return self._with_items(items)

    def sample(self, n: int | None, seed: int = 0) -> PromptSet:
        """Seeded random sample of ``n`` items without replacement.

        The kept items stay in their original order. ``n`` of ``None`` or
        ``>= len(self)`` keeps everything. The selection only uses
        ``random.Random(seed).random()``, whose output Python guarantees to
        stay the same across versions, so samples are reproducible.
        """
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise DatasetError(f"sample size must be a non-negative integer or None, got {n!r}")
        if n is None or n >= len(self.items):
            return self._with_items(list(self.items))
        rng = random.Random(seed)
        keys = [rng.random() for _ in self.items]
        chosen = sorted(sorted(range(len(self.items)), key=keys.__getitem__)[:n])
        return self._with_items([self.items[i] for i in chosen])

    def provenance(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "n": len(self.items),
            "skipped": len(self.skipped),
            "normalized": self.normalized,
        }
