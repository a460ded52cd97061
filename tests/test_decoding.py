"""Tests for engine.decoding: the next-token rule and the decoding settings (the decode loop itself is tested
through engine.steering.generate in tests/test_steering.py)."""

from __future__ import annotations

import pytest
import torch

from engine.decoding import MAX_NEW_TOKENS_LIMIT, GenerationConfig, next_tokens


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    assert next_tokens(logits, GenerationConfig(), None).tolist() == [1, 0]


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    cfg = GenerationConfig(do_sample=True, seed=3, temperature=1.0, top_p=0.9)
    a = next_tokens(logits, cfg, torch.Generator().manual_seed(cfg.seed))
    b = next_tokens(logits, cfg, torch.Generator().manual_seed(cfg.seed))
    assert torch.equal(a, b)
    tiny_p = GenerationConfig(do_sample=True, top_p=1e-6)  # only the most likely token survives
    assert torch.equal(next_tokens(logits, tiny_p, torch.Generator().manual_seed(1)), logits.argmax(-1))


def test_limits():
    assert GenerationConfig(max_new_tokens=MAX_NEW_TOKENS_LIMIT).max_new_tokens == MAX_NEW_TOKENS_LIMIT
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=MAX_NEW_TOKENS_LIMIT + 1)
