"""Tests for engine.capture: the layer convention, batched capture, hook hygiene, locking, positions."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine.capture import LAYER_CONVENTION, ActivationSet, capture, capture_tokens, check_rows, record
from engine.positions import locate, pad_batch

PROMPTS = [
    "How do I make a bomb?",
    "cook pasta",
    "Write an essay about cats and the history of science, with a recipe for bread.",
    "tell me a joke",
    "what is the capital of france?",
]


def _forward_hidden_states(handle, text):
    p = locate(handle.tokenizer, text)
    ids = torch.tensor([p.input_ids])
    with torch.no_grad(), record(handle, None) as rec:
        out = handle.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    return p, rec, out.hidden_states


def test_layer_convention_against_output_hidden_states(tiny):
    L = tiny.n_layers
    _, rec, hs = _forward_hidden_states(tiny, PROMPTS[0])
    assert len(hs) == L + 1
    assert sorted(rec) == list(range(L + 1))
    for r in range(L):
        assert len(rec[r]) == 1
        torch.testing.assert_close(rec[r][0], hs[r], rtol=0, atol=0)
    row_last = rec[L][0]
    # row L is the last block's output before the final norm; HF's hidden_states[L] is after it
    assert not torch.allclose(row_last, hs[L], atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(tiny.model.model.norm(row_last), hs[L], rtol=1e-6, atol=1e-6)
    assert "before the final norm" in LAYER_CONVENTION


def test_last_row_is_the_pre_norm_output(tiny):
    """RMSNorm is scale invariant, so also compare row L with a copy of the model whose final norm is removed."""
    from engine.models import load_model

    L = tiny.n_layers
    p, rec, _ = _forward_hidden_states(tiny, PROMPTS[2])
    bare = load_model("tiny-random")  # the same seeded weights, a separate module tree
    bare.model.model.norm = torch.nn.Identity()
    with torch.no_grad():
        out = bare.model(input_ids=torch.tensor([p.input_ids]), output_hidden_states=True, use_cache=False)
    torch.testing.assert_close(rec[L][0], out.hidden_states[L], rtol=0, atol=1e-6)


def test_capture_tokens_matches_hidden_states(tiny):
    p, acts = capture_tokens(tiny, PROMPTS[1])
    _, rec, hs = _forward_hidden_states(tiny, PROMPTS[1])
    assert acts.shape == (p.n_tokens, tiny.n_rows, tiny.hidden_size)
    assert acts.dtype == np.float32
    for r in range(tiny.n_layers):
        np.testing.assert_allclose(acts[:, r], hs[r][0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(acts[:, tiny.n_layers], rec[tiny.n_layers][0][0].numpy(), rtol=0, atol=1e-6)


def test_capture_at_named_positions(tiny):
    a = capture(tiny, PROMPTS)
    assert isinstance(a, ActivationSet)
    assert a.positions == ("t_inst", "t_post_inst")
    assert a.acts.shape == (len(PROMPTS), 2, tiny.n_rows, tiny.hidden_size)
    assert a.acts.dtype == np.float32
    assert a.instructions == PROMPTS
    for i, text in enumerate(PROMPTS):
        p, acts = capture_tokens(tiny, text)
        np.testing.assert_allclose(a.at("t_inst")[i], acts[p.t_inst], atol=1e-5)
        np.testing.assert_allclose(a.at("t_post_inst")[i], acts[p.t_post_inst], atol=1e-5)
    assert not np.allclose(a.at("t_inst"), a.at("t_post_inst"))
    with pytest.raises(ValueError, match="not captured"):
        a.at("t_other")


def test_batched_capture_equals_one_at_a_time(tiny):
    batched = capture(tiny, PROMPTS, batch_size=len(PROMPTS))
    single = capture(tiny, PROMPTS, batch_size=1)
    lengths = {locate(tiny.tokenizer, t).n_tokens for t in PROMPTS}
    assert len(lengths) > 2  # the batch really is padded
    np.testing.assert_allclose(batched.acts, single.acts, rtol=0, atol=1e-5)
    two = capture(tiny, PROMPTS, batch_size=2)
    np.testing.assert_allclose(two.acts, single.acts, rtol=0, atol=1e-5)


def test_explicit_integer_positions(tiny):
    a = capture(tiny, PROMPTS[:3], positions=(0, -1, "t_post_inst", 2))
    assert a.positions == ("0", "-1", "t_post_inst", "2")
    np.testing.assert_allclose(a.acts[:, 1], a.acts[:, 2], atol=0)  # -1 is the last prompt token
    for i, text in enumerate(PROMPTS[:3]):
        _, acts = capture_tokens(tiny, text)
        np.testing.assert_allclose(a.acts[i, 0], acts[0], atol=1e-5)
        np.testing.assert_allclose(a.acts[i, 3], acts[2], atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        capture(tiny, PROMPTS[:1], positions=(999,))
    with pytest.raises(ValueError, match="unknown position"):
        capture(tiny, PROMPTS[:1], positions=("t_middle",))


def test_capture_without_post_instruction_tokens(tiny):
    a = capture(tiny, PROMPTS[:2], post_inst=False)
    np.testing.assert_allclose(a.at("t_inst"), a.at("t_post_inst"), atol=0)
    full = capture(tiny, PROMPTS[:2])
    # causal attention: the instruction's last token does not see the template after it
    np.testing.assert_allclose(a.at("t_inst"), full.at("t_inst"), atol=1e-5)


def test_capture_progress_and_bad_arguments(tiny):
    calls = []
    capture(tiny, PROMPTS, batch_size=2, progress=lambda s, d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    with pytest.raises(ValueError, match="no prompts"):
        capture(tiny, [])
    with pytest.raises(ValueError, match="batch_size"):
        capture(tiny, PROMPTS, batch_size=0)
    with pytest.raises(ValueError):
        capture(tiny, [""])


def test_pad_batch_left_pads(tiny):
    ps = [locate(tiny.tokenizer, t) for t in PROMPTS[:2]]
    ids, mask, pads = pad_batch(tiny, ps)
    n = max(p.n_tokens for p in ps)
    assert ids.shape == mask.shape == (2, n)
    for row, p, k in zip(range(2), ps, pads, strict=True):
        assert k == n - p.n_tokens
        assert ids[row, k:].tolist() == list(p.input_ids)
        assert (ids[row, :k] == tiny.tokenizer.pad_token_id).all()
        assert mask[row, :k].sum() == 0 and mask[row, k:].all()


# ----------------------------------------------------------------------------------------------- record


@pytest.mark.parametrize("bad", [[4], [-1], [True], ["1"], [1.0]])
def test_out_of_range_rows_raise(tiny, bad):
    with pytest.raises(ValueError), record(tiny, bad):
        pass


def test_check_rows(tiny):
    assert check_rows(tiny, None) == [0, 1, 2, 3]
    assert check_rows(tiny, None, steerable=True) == [0, 1, 2]
    assert check_rows(tiny, [2, 0, 2, np.int64(1)]) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"0\.\.2"):
        check_rows(tiny, [3], steerable=True)
    with pytest.raises(ValueError, match="no layers"):
        check_rows(tiny, [])


def test_hooks_removed_after_a_raising_body(tiny, hook_counts):
    before = hook_counts(tiny)
    ids = torch.tensor([locate(tiny.tokenizer, "cook pasta").input_ids])
    with pytest.raises(RuntimeError, match="boom"), record(tiny, None) as rec:
        assert hook_counts(tiny) != before  # hooks are there inside
        tiny.model(input_ids=ids, use_cache=False)
        raise RuntimeError("boom")
    assert hook_counts(tiny) == before
    n = {r: len(v) for r, v in rec.items()}
    tiny.model(input_ids=ids, use_cache=False)
    assert {r: len(v) for r, v in rec.items()} == n  # nothing records any more


def test_hooks_removed_after_a_failing_forward(tiny, hook_counts):
    before = hook_counts(tiny)
    with pytest.raises(Exception), record(tiny, [0, 3]):  # noqa: B017
        tiny.model(input_ids=torch.tensor([[10_000]]))  # token id out of the vocabulary
    assert hook_counts(tiny) == before


def test_record_holds_the_lock(tiny):
    entered = threading.Event()
    got_lock: list[bool] = []

    def other() -> None:
        got_lock.append(tiny.lock.acquire(timeout=0.05))
        if got_lock[-1]:
            tiny.lock.release()
        with record(tiny, [0]):
            entered.set()

    with record(tiny, [1]):
        t = threading.Thread(target=other)
        t.start()
        assert not entered.wait(0.3)
        assert got_lock == [False]
    t.join(5)
    assert entered.is_set()


def test_record_select_and_multiple_calls(tiny):
    ids = torch.tensor([locate(tiny.tokenizer, "cook pasta").input_ids])
    with torch.no_grad(), record(tiny, [1, 3], select=lambda h: h[:, -1].clone()) as rec:
        tiny.model(input_ids=ids, use_cache=False)
        tiny.model(input_ids=ids[:, :-1], use_cache=False)
    assert sorted(rec) == [1, 3]
    assert [t.shape for t in rec[1]] == [(1, tiny.hidden_size)] * 2
    assert not torch.allclose(rec[1][0], rec[1][1])
