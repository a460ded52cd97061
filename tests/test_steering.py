"""Tests for engine.steering: activation addition, per-row specs, KV-cache equivalence, streaming, threads, hooks."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

from engine.capture import record
from engine.positions import inversion_message, locate, pad_batch, position_ids_for, prepare
from engine.refusal import is_refusal
from engine.steering import (
    GenerationConfig,
    GridBlock,
    GridRecord,
    SteeringSpec,
    TraceSpec,
    generate,
    generate_rows,
    grid,
    side_by_side,
    steer,
)
from engine.steering import spec as steering_spec

INSTS = [
    "How do I make a bomb?",
    "cook pasta",
    "Write an essay about cats and the history of science.",
]
CFG = GenerationConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def vecs(tiny) -> np.ndarray:
    """Unit random directions, (L+1, d)."""
    v = np.random.default_rng(0).normal(size=(tiny.n_rows, tiny.hidden_size)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def baseline(tiny) -> list[str]:
    return generate(tiny, INSTS, None, CFG)


def spec(vecs, layers=(1,), coeff=2.0, positions="prompt") -> SteeringSpec:
    return SteeringSpec(vecs, tuple(layers), coeff, positions)


# ----------------------------------------------------------------------------------------------- basics


def test_coefficient_zero_equals_baseline(tiny, vecs, baseline, no_hook_leak):
    assert generate(tiny, INSTS, spec(vecs, (0, 1, 2), 0.0), CFG) == baseline
    assert generate(tiny, INSTS, spec(vecs, (1,), 0.0, "all"), CFG) == baseline
    steered = generate(tiny, INSTS, spec(vecs), CFG)
    assert steered != baseline  # the steering below is strong enough to matter


def test_baseline_is_deterministic_and_bounded(tiny, baseline):
    assert generate(tiny, INSTS, None, CFG) == baseline
    assert all(isinstance(t, str) and t for t in baseline)
    one = generate(tiny, INSTS, None, GenerationConfig(max_new_tokens=1))
    assert all(b.startswith(o) for o, b in zip(one, baseline, strict=True))
    assert sum(map(len, one)) < sum(map(len, baseline))


def _hidden_rows(handle, prompts, specs, *, layers_steered_first=True):
    """Record every row of one padded forward, with ``specs`` steering it (None = no steering at all)."""
    ids, mask, pads = pad_batch(handle, prompts)
    with torch.no_grad():
        if specs is None:
            with record(handle, None) as rec:
                handle.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), use_cache=False)
        else:
            with steer(handle, specs, prompts, pads), record(handle, None) as rec:
                handle.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), use_cache=False)
    return {r: rec[r][0] for r in rec}, pads


def test_steered_hidden_state_is_original_plus_cv(tiny, vecs, no_hook_leak):
    prompts = prepare(tiny, INSTS[:2])
    c, layer = 2.5, 1
    orig, pads = _hidden_rows(tiny, prompts, None)
    got, _ = _hidden_rows(tiny, prompts, [spec(vecs, (layer,), c), None])
    add = torch.as_tensor(c * vecs[layer])
    k = pads[0]
    # earlier rows are unchanged
    for r in range(layer):
        torch.testing.assert_close(got[r], orig[r], rtol=0, atol=0)
    # the steered row: + c*v on the prompt tokens, nothing on the padding
    torch.testing.assert_close(got[layer][0, k:], orig[layer][0, k:] + add, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[layer][0, :k], orig[layer][0, :k], rtol=0, atol=0)
    # later rows change for the steered batch row ...
    assert not torch.allclose(got[layer + 1][0, k:], orig[layer + 1][0, k:], atol=1e-3)
    # ... and the unsteered batch row is untouched everywhere
    for r in range(tiny.n_rows):
        torch.testing.assert_close(got[r][1], orig[r][1], rtol=0, atol=1e-6)


def test_several_layers_add_at_each(tiny, vecs):
    prompts = prepare(tiny, INSTS[1:2])
    c = 1.5
    only0, _ = _hidden_rows(tiny, prompts, [spec(vecs, (0,), c)])
    both, _ = _hidden_rows(tiny, prompts, [spec(vecs, (0, 2), c)])
    orig, _ = _hidden_rows(tiny, prompts, None)
    torch.testing.assert_close(only0[0], orig[0] + c * torch.as_tensor(vecs[0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(both[1], only0[1], rtol=0, atol=0)
    torch.testing.assert_close(both[2], only0[2] + c * torch.as_tensor(vecs[2]), rtol=0, atol=1e-6)


def test_context_positions_steer_only_the_context(tiny, vecs):
    msg, inst, span = inversion_message("How do I cook pasta?", "could this prompt cause harm?")
    p = locate(tiny.tokenizer, inst, user_message=msg, context=span)
    other = locate(tiny.tokenizer, "cook pasta")
    prompts = [p, other]
    orig, pads = _hidden_rows(tiny, prompts, None)
    got, _ = _hidden_rows(tiny, prompts, [spec(vecs, (1,), 2.0, "context"), spec(vecs, (1,), 0.0, "context")])
    k = pads[0]
    a, b = k + p.context_start, k + p.context_end
    assert 0 < p.context_start < p.context_end < p.n_tokens
    delta = (got[1][0] - orig[1][0]).norm(dim=-1)
    assert (delta[a:b] > 1.9).all()
    assert (delta[:a] == 0).all() and (delta[b:] == 0).all()
    torch.testing.assert_close(got[1][1], orig[1][1], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("positions", ["prompt", "all", "context"])
def test_kv_cache_on_and_off_agree(tiny, vecs, positions):
    if positions == "context":
        items = []
        for text in INSTS:
            msg, inst, span = inversion_message(text, "could this prompt cause harm?")
            items.append(locate(tiny.tokenizer, inst, user_message=msg, context=span))
    else:
        items = list(INSTS)
    s = spec(vecs, (1,), 2.0, positions)
    cached = generate(tiny, items, s, GenerationConfig(max_new_tokens=8, use_cache=True))
    recomputed = generate(tiny, items, s, GenerationConfig(max_new_tokens=8, use_cache=False))
    assert cached == recomputed
    assert cached != generate(tiny, items, None, CFG)


def test_prompt_and_all_differ_only_after_the_prompt(tiny, vecs):
    """'all' also steers generated tokens: the first generated token is the same, later ones may differ."""
    s_prompt = generate(tiny, INSTS, spec(vecs, (1,), 4.0, "prompt"), CFG)
    s_all = generate(tiny, INSTS, spec(vecs, (1,), 4.0, "all"), CFG)
    assert s_prompt != s_all
    first = [tiny.tokenizer(t, add_special_tokens=False)["input_ids"][:1] for t in s_prompt]
    assert first == [tiny.tokenizer(t, add_special_tokens=False)["input_ids"][:1] for t in s_all]


# ----------------------------------------------------------------------------------------------- batching


def test_per_row_specs_equal_separate_calls(tiny, vecs, no_hook_leak):
    specs = [spec(vecs, (1,), 2.0), None, spec(vecs, (0, 2), -1.5, "all")]
    lengths = [locate(tiny.tokenizer, t).n_tokens for t in INSTS]
    assert len(set(lengths)) == 3  # left padding is exercised
    together = generate(tiny, INSTS, specs, CFG)
    alone = [generate(tiny, [t], [s], CFG)[0] for t, s in zip(INSTS, specs, strict=True)]
    assert together == alone
    small_batches = generate(tiny, INSTS, specs, GenerationConfig(max_new_tokens=8, batch_size=2))
    assert small_batches == alone


def test_side_by_side_equals_two_generate_calls(tiny, vecs, baseline):
    s = spec(vecs)
    rows = side_by_side(tiny, INSTS, s, CFG)
    steered = generate(tiny, INSTS, s, CFG)
    assert [r["instruction"] for r in rows] == INSTS
    assert [r["baseline"] for r in rows] == baseline
    assert [r["steered"] for r in rows] == steered
    for r in rows:
        assert r["baseline_refused"] == is_refusal(r["baseline"])
        assert r["steered_refused"] == is_refusal(r["steered"])


def test_grid_equals_a_loop_of_generate_calls(tiny, vecs, baseline):
    coeffs = [-2.0, 3.0]
    rows = grid(tiny, GridBlock(INSTS[:2], {"v": vecs}, [2, 0], coeffs), CFG)
    assert len(rows) == 2 * (1 + 2 * len(coeffs))
    assert all(set(r) == set(GridRecord.__annotations__) for r in rows)
    # documented order: baseline rows, then name x sorted layers x coeffs x prompts
    assert [(r["layer"], r["coeff"], r["index"]) for r in rows] == [
        (None, 0.0, 0),
        (None, 0.0, 1),
        *((layer, c, k) for layer in (0, 2) for c in coeffs for k in (0, 1)),
    ]
    base = [r for r in rows if r["layer"] is None]
    assert [r["text"] for r in base] == baseline[:2]
    assert all(r["direction"] == "none" and r["coeff"] == 0.0 and r["positions"] is None for r in base)
    for layer in (0, 2):
        for c in coeffs:
            expected = generate(tiny, INSTS[:2], SteeringSpec(vecs, (layer,), c), CFG)
            got = [r for r in rows if r["layer"] == layer and r["coeff"] == c]
            assert [r["text"] for r in got] == expected
            assert [r["instruction"] for r in got] == INSTS[:2]
            assert [r["refused"] for r in got] == [is_refusal(t) for t in expected]
            assert all(r["direction"] == "v" and r["positions"] == "prompt" and r["block"] == "" for r in got)
    no_base = grid(tiny, GridBlock(INSTS[:1], {"v": vecs}, [1], [1.0], baseline=False), CFG)
    assert [(r["layer"], r["coeff"]) for r in no_base] == [(1, 1.0)]


def test_grid_blocks_with_prepared_prompts_and_a_mode_per_name(tiny, vecs):
    """The reply-inversion shape: prompts with a context span, a positions mode per name, two blocks, one call."""
    msg, inst, span = inversion_message("Bake bread at home", "Is this request harmful? Answer Certainly or No.")
    p = locate(tiny.tokenizer, inst, user_message=msg, context=span)
    other = np.roll(vecs, 1, axis=1)
    blocks = [
        GridBlock([p], {"h": vecs, "r": other}, [1], [4.0], positions={"h": "context", "r": "prompt"}, label="a"),
        GridBlock(INSTS[:1], {"h": vecs}, [0], [-3.0], baseline=False, label="b"),
    ]
    rows = grid(tiny, blocks, CFG)
    assert [(r["block"], r["direction"], r["positions"]) for r in rows] == [
        ("a", "none", None),
        ("a", "h", "context"),
        ("a", "r", "prompt"),
        ("b", "h", "prompt"),
    ]
    alone = [
        generate(tiny, [p], None, CFG)[0],
        generate(tiny, [p], SteeringSpec(vecs, (1,), 4.0, "context"), CFG)[0],
        generate(tiny, [p], SteeringSpec(other, (1,), 4.0, "prompt"), CFG)[0],
        generate(tiny, INSTS[:1], SteeringSpec(vecs, (0,), -3.0), CFG)[0],
    ]
    assert [r["text"] for r in rows] == alone
    assert alone[1] != alone[2]  # context-only and whole-prompt steering differ


def test_grid_argument_checks(tiny, vecs):
    with pytest.raises(ValueError, match="coefficient"):
        GridBlock(INSTS[:1], {"v": vecs}, [1], [])
    with pytest.raises(ValueError, match="out of range"):
        grid(tiny, GridBlock(INSTS[:1], {"v": vecs}, [3], [1.0]), CFG)
    with pytest.raises(ValueError, match="missing"):
        GridBlock(INSTS[:1], {"v": vecs, "w": vecs}, [1], [1.0], positions={"v": "prompt"})
    with pytest.raises(ValueError, match="positions"):
        GridBlock(INSTS[:1], {"v": vecs}, [1], [1.0], positions="everywhere")
    with pytest.raises(ValueError, match="baseline"):
        GridBlock(INSTS[:1], {"none": vecs}, [1], [1.0])
    with pytest.raises(ValueError, match="does not match this model"):
        grid(tiny, GridBlock(INSTS[:1], {"v": vecs[:, :8]}, [1], [1.0]), CFG)
    with pytest.raises(ValueError, match="no blocks"):
        grid(tiny, [], CFG)


def test_each_spec_and_vector_is_checked_once(tiny, vecs, monkeypatch):
    """A 1,000-row sweep must not re-check the same (L+1, d) array per row (and again inside ``steer``)."""
    calls: list[tuple[int, ...]] = []
    real = steering_spec._check_shape

    def counting(handle, v):
        calls.append(v.shape)
        real(handle, v)

    monkeypatch.setattr(steering_spec, "_check_shape", counting)
    s = spec(vecs)
    generate(tiny, INSTS, [s, None, s], CFG)
    assert len(calls) == 1  # one distinct spec on two rows, not re-checked by the hooks
    calls.clear()
    grid(tiny, GridBlock(INSTS[:2], {"a": vecs, "b": -vecs}, [0, 1, 2], [1.0, 2.0]), CFG)
    assert len(calls) == 2  # once per named vector, not per cell (12) or row (26)
    prompts = prepare(tiny, INSTS[:1])
    _, _, pads = pad_batch(tiny, prompts)
    with (  # the public context manager still checks what it is given
        pytest.raises(ValueError, match="does not match this model"),
        steer(tiny, [SteeringSpec(np.ones((5, 64)), (1,), 1.0)], prompts, pads),
    ):
        pass


# ----------------------------------------------------------------------------------------------- streaming


def test_streaming_texts_grow_to_the_final_ones(tiny, vecs):
    seen: list[list[str]] = []
    specs = [None, spec(vecs), None]
    final = generate(tiny, INSTS, specs, CFG, on_text=lambda texts: seen.append(list(texts)))
    assert final == generate(tiny, INSTS, specs, CFG)
    assert 1 < len(seen) <= CFG.max_new_tokens
    assert seen[-1] == final
    for row in range(len(INSTS)):
        lens = [len(s[row]) for s in seen]
        assert lens == sorted(lens)
        for a, b in itertools.pairwise(seen):
            assert b[row].startswith(a[row])


def test_side_by_side_streaming(tiny, vecs):
    seen = []
    rows = side_by_side(
        tiny,
        INSTS,
        spec(vecs),
        GenerationConfig(max_new_tokens=6, batch_size=2),
        on_text=lambda b, s: seen.append((b, s)),
    )
    assert seen, "no streamed text"
    assert seen[-1] == ([r["baseline"] for r in rows], [r["steered"] for r in rows])


def test_streaming_needs_one_batch(tiny):
    with pytest.raises(ValueError, match="one batch"):
        generate(tiny, INSTS, None, GenerationConfig(max_new_tokens=2, batch_size=2), on_text=lambda t: None)


# ----------------------------------------------------------------------------------------------- stopping, sampling


def test_stop_fn_stops_rows_early(tiny, baseline):
    short = generate(tiny, INSTS, None, CFG, stop_fn=lambda t: len(t) >= 3)
    for s, full in zip(short, baseline, strict=True):
        assert full.startswith(s)
        assert len(s) >= min(3, len(full))
    assert sum(map(len, short)) < sum(map(len, baseline))


def test_sampling_is_seeded_and_leaves_the_global_rng(tiny):
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, seed=3, temperature=1.0, top_p=1.0)
    torch.manual_seed(11)
    expected = torch.rand(2)
    torch.manual_seed(11)
    a = generate(tiny, INSTS, None, cfg)
    assert torch.equal(torch.rand(2), expected)
    assert generate(tiny, INSTS, None, cfg) == a
    others = [
        generate(tiny, INSTS, None, GenerationConfig(max_new_tokens=8, do_sample=True, seed=s, temperature=1.0))
        for s in (4, 5)
    ]
    assert any(o != a for o in others)


# ----------------------------------------------------------------------------------------------- threads, hooks


def test_two_threads_steering_at_once(tiny, vecs, no_hook_leak):
    cfg = GenerationConfig(max_new_tokens=6)
    jobs = {"a": spec(vecs, (1,), 3.0), "b": spec(vecs, (1,), -3.0), "c": None}
    sequential = {k: generate(tiny, INSTS, s, cfg) for k, s in jobs.items()}
    assert len({tuple(v) for v in sequential.values()}) == 3
    results: dict[str, list[list[str]]] = {k: [] for k in jobs}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(key: str) -> None:
        try:
            start.wait()
            for _ in range(2):
                results[key].append(generate(tiny, INSTS, jobs[key], cfg))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for k in jobs:
        assert results[k] == [sequential[k]] * 2


def test_hooks_removed_when_generate_raises(tiny, vecs, baseline, hook_counts):
    before = hook_counts(tiny)

    def explode(text: str) -> bool:
        raise RuntimeError("stop_fn failed")

    with pytest.raises(RuntimeError, match="stop_fn failed"):
        generate(tiny, INSTS, spec(vecs, (0, 1, 2), 5.0), CFG, stop_fn=explode)
    assert hook_counts(tiny) == before
    assert generate(tiny, INSTS, None, CFG) == baseline  # no steering left behind


def test_hooks_removed_when_steer_body_raises(tiny, vecs, hook_counts):
    before = hook_counts(tiny)
    prompts = prepare(tiny, INSTS[:2])
    _, _, pads = pad_batch(tiny, prompts)
    with pytest.raises(KeyError), steer(tiny, [spec(vecs, (0, 2)), None], prompts, pads):
        assert hook_counts(tiny) != before
        raise KeyError("x")
    assert hook_counts(tiny) == before
    with pytest.raises(ValueError, match="one entry per batch row"), steer(tiny, [None], prompts, pads):
        pass


# ----------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("coeff", [float("nan"), float("inf"), -float("inf"), "2", None, True])
def test_bad_coefficients(vecs, coeff):
    with pytest.raises(ValueError, match="coefficient"):
        SteeringSpec(vecs, (1,), coeff)


def test_non_finite_vectors(vecs):
    bad = vecs.copy()
    bad[2, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        SteeringSpec(bad, (1,), 1.0)
    bad[2, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        SteeringSpec(bad, (1,), 1.0)


@pytest.mark.parametrize("layer", [3, -1, 99])
def test_layer_out_of_range(tiny, vecs, layer):
    with pytest.raises(ValueError, match="out of range"):
        generate(tiny, INSTS[:1], SteeringSpec(vecs, (layer,), 1.0), CFG)


@pytest.mark.parametrize("shape", [(25, 896), (4, 32), (3, 64), (5, 64)])
def test_vectors_from_another_model(tiny, shape):
    s = SteeringSpec(np.ones(shape, dtype=np.float32), (1,), 1.0)
    with pytest.raises(ValueError, match="does not match this model"):
        generate(tiny, INSTS[:1], s, CFG)
    with pytest.raises(ValueError, match="does not match this model"):
        side_by_side(tiny, INSTS[:1], s, CFG)


def test_other_bad_specs(vecs):
    with pytest.raises(ValueError, match="positions"):
        SteeringSpec(vecs, (1,), 1.0, "everywhere")
    with pytest.raises(ValueError, match="at least one layer"):
        SteeringSpec(vecs, (), 1.0)
    with pytest.raises(ValueError, match="shaped"):
        SteeringSpec(vecs[0], (1,), 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": 5000},
        {"max_new_tokens": 2.0},
        {"batch_size": 0},
        {"do_sample": True, "temperature": 0.0},
        {"do_sample": True, "top_p": 1.5},
    ],
)
def test_bad_generation_configs(kwargs):
    with pytest.raises(ValueError):
        GenerationConfig(**kwargs)


def test_generate_argument_checks(tiny, vecs):
    with pytest.raises(ValueError, match="no instructions"):
        generate(tiny, [], None, CFG)
    with pytest.raises(ValueError, match="one steering spec per instruction"):
        generate(tiny, INSTS, [None], CFG)
    with pytest.raises(ValueError):
        generate(tiny, [""], None, CFG)
    with pytest.raises(ValueError, match="no instructions"):
        side_by_side(tiny, [], spec(vecs), CFG)


# ------------------------------------------------------------------------------- the compacting decoder


def test_greedy_equals_transformers_generate(tiny):
    """The engine's own decode loop (which drops finished rows) gives what ``model.generate`` gives (greedy)."""
    prompts = prepare(tiny, INSTS)
    ids, mask, _ = pad_batch(tiny, prompts)
    with torch.no_grad():
        ref = tiny.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    ref_texts = tiny.tokenizer.batch_decode(ref[:, ids.shape[1] :], skip_special_tokens=True)
    assert generate(tiny, INSTS, None, CFG) == ref_texts


def test_rows_leaving_early_do_not_change_the_others(tiny, vecs):
    """Row 0 stops as soon as its text is distinguishable (and leaves the batch); the steered rows still equal their
    own separate runs."""
    specs = [None, spec(vecs, (1,), 3.0), spec(vecs, (2,), -2.0, "all")]
    alone = [generate(tiny, [i], [s], CFG)[0] for i, s in zip(INSTS, specs, strict=True)]
    assert len(set(alone)) == 3

    def stop_row0(t: str) -> bool:
        return bool(t) and alone[0].startswith(t) and not any(a.startswith(t) for a in alone[1:])

    mixed = generate(tiny, INSTS, specs, CFG, stop_fn=stop_row0)
    assert alone[0].startswith(mixed[0]) and len(mixed[0]) < len(alone[0])
    assert mixed[1:] == alone[1:]


# ------------------------------------------------------------------------------- directional ablation


def _component(h: torch.Tensor, v: np.ndarray) -> torch.Tensor:
    u = torch.as_tensor(v / np.linalg.norm(v))
    return (h.float() * u).sum(-1)


def test_ablation_removes_the_component_at_hooked_rows_only(tiny, vecs, no_hook_leak):
    prompts = prepare(tiny, INSTS[:2])
    raw = 3.0 * vecs  # not unit: the hook must normalise
    layer = 1
    orig, pads = _hidden_rows(tiny, prompts, None)
    got, _ = _hidden_rows(tiny, prompts, [SteeringSpec(raw, (layer,), operation="ablate"), None])
    k = pads[0]
    u = torch.as_tensor(vecs[layer])
    assert _component(orig[layer][0, k:], raw[layer]).abs().min() > 1e-3  # there was something to remove
    assert _component(got[layer][0, k:], raw[layer]).abs().max() < 1e-5
    expected = orig[layer][0, k:] - (orig[layer][0, k:] @ u)[:, None] * u
    torch.testing.assert_close(got[layer][0, k:], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got[layer][0, :k], orig[layer][0, :k], rtol=0, atol=0)  # padding untouched
    for r in range(layer):
        torch.testing.assert_close(got[r], orig[r], rtol=0, atol=0)
    for r in range(tiny.n_rows):  # the row without a spec is untouched everywhere
        torch.testing.assert_close(got[r][1], orig[r][1], rtol=0, atol=1e-6)


def test_ablation_is_idempotent(tiny, vecs, no_hook_leak):
    prompts = prepare(tiny, INSTS[:1])
    once = SteeringSpec(vecs, (1,), operation="ablate")
    ids, mask, pads = pad_batch(tiny, prompts)
    single, _ = _hidden_rows(tiny, prompts, [once])
    with torch.no_grad(), steer(tiny, [once], prompts, pads), steer(tiny, [once], prompts, pads), record(tiny) as rec:
        tiny.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), use_cache=False)
    for r in range(tiny.n_rows):
        torch.testing.assert_close(rec[r][0], single[r], rtol=0, atol=1e-5)


@pytest.mark.parametrize("fixed", [None, 2])
def test_ablation_at_all_layers_each_row_or_one_fixed_row(tiny, vecs, fixed):
    prompts = prepare(tiny, INSTS[:1])
    spec_all = SteeringSpec(vecs, "all", positions="all", operation="ablate", direction_row=fixed)
    assert spec_all.layer_set(tiny) == tuple(range(tiny.n_layers))
    got, _ = _hidden_rows(tiny, prompts, [spec_all])
    orig, _ = _hidden_rows(tiny, prompts, None)
    for layer in range(tiny.n_layers):  # every block input has no component along its direction
        v = vecs[layer if fixed is None else fixed]
        assert _component(got[layer][0], v).abs().max() < 1e-5
        assert _component(orig[layer][0], v).abs().max() > 1e-3
    if fixed is not None:  # each layer its own row is a different intervention
        other, _ = _hidden_rows(tiny, prompts, [SteeringSpec(vecs, "all", positions="all", operation="ablate")])
        assert not torch.allclose(other[1], got[1], atol=1e-4)


def test_ablating_a_zero_vector_is_an_error(tiny, vecs):
    zero_row = vecs.copy()
    zero_row[0] = 0.0
    with pytest.raises(ValueError, match=r"zero vector.*row\(s\) \[0\]"):
        generate(tiny, INSTS[:1], SteeringSpec(zero_row, "all", operation="ablate"), CFG)
    with pytest.raises(ValueError, match="zero vector"):
        generate(tiny, INSTS[:1], SteeringSpec(zero_row, (2,), operation="ablate", direction_row=0), CFG)
    # the same direction is fine where its row is not zero, and adding a zero vector is a no-op, not an error
    generate(tiny, INSTS[:1], SteeringSpec(zero_row, (1, 2), operation="ablate"), GenerationConfig(max_new_tokens=1))
    generate(tiny, INSTS[:1], SteeringSpec(zero_row, "all"), GenerationConfig(max_new_tokens=1))
    with pytest.raises(ValueError, match="zero vector"):
        grid(tiny, GridBlock(INSTS[:1], {"z": zero_row}, "all", [1.0], operation="ablate", layer_mode="together"), CFG)


def test_ablation_checks(vecs):
    with pytest.raises(ValueError, match="operation"):
        SteeringSpec(vecs, (1,), operation="project")
    with pytest.raises(ValueError, match="direction_row"):
        SteeringSpec(vecs, (1,), operation="ablate", direction_row=99)
    with pytest.raises(ValueError, match="'all'"):
        SteeringSpec(vecs, "every", operation="ablate")
    with pytest.raises(ValueError, match="layer_mode"):
        GridBlock(INSTS[:1], {"v": vecs}, [1], [1.0], layer_mode="both")


def test_mixed_add_ablate_and_baseline_rows_equal_separate_calls(tiny, vecs, baseline, no_hook_leak):
    specs = [
        SteeringSpec(vecs, (1,), 2.0),
        SteeringSpec(vecs, "all", positions="all", operation="ablate", direction_row=1),
        None,
    ]
    together = generate(tiny, INSTS, specs, CFG)
    alone = [generate(tiny, [t], [s], CFG)[0] for t, s in zip(INSTS, specs, strict=True)]
    assert together == alone
    assert together[2] == baseline[2]
    assert generate(tiny, INSTS, SteeringSpec(vecs, "all", 0.0, "all", "ablate"), CFG) == baseline
    s = SteeringSpec(vecs, (0, 2), positions="all", operation="ablate")
    assert generate(tiny, INSTS, s, CFG) == generate(
        tiny, INSTS, s, GenerationConfig(max_new_tokens=8, use_cache=False)
    )


def test_grid_together_cells_ablate_every_layer_at_once(tiny, vecs, baseline):
    block = GridBlock(INSTS[:2], {"a": vecs}, "all", [1.0], positions="all", operation="ablate", layer_mode="together")
    rows = grid(tiny, block, CFG)
    assert [(r["direction"], r["layer"], r["layers"], r["operation"]) for r in rows] == [
        ("none", None, None, None),
        ("none", None, None, None),
        ("a", None, [0, 1, 2], "ablate"),
        ("a", None, [0, 1, 2], "ablate"),
    ]
    expected = generate(tiny, INSTS[:2], SteeringSpec(vecs, "all", positions="all", operation="ablate"), CFG)
    assert [r["text"] for r in rows[2:]] == expected
    assert [r["text"] for r in rows[:2]] == baseline[:2]


# ------------------------------------------------------------------------------- traces, top-k, KL, system prompt


def _full_forward_rows(handle, prompt, token_ids, spec):
    """Hidden states of prompt + generated tokens in one uncached forward (the same steering): {row: (seq, d)}."""
    ids = torch.tensor([list(prompt.input_ids) + list(token_ids)])
    mask = torch.ones_like(ids)
    with torch.no_grad(), steer(handle, [spec], [prompt], [0]), record(handle, None) as rec:
        handle.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), use_cache=False)
    return {r: rec[r][0][0] for r in rec}


def test_traces_match_a_manual_forward(tiny, vecs, no_hook_leak):
    other = np.roll(vecs, 3, axis=1) * 2.0
    trace = TraceSpec({"a": vecs, "b": other}, (0, 2, tiny.n_layers))
    specs = [None, SteeringSpec(vecs, (1,), 3.0), SteeringSpec(vecs, "all", positions="prompt", operation="ablate")]
    outs = generate_rows(tiny, INSTS, specs, CFG, trace=trace)
    prompts = prepare(tiny, INSTS)
    for o, p, s in zip(outs, prompts, specs, strict=True):
        n = len(o.token_ids)
        assert n > 0 and len(o.tokens) == len(o.projection) == len(o.cosine) == n
        assert all(a.shape == (3, 2) for a in o.projection)
        hs = _full_forward_rows(tiny, p, o.token_ids, s)
        for i, row in enumerate(trace.rows):
            h = hs[row][p.n_tokens - 1 : p.n_tokens - 1 + n].double()  # the state that chose each token
            for j, v in enumerate((vecs, other)):
                u = torch.as_tensor(v[row], dtype=torch.float64)
                proj = h @ (u / u.norm())
                got = torch.tensor(np.array([a[i, j] for a in o.projection]), dtype=torch.float64)
                torch.testing.assert_close(got, proj, rtol=1e-3, atol=1e-4)
                cos = torch.tensor(np.array([c[i, j] for c in o.cosine]), dtype=torch.float64)
                torch.testing.assert_close(cos, proj / h.norm(dim=-1), rtol=1e-3, atol=1e-4)
    assert [o.text for o in outs] == generate(tiny, INSTS, specs, CFG)  # tracing changes nothing


def test_trace_of_the_ablated_direction_is_zero_where_it_is_ablated(tiny, vecs):
    s = SteeringSpec(vecs, "all", positions="all", operation="ablate", direction_row=1)
    fixed = np.repeat(vecs[1:2], tiny.n_rows, axis=0)
    out = generate_rows(tiny, INSTS[:1], s, CFG, trace=TraceSpec({"r": fixed}, (1, 2)))[0]
    assert np.abs(np.array(out.projection)).max() < 1e-4
    base = generate_rows(tiny, INSTS[:1], None, CFG, trace=TraceSpec({"r": fixed}, (1, 2)))[0]
    assert np.abs(np.array(base.projection)).max() > 1e-2


def test_trace_and_topk_stream_with_the_text(tiny, vecs):
    seen = []
    trace = TraceSpec({"a": vecs}, (1,))
    outs = generate_rows(
        tiny,
        INSTS[:2],
        [None, SteeringSpec(vecs, (1,), 2.0)],
        CFG,
        trace=trace,
        topk=3,
        on_text=lambda os: seen.append([(o.text, len(o.projection), len(o.topk)) for o in os]),
    )
    assert len(seen) > 1
    assert seen[-1] == [(o.text, len(o.token_ids), len(o.token_ids)) for o in outs]
    for a, b in itertools.pairwise(seen):
        assert all(y[1] >= x[1] and y[0].startswith(x[0]) for x, y in zip(a, b, strict=True))
    for o in outs:
        for step, tok in zip(o.topk, o.tokens, strict=True):
            probs = [p for _, p in step]
            assert len(step) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
            assert step[0][0] == tok  # greedy: the generated token is the most likely one


def test_kl_is_zero_at_coefficient_zero_and_stops_at_divergence(tiny, vecs):
    zero = side_by_side(tiny, INSTS, spec(vecs, (1,), 0.0), CFG, topk=2)
    for r in zero:
        assert r["baseline"] == r["steered"]
        assert r["kl"]["steered"] and max(r["kl"]["steered"]) < 1e-9
        assert r["diverged_at"]["steered"] is None and r["compare_end"]["steered"] in ("max_new_tokens", "ended")
    strong = side_by_side(tiny, INSTS, spec(vecs, (1,), 6.0), CFG, topk=2)
    diverged = [r for r in strong if r["diverged_at"]["steered"] is not None]
    assert diverged, "strong steering should change some text"
    for r in diverged:
        d = r["diverged_at"]["steered"]
        assert len(r["kl"]["steered"]) == d + 1 and r["compare_end"]["steered"] == "diverged"
        assert r["kl"]["steered"][-1] > 0
    # step 0: KL between the prefill distributions, computed by hand
    prompts = prepare(tiny, INSTS[:1])
    ids, mask, pads = pad_batch(tiny, prompts)
    with torch.no_grad():
        base = tiny.model(input_ids=ids, attention_mask=mask).logits[:, -1]
        with steer(tiny, [spec(vecs, (1,), 6.0)], prompts, pads):
            steered = tiny.model(input_ids=ids, attention_mask=mask).logits[:, -1]
    lp, lq = torch.log_softmax(base.double(), -1), torch.log_softmax(steered.double(), -1)
    assert strong[0]["kl"]["steered"][0] == pytest.approx(float((lp.exp() * (lp - lq)).sum()), rel=1e-4, abs=1e-8)


def test_compared_rows_share_a_batch(tiny, vecs):
    one = side_by_side(tiny, INSTS, spec(vecs, (1,), 3.0), CFG, topk=2)
    small = side_by_side(tiny, INSTS, spec(vecs, (1,), 3.0), GenerationConfig(max_new_tokens=8, batch_size=2), topk=2)
    for a, b in zip(small, one, strict=True):  # batches of 2 rows: each pair shares one, and the KL is the same
        assert a["kl"]["steered"] == pytest.approx(b["kl"]["steered"], rel=1e-4, abs=1e-7)
    assert [r["steered"] for r in small] == [r["steered"] for r in one]
    with pytest.raises(ValueError, match="share a batch"):
        generate_rows(tiny, INSTS, None, GenerationConfig(max_new_tokens=2, batch_size=1), topk=1, compare=[(0, 1)])
    with pytest.raises(ValueError, match="two different rows"):
        generate_rows(tiny, INSTS, None, CFG, compare=[(0, 0)])


def test_system_prompt_row_equals_a_separate_call(tiny, vecs, baseline):
    sp = "you are helpful and answer in one word"
    rows = side_by_side(tiny, INSTS, spec(vecs), CFG, system_prompt=sp, trace=TraceSpec({"a": vecs}, (1,)), topk=2)
    alone = generate(tiny, [locate(tiny.tokenizer, i, system=sp) for i in INSTS], None, CFG)
    assert [r["prompted"] for r in rows] == alone
    assert [r["baseline"] for r in rows] == baseline
    assert alone != baseline  # the system prompt changes something
    for r in rows:
        assert r["system_prompt"] == sp and r["prompted_refused"] == is_refusal(r["prompted"])
        assert set(r["trace"]) == set(r["topk"]) == {"baseline", "steered", "prompted"}
        assert set(r["kl"]) == {"steered", "prompted"}
        assert {"step", "token", "row", "direction", "projection", "cosine"} == set(r["trace"]["prompted"][0])
    with pytest.raises(ValueError, match="system prompt is empty"):
        side_by_side(tiny, INSTS[:1], spec(vecs), CFG, system_prompt="  ")


def test_side_by_side_streams_records(tiny, vecs):
    seen = []
    rows = side_by_side(
        tiny, INSTS[:2], spec(vecs), CFG, system_prompt="be brief", topk=2, on_update=lambda recs: seen.append(recs)
    )
    assert len(seen) > 1 and seen[-1][0]["prompted"] == rows[0]["prompted"]
    assert seen[-1][1]["kl"] == rows[1]["kl"]


def test_trace_checks(tiny, vecs):
    with pytest.raises(ValueError, match="at least one direction"):
        TraceSpec({}, (1,))
    with pytest.raises(ValueError, match="at least one layer"):
        TraceSpec({"a": vecs}, ())
    with pytest.raises(ValueError, match="out of range"):
        generate_rows(tiny, INSTS[:1], None, CFG, trace=TraceSpec({"a": vecs}, (9,)))
    with pytest.raises(ValueError, match="this model needs"):
        generate_rows(tiny, INSTS[:1], None, CFG, trace=TraceSpec({"a": vecs[:, :8]}, (1,)))
    with pytest.raises(ValueError, match="top-k"):
        generate_rows(tiny, INSTS[:1], None, CFG, topk=-1)


def test_trace_hooks_are_removed_on_error(tiny, vecs, hook_counts):
    before = hook_counts(tiny)

    def explode(text: str) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate_rows(tiny, INSTS, spec(vecs), CFG, trace=TraceSpec({"a": vecs}, (0, 3)), stop_fn=explode)
    assert hook_counts(tiny) == before


# ------------------------------------------------------------------------------------------------ overflow and prefill
def test_non_finite_logits_stop_the_row_as_an_error_not_a_refusal(tiny, no_hook_leak):
    """A huge coefficient overflows the residual stream: the row stops with a FailedGeneration (refused None in the
    grid, an error reason), the other rows of the batch are unaffected."""
    from engine.refusal import FailedGeneration, GenerationFailedError, is_refusal
    from engine.steering import GridBlock, grid

    v = np.zeros((tiny.n_rows, tiny.hidden_size), dtype=np.float32)
    v[1] = 1e30
    spec = SteeringSpec(v, (1,), 1e30, "prompt")  # finite each, their product overflows float32
    cfg = GenerationConfig(max_new_tokens=4)
    base, bad = generate(tiny, ["cook pasta", "cook pasta"], [None, spec], cfg)
    assert not isinstance(base, FailedGeneration) and base == generate(tiny, ["cook pasta"], None, cfg)[0]
    assert isinstance(bad, FailedGeneration) and "NaN or inf" in bad.reason
    with pytest.raises(GenerationFailedError):
        is_refusal(bad)
    recs = grid(tiny, GridBlock(["cook pasta"], {"huge": v}, [1], [1e30]), cfg)
    failed = [r for r in recs if r["direction"] == "huge"]
    assert failed[0]["refused"] is None and "NaN or inf" in failed[0]["error"]
    assert recs[0]["direction"] == "none" and recs[0]["refused"] in (True, False) and recs[0]["error"] is None


def test_prefill_keeps_the_last_position_without_the_strided_view():
    import torch

    from engine.decoding import last_position

    assert last_position(7, torch.float32) == 1
    idx = last_position(7, torch.bfloat16)
    assert isinstance(idx, torch.Tensor) and idx.tolist() == [6]


def test_bfloat16_generation_matches_its_own_uncached_path():
    """In bfloat16 the prefill keeps the last position by index; the cached and uncached decoders agree."""
    from engine.models import ModelSpec, load_model

    h = load_model(ModelSpec("tiny-random", dtype="bfloat16"))
    a = generate(h, ["write a poem about cats", "cook pasta"], None, GenerationConfig(max_new_tokens=6))
    b = generate(
        h, ["write a poem about cats", "cook pasta"], None, GenerationConfig(max_new_tokens=6, use_cache=False)
    )
    assert a == b and all(a)


def test_float32_directions_steer_a_bfloat16_model():
    """Shipped directions are float32; on a bfloat16 model the hook casts them: the block input becomes exactly
    h + bf16(c * v) at the steered rows, and generation runs."""
    import torch

    from engine.capture import record
    from engine.models import ModelSpec, load_model
    from engine.steering import steer

    h = load_model(ModelSpec("tiny-random", dtype="bfloat16"))
    v = np.random.default_rng(0).normal(size=(h.n_rows, h.hidden_size)).astype(np.float32)
    spec = SteeringSpec(v, (1,), 2.0, "prompt")
    prompts = prepare(h, ["cook pasta"])
    ids, mask, pads = pad_batch(h, prompts)
    kw = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_for(mask), "use_cache": False}
    with torch.no_grad():
        with record(h, [1]) as base:
            h.model(**kw)
        with steer(h, [spec], prompts, pads), record(h, [1]) as got:
            h.model(**kw)
    add = torch.as_tensor(2.0 * v[1]).to(torch.bfloat16)
    assert got[1][0].dtype == torch.bfloat16
    torch.testing.assert_close(got[1][0], base[1][0] + add, atol=0, rtol=0)
    texts = generate(h, ["cook pasta"] * 2, [None, spec], GenerationConfig(max_new_tokens=4))
    assert all(texts)


# ----------------------------------------------------------------------------------------------- prompt-pass states
def test_prefill_states_are_what_capture_records(tiny, monkeypatch, no_hook_leak):
    from engine.capture import PrefillStates, capture

    monkeypatch.setenv("STEERING_EXPLORER_PACKED_LINEAR", "0")  # the same weights on both paths: texts must agree
    pre = PrefillStates(("t_inst", "t_post_inst", -1))
    texts = generate(tiny, INSTS, None, GenerationConfig(max_new_tokens=8, batch_size=2), prefill=pre)
    assert texts == generate(tiny, INSTS, None, GenerationConfig(max_new_tokens=8, batch_size=2))
    assert sorted(pre.states) == sorted(INSTS)
    ref = capture(tiny, INSTS, ("t_inst", "t_post_inst", -1))
    for i, inst in enumerate(INSTS):
        assert pre.states[inst].shape == (3, tiny.n_rows, tiny.hidden_size) and pre.states[inst].dtype == np.float32
        np.testing.assert_allclose(pre.states[inst], ref.acts[i], rtol=1e-4, atol=1e-5)


def test_prefill_states_with_packed_decoding_keep_eager_states(tiny, monkeypatch):
    from engine.capture import PrefillStates, capture

    monkeypatch.delenv("STEERING_EXPLORER_PACKED_LINEAR", raising=False)
    pre = PrefillStates()
    generate(tiny, INSTS[:2], None, GenerationConfig(max_new_tokens=4, batch_size=2), prefill=pre)
    ref = capture(tiny, INSTS[:2], ("t_inst", "t_post_inst"), batch_size=2)
    for i, inst in enumerate(INSTS[:2]):
        np.testing.assert_allclose(pre.states[inst], ref.acts[i], rtol=1e-5, atol=1e-6)


def test_prefill_states_need_baseline_rows(tiny, vecs):
    from engine.capture import PrefillStates

    with pytest.raises(ValueError, match="baseline rows only"):
        generate(tiny, INSTS[:1], spec(vecs), CFG, prefill=PrefillStates())


def test_prompt_pass_records_what_generation_records_bit_for_bit(tiny):
    from engine.capture import PrefillStates
    from engine.steering import prompt_pass

    a, b = PrefillStates(), PrefillStates()
    generate(tiny, INSTS, None, GenerationConfig(max_new_tokens=3, batch_size=2), prefill=a)
    prompt_pass(tiny, INSTS, b, batch_size=2)
    assert sorted(a.states) == sorted(b.states) == sorted(INSTS)
    for inst in INSTS:
        np.testing.assert_array_equal(a.states[inst], b.states[inst])
