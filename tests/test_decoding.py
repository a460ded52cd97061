"""Tests for engine.decoding: the next-token rule and the decoding settings (the decode loop itself is tested
through engine.steering.generate in tests/test_steering.py)."""

from __future__ import annotations

import pytest
import torch

from engine.decoding import MAX_NEW_TOKENS_LIMIT, GenerationConfig, kl_divergence, next_tokens, top_k


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


def test_top_k_is_the_softmax_head():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    p, i = top_k(logits, 2)
    full = torch.softmax(logits, -1)[0]
    assert i.tolist() == [[0, 2]]
    torch.testing.assert_close(p[0], full[[0, 2]])
    assert top_k(logits, 10)[1].shape == (1, 4)  # k beyond the vocabulary: every token
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="top-k"):
            top_k(logits, bad)


def test_kl_divergence_by_hand():
    p = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    q = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    kl = kl_divergence(p, q)
    pp, qq = torch.softmax(p.double(), -1), torch.softmax(q.double(), -1)
    torch.testing.assert_close(kl, (pp * (pp / qq).log()).sum(-1))
    assert kl[1] == 0 and kl[0] > 0
    assert kl_divergence(p, p).abs().max() == 0
    with pytest.raises(ValueError, match="shapes differ"):
        kl_divergence(p, q[:, :2])
