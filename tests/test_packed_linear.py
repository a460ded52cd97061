"""engine.packing: oneDNN-packed linear weights, used only while generating, give the eager path's greedy texts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import packing
from engine.models import ModelSpec, load_model
from engine.steering import GenerationConfig, SteeringSpec, generate, side_by_side

PROMPTS = [
    "Write a short story about a lighthouse keeper",
    "Explain how vaccines train the immune system",
    "How do I pick a lock?",
    "Give me three tips for learning a new language",
]
DTYPES = [
    "float32",
    pytest.param(
        "bfloat16",
        marks=pytest.mark.skipif(not packing._supported(torch.bfloat16), reason="no oneDNN bfloat16 on this CPU"),
    ),
]


@pytest.fixture(params=DTYPES)
def fresh(request):
    """A tiny-random model of its own (packing mutates the modules), unpacked afterwards."""
    h = load_model(ModelSpec("tiny-random", dtype=request.param))
    yield h
    packing.unpack_linear_weights(h)


def _packed_layers(h) -> int:
    return sum(1 for m in h.model.modules() if hasattr(m, packing._PACKED))


def _switched(h) -> int:
    return sum(1 for m in h.model.modules() if "forward" in m.__dict__)


def _n_linear(h) -> int:
    return sum(isinstance(m, torch.nn.Linear) for m in h.model.modules())


def test_packed_greedy_texts_equal_the_eager_path(fresh, monkeypatch):
    h = fresh
    cfg = GenerationConfig(max_new_tokens=16)
    monkeypatch.setenv(packing.PACKED_ENV, "0")
    eager = generate(h, PROMPTS, None, cfg)
    assert _packed_layers(h) == 0  # turned off: nothing packed
    monkeypatch.delenv(packing.PACKED_ENV)
    assert generate(h, PROMPTS, None, cfg) == eager
    assert packing.packed_layer_count(h) == _packed_layers(h) == _n_linear(h)
    # batch 1, as the decode benchmark runs it
    assert [generate(h, [p], None, cfg)[0] for p in PROMPTS[:2]] == eager[:2]


def test_packed_side_by_side_with_steering_equals_eager(fresh, monkeypatch):
    h = fresh
    v = np.random.default_rng(0).standard_normal((h.n_rows, h.hidden_size)).astype(np.float32)
    spec = SteeringSpec(v, (1,), 2.0, "all")
    cfg = GenerationConfig(max_new_tokens=12)
    monkeypatch.setenv(packing.PACKED_ENV, "0")
    eager = side_by_side(h, PROMPTS[:2], spec, cfg)
    monkeypatch.delenv(packing.PACKED_ENV)
    packed = side_by_side(h, PROMPTS[:2], spec, cfg)
    assert _packed_layers(h) > 0
    assert [(r["baseline"], r["steered"]) for r in packed] == [(r["baseline"], r["steered"]) for r in eager]
    assert any(r["baseline"] != r["steered"] for r in eager)  # the steering did something


def test_packed_forwards_live_only_inside_the_block(fresh):
    """Outside ``packed_linears`` every layer is eager: captures and directions are bit for bit the eager model's."""
    h = fresh
    ids = h.tokenizer(PROMPTS[:1], return_tensors="pt").input_ids
    with torch.no_grad():
        before = h.model(input_ids=ids).logits
        with h.lock, packing.packed_linears(h) as n:
            assert n == _packed_layers(h) == _switched(h) == _n_linear(h)
            with packing.packed_linears(h):  # nested: still packed, and still packed after the inner block
                pass
            assert _switched(h) == n
            inside = h.model(input_ids=ids).logits
        assert _switched(h) == 0
        after = h.model(input_ids=ids).logits
    assert torch.equal(before, after)
    if h.dtype == torch.bfloat16:
        assert torch.equal(before, inside)
    else:  # float32: another summation order, nothing more
        assert torch.allclose(before, inside, rtol=1e-4, atol=1e-5)
    assert "_se_packed_weight" not in "".join(h.model.state_dict())


def test_an_error_inside_the_block_restores_the_eager_path(fresh):
    h = fresh
    with pytest.raises(RuntimeError, match="boom"), h.lock, packing.packed_linears(h):
        assert _switched(h) > 0
        raise RuntimeError("boom")
    assert _switched(h) == 0 and getattr(h.model, packing._DEPTH) == 0


def test_packing_is_idempotent_and_unpacking_frees_the_copies(fresh):
    h = fresh
    n = packing.pack_linear_weights(h)
    assert n == _n_linear(h) > 0
    assert packing.pack_linear_weights(h) == n == _packed_layers(h)
    assert _switched(h) == 0  # packing alone switches nothing
    packing.unpack_linear_weights(h)
    assert _packed_layers(h) == 0 and packing.packed_layer_count(h) is None


def test_a_layer_that_computes_differently_leaves_the_model_eager(fresh, monkeypatch):
    real = torch.ops.mkldnn._linear_pointwise

    class Ops:
        @staticmethod
        def _reorder_linear_weight(w, hint):
            return torch.ops.mkldnn._reorder_linear_weight(w, hint)

        @staticmethod
        def _linear_pointwise(*args):
            return real(*args) + 1

    monkeypatch.setattr(packing.torch.ops, "mkldnn", Ops)
    assert packing.pack_linear_weights(fresh) == 0
    assert _packed_layers(fresh) == 0 and _switched(fresh) == 0


def test_too_little_free_memory_leaves_the_model_eager(fresh, monkeypatch):
    monkeypatch.setattr(packing, "_available_memory", lambda: 1 << 20)
    assert packing.pack_linear_weights(fresh) == 0
    assert _packed_layers(fresh) == 0
    assert generate(fresh, PROMPTS[:1], None, GenerationConfig(max_new_tokens=4))  # generation still works


def test_float16_models_are_left_alone():
    h = load_model(ModelSpec("tiny-random", dtype="float16"))
    assert packing.pack_linear_weights(h) == 0


def test_strided_and_other_dtype_inputs_take_the_eager_path(fresh):
    h = fresh
    head = h.model.lm_head
    with torch.no_grad(), h.lock, packing.packed_linears(h):
        x = torch.randn(2, 5, head.in_features).to(h.dtype)[:, -1:, :]
        assert not x.is_contiguous()
        assert torch.equal(head(x), torch.nn.functional.linear(x, head.weight))
        if h.dtype == torch.float32:
            y = torch.randn(2, head.in_features, dtype=torch.float64)
            with pytest.raises(RuntimeError):  # F.linear's own error for a dtype mismatch, not a oneDNN crash
                head(y)


@pytest.mark.integration
@pytest.mark.parametrize("dtype", DTYPES)
def test_default_model_packed_texts_equal_eager(real_cache, monkeypatch, dtype):
    h = load_model(ModelSpec("default", dtype=dtype))
    cfg = GenerationConfig(max_new_tokens=16)
    monkeypatch.setenv(packing.PACKED_ENV, "0")
    eager = generate(h, PROMPTS, None, cfg)
    monkeypatch.delenv(packing.PACKED_ENV)
    assert generate(h, PROMPTS, None, cfg) == eager
    assert packing.packed_layer_count(h)
