"""Seeded train/test splits of user-supplied prompt sets (built-in sets carry their own stored split)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

from .core import PromptSet


def split_set(ps: PromptSet, seed: int, test_frac: float) -> tuple[PromptSet, PromptSet]:
    """Seeded train/test split of one set (order kept inside each part); both parts are non-empty when n >= 2."""
    n = len(ps.items)
    key = int(hashlib.sha256(f"{seed}:{ps.name}".encode()).hexdigest()[:8], 16)
    order = list(range(n))
    random.Random(key).shuffle(order)
    n_test = round(test_frac * n)
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    test_idx = set(order[:n_test])
    train = [replace(it, split="train") for i, it in enumerate(ps.items) if i not in test_idx]
    test = [replace(it, split="test") for i, it in enumerate(ps.items) if i in test_idx]
    return replace(ps, name=f"{ps.name}:train", items=train), replace(ps, name=f"{ps.name}:test", items=test)
