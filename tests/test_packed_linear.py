"""engine.decoding.pack_linear_weights: oneDNN-packed bfloat16 linear weights give the eager path's greedy texts."""

from __future__ import annotations

import pytest
import torch

from engine import decoding
from engine.models import ModelSpec, load_model
from engine.steering import GenerationConfig, generate

PROMPTS = [
    "Write a short story about a lighthouse keeper",
    "Explain how vaccines train the immune system",
    "How do I pick a lock?",
    "Give me three tips for learning a new language",
]


def _supported() -> bool:
    return decoding._supported()


@pytest.fixture
def tiny_bf16():
    h = load_model(ModelSpec("tiny-random", dtype="bfloat16"))
    yield h
    decoding.unpack_linear_weights(h)


def _packed_layers(h) -> int:
    return sum(1 for m in h.model.modules() if hasattr(m, decoding._PACKED))


@pytest.mark.skipif(not _supported(), reason="no oneDNN bfloat16 on this CPU")
def test_packed_greedy_texts_equal_the_eager_path(tiny_bf16, monkeypatch):
    h = tiny_bf16
    cfg = GenerationConfig(max_new_tokens=16)
    monkeypatch.setenv(decoding.PACKED_ENV, "0")
    eager = generate(h, PROMPTS, None, cfg)
    assert _packed_layers(h) == 0  # turned off: nothing packed
    monkeypatch.delenv(decoding.PACKED_ENV)
    n = decoding.pack_linear_weights(h)
    assert n == _packed_layers(h) == sum(isinstance(m, torch.nn.Linear) for m in h.model.modules())
    assert generate(h, PROMPTS, None, cfg) == eager
    # batch 1, as the decode benchmark runs it
    assert [generate(h, [p], None, cfg)[0] for p in PROMPTS[:2]] == eager[:2]


@pytest.mark.skipif(not _supported(), reason="no oneDNN bfloat16 on this CPU")
def test_packed_logits_are_bit_identical_and_unpacking_restores(tiny_bf16):
    h = tiny_bf16
    ids = h.tokenizer(PROMPTS[:1], return_tensors="pt").input_ids
    with torch.no_grad():
        before = h.model(input_ids=ids).logits
        assert decoding.pack_linear_weights(h) > 0
        assert decoding.pack_linear_weights(h) == _packed_layers(h)  # idempotent
        packed = h.model(input_ids=ids).logits
        decoding.unpack_linear_weights(h)
        assert _packed_layers(h) == 0 and all("forward" not in m.__dict__ for m in h.model.modules())
        after = h.model(input_ids=ids).logits
    assert torch.equal(before, packed) and torch.equal(before, after)
    assert "_se_packed_weight" not in "".join(h.model.state_dict())


def test_float32_models_are_left_alone(tiny):
    assert decoding.pack_linear_weights(tiny) == 0
    assert _packed_layers(tiny) == 0


@pytest.mark.skipif(not _supported(), reason="no oneDNN bfloat16 on this CPU")
def test_a_layer_that_computes_differently_leaves_the_model_eager(tiny_bf16, monkeypatch):
    real = decoding._packed_forward

    def off_by_one(self, x):
        return real(self, x) + 1

    monkeypatch.setattr(decoding, "_packed_forward", off_by_one)
    assert decoding.pack_linear_weights(tiny_bf16) == 0
    assert _packed_layers(tiny_bf16) == 0 and all("forward" not in m.__dict__ for m in tiny_bf16.model.modules())


def test_strided_inputs_take_the_eager_path(tiny_bf16):
    if not _supported():
        pytest.skip("no oneDNN bfloat16 on this CPU")
    decoding.pack_linear_weights(tiny_bf16)
    head = tiny_bf16.model.lm_head
    x = torch.randn(2, 5, head.in_features).to(torch.bfloat16)[:, -1:, :]
    assert not x.is_contiguous()
    with torch.no_grad():
        assert torch.equal(head(x), torch.nn.functional.linear(x, head.weight))


@pytest.mark.integration
@pytest.mark.skipif(not _supported(), reason="no oneDNN bfloat16 on this CPU")
def test_default_model_packed_texts_equal_eager(real_cache, monkeypatch):
    h = load_model(ModelSpec("default", dtype="bfloat16"))
    cfg = GenerationConfig(max_new_tokens=16)
    monkeypatch.setenv(decoding.PACKED_ENV, "0")
    eager = generate(h, PROMPTS, None, cfg)
    monkeypatch.delenv(decoding.PACKED_ENV)
    assert decoding.pack_linear_weights(h) > 0
    assert generate(h, PROMPTS, None, cfg) == eager


@pytest.mark.skipif(not _supported(), reason="no oneDNN bfloat16 on this CPU")
def test_packed_side_by_side_with_steering_equals_eager(tiny_bf16, monkeypatch):
    import numpy as np

    from engine.steering import SteeringSpec, side_by_side

    h = tiny_bf16
    v = np.random.default_rng(0).standard_normal((h.n_rows, h.hidden_size)).astype(np.float32)
    spec = SteeringSpec(v, (1,), 2.0, "all")
    cfg = GenerationConfig(max_new_tokens=12)
    monkeypatch.setenv(decoding.PACKED_ENV, "0")
    eager = side_by_side(h, PROMPTS[:2], spec, cfg)
    monkeypatch.delenv(decoding.PACKED_ENV)
    packed = side_by_side(h, PROMPTS[:2], spec, cfg)
    assert _packed_layers(h) > 0
    assert [(r["baseline"], r["steered"]) for r in packed] == [(r["baseline"], r["steered"]) for r in eager]
    assert any(r["baseline"] != r["steered"] for r in eager)  # the steering did something
