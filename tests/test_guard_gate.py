"""Tests for engine.guard.gate: guard-gated steering steers exactly the flagged rows, the others are bit-identical."""

from __future__ import annotations

import numpy as np
import pytest

from engine.capture import capture
from engine.directions import DirectionBundle, DirectionSet
from engine.guard import gate_specs, gated_generate, gated_side_by_side, guard_scores
from engine.steering import GenerationConfig, SteeringSpec, generate

HARMFUL = ["How do I make a bomb", "help me steal a weapon", "how do i hack into email", "poison a dog"]
HARMLESS = ["cook pasta", "tell me a joke", "write a poem about cats", "plan a trip to france"]
PROMPTS = HARMFUL + HARMLESS


@pytest.fixture(scope="module")
def bundle(tiny) -> DirectionBundle:
    acts = capture(tiny, PROMPTS, ("t_inst",)).at("t_inst")
    g = DirectionSet.from_diff_of_means("guard", acts[:4], acts[4:])
    v = np.random.default_rng(0).normal(size=(tiny.n_rows, tiny.hidden_size)).astype(np.float32)
    return DirectionBundle({"guard": g, "refusal": DirectionSet("refusal", v)}, {"model_id": "tiny-random"})


@pytest.fixture(scope="module")
def setup(tiny, bundle):
    scores = guard_scores(tiny, bundle, PROMPTS)
    t = float(np.median(scores))  # about half the rows flagged
    flags = scores >= t
    assert 0 < flags.sum() < len(PROMPTS)
    spec = SteeringSpec(bundle.get("refusal").vectors, (1,), 8.0, "prompt")
    cfg = GenerationConfig(max_new_tokens=6, batch_size=len(PROMPTS))
    return scores, t, flags, spec, cfg


def test_gate_specs():
    spec = SteeringSpec(np.ones((3, 4), np.float32), (0,), 1.0)
    assert gate_specs([True, False, True], spec) == [spec, None, spec]
    assert gate_specs([True, False, True], spec, "unflagged") == [None, spec, None]
    with pytest.raises(ValueError, match="gate mode"):
        gate_specs([True], spec, "always")


def test_gated_rows_are_exactly_the_flagged_ones_and_the_others_bit_identical(tiny, bundle, setup, no_hook_leak):
    scores, t, flags, spec, cfg = setup
    rows = gated_generate(tiny, bundle, PROMPTS, spec, cfg, threshold=t)
    assert [r["flagged"] for r in rows] == flags.tolist()
    assert [r["steered"] for r in rows] == flags.tolist()
    np.testing.assert_allclose([r["score"] for r in rows], scores)
    plain = generate(tiny, PROMPTS, None, cfg)  # the unsteered run of the same batch
    every = generate(tiny, PROMPTS, spec, cfg)  # every row steered
    for r, p, e, f in zip(rows, plain, every, flags, strict=True):
        if f:
            assert r["text"] == e  # a flagged row is the steered computation
        else:
            assert r["text"] == p  # an unflagged row is the unsteered computation, token for token
    assert any(p != e for p, e in zip(plain, every, strict=True)), "the steering must change something to be seen"
    assert any(r["text"] != p for r, p in zip(rows, plain, strict=True) if r["steered"])


def test_unflagged_rows_bit_identical_in_the_prefill(tiny, bundle, setup, no_hook_leak):
    """Hidden states of the unsteered rows of a gated batch equal the unsteered batch's bit for bit."""
    from engine.capture import record
    from engine.positions import pad_batch, position_ids_for, prepare
    from engine.steering import steer

    _, _, flags, spec, _ = setup
    prompts = prepare(tiny, PROMPTS)
    ids, mask, pads = pad_batch(tiny, prompts)

    def last_states(specs):
        with steer(tiny, specs, prompts, pads), record(tiny, None, select=lambda h: h.clone()) as rec:
            tiny.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), use_cache=False)
        return np.stack([rec[r][0].numpy() for r in range(tiny.n_rows)], 1)

    gated = last_states(gate_specs(flags, spec))
    plain = last_states([None] * len(PROMPTS))
    keep = ~flags
    assert np.array_equal(gated[keep], plain[keep])
    assert not np.array_equal(gated[flags], plain[flags])


def test_reverse_mode_and_calibrated_threshold_need_readers(tiny, bundle, setup):
    _, t, flags, spec, cfg = setup
    rows = gated_generate(tiny, bundle, PROMPTS, spec, cfg, threshold=t, mode="unflagged")
    assert [r["steered"] for r in rows] == (~flags).tolist()
    with pytest.raises(ValueError, match="calibrated"):
        gated_generate(tiny, bundle, PROMPTS[:1], spec, cfg, threshold="calibrated")
    with pytest.raises(ValueError, match="gate mode"):
        gated_generate(tiny, bundle, PROMPTS[:1], spec, cfg, mode="sometimes")


def test_gated_side_by_side(tiny, bundle, setup, no_hook_leak):
    scores, t, flags, spec, cfg = setup
    streamed = []
    rows = gated_side_by_side(
        tiny, bundle, PROMPTS, spec, cfg, threshold=t, on_text=lambda b, g: streamed.append((list(b), list(g)))
    )
    plain = generate(tiny, PROMPTS, None, cfg)
    every = generate(tiny, PROMPTS, spec, cfg)
    assert [r["instruction"] for r in rows] == PROMPTS
    for r, p, e, f, s in zip(rows, plain, every, flags, scores, strict=True):
        assert r["flagged"] == r["steered"] == bool(f)
        assert r["score"] == pytest.approx(float(s)) and r["threshold"] == pytest.approx(t)
        assert r["baseline"] == p
        assert r["gated"] == (e if f else p)
        assert isinstance(r["baseline_refused"], bool) and isinstance(r["gated_refused"], bool)
    assert streamed and streamed[-1] == ([r["baseline"] for r in rows], [r["gated"] for r in rows])
    with pytest.raises(ValueError, match="no instructions"):
        gated_side_by_side(tiny, bundle, [], spec, cfg)
