"""Tests for engine.labels: substring labels, the on-disk cache, the log-odds labeller."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engine.labels as labels_mod
from engine.labels import Label, LabelCache, agreement, label_refusals, refusal_logodds, refusal_start_token_ids
from engine.refusal import REFUSAL_STARTS, is_refusal
from engine.steering import GenerationConfig, generate

INSTS = ["How do I make a bomb?", "cook pasta", "tell me a joke", "write a poem about cats"]
_order = {t: i for i, t in enumerate([*INSTS, "cook bread"])}


@pytest.fixture
def cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def count_generate(monkeypatch):
    """Counts calls of engine.labels.generate (still generating)."""
    calls = []
    real = labels_mod.generate

    def counting(*args, **kwargs):
        # prompts arrive tokenised (PromptPositions) and sorted by length: record the instructions, in input order
        calls.append(sorted((getattr(x, "instruction", x) for x in args[1]), key=_order.get))
        return real(*args, **kwargs)

    monkeypatch.setattr(labels_mod, "generate", counting)
    return calls


def _no_generation(*args, **kwargs):
    raise AssertionError("generate was called although every label is cached")


def test_labels_match_generation_and_the_substring_rule(tiny, cache_home):
    labs = label_refusals(tiny, INSTS, max_new_tokens=6, early_stop=False)
    texts = generate(tiny, INSTS, None, GenerationConfig(max_new_tokens=6))
    assert [lab.instruction for lab in labs] == INSTS
    assert [lab.text for lab in labs] == texts
    assert [lab.refused for lab in labs] == [is_refusal(t) for t in texts]
    assert all(isinstance(lab, Label) and lab.score is None and not lab.cached for lab in labs)


def test_cache_hit_on_the_second_run(tiny, cache_home, monkeypatch):
    first = label_refusals(tiny, INSTS, max_new_tokens=6)
    files = list((cache_home / "labels").glob("*.jsonl"))
    assert len(files) == 1 and files[0].name.startswith("tiny-random-")
    assert len(files[0].read_text().splitlines()) == len(INSTS)
    monkeypatch.setattr(labels_mod, "generate", _no_generation)
    second = label_refusals(tiny, INSTS, max_new_tokens=6)
    assert [(x.instruction, x.refused, x.text) for x in second] == [(x.instruction, x.refused, x.text) for x in first]
    assert all(x.cached for x in second)
    progress = []
    label_refusals(tiny, INSTS[:2], max_new_tokens=6, progress=lambda s, d, t: progress.append((d, t)))
    assert progress[-1] == (2, 2)


def test_cache_is_keyed_by_settings(tiny, cache_home, count_generate):
    label_refusals(tiny, INSTS, max_new_tokens=6)
    assert len(count_generate) == 1
    label_refusals(tiny, INSTS, max_new_tokens=6)
    assert len(count_generate) == 1
    label_refusals(tiny, INSTS, max_new_tokens=5)  # other settings: a miss
    assert count_generate[-1] == INSTS
    label_refusals(tiny, INSTS, max_new_tokens=6, post_inst=False)
    assert len(count_generate) == 3
    label_refusals(tiny, [*INSTS, "cook bread"], max_new_tokens=6)  # only the new prompt is generated
    assert count_generate[-1] == ["cook bread"]


def test_use_cache_false_and_explicit_cache(tiny, cache_home, tmp_path, count_generate):
    label_refusals(tiny, INSTS[:2], max_new_tokens=4, use_cache=False)
    label_refusals(tiny, INSTS[:2], max_new_tokens=4, use_cache=False)
    assert len(count_generate) == 2
    assert not (cache_home / "labels").exists() or not list((cache_home / "labels").iterdir())
    own = LabelCache(tiny, root=tmp_path / "own")
    label_refusals(tiny, INSTS[:2], max_new_tokens=4, cache=own)
    assert own.path.parent == tmp_path / "own" and own.path.is_file()
    assert own.misses == 2
    label_refusals(tiny, INSTS[:2], max_new_tokens=4, cache=own)
    assert own.hits == 2 and len(count_generate) == 3


def test_duplicates_are_generated_once(tiny, cache_home, count_generate):
    labs = label_refusals(tiny, ["cook pasta", "tell me a joke", "cook pasta"], max_new_tokens=4)
    assert count_generate == [["cook pasta", "tell me a joke"]]
    assert [x.instruction for x in labs] == ["cook pasta", "tell me a joke", "cook pasta"]
    assert labs[0].text == labs[2].text


def test_torn_line_in_the_cache_file_is_ignored(tiny, cache_home, monkeypatch):
    label_refusals(tiny, INSTS[:2], max_new_tokens=6)
    path = LabelCache(tiny).path
    good = path.read_text()
    path.write_text(good + '{"key": "abc", "refused": tr')  # an interrupted write: no newline
    cache = LabelCache(tiny)
    settings_hits = label_refusals(tiny, INSTS[:2], max_new_tokens=6, cache=cache)
    assert all(x.cached for x in settings_hits)
    # rows appended after the torn line must be readable by the next run
    label_refusals(tiny, INSTS[2:], max_new_tokens=6)
    monkeypatch.setattr(labels_mod, "generate", _no_generation)
    again = label_refusals(tiny, INSTS, max_new_tokens=6)
    assert all(x.cached for x in again)
    for line in path.read_text().splitlines()[-2:]:
        assert json.loads(line)["key"]


def test_line_torn_inside_a_multibyte_character(tiny, cache_home, monkeypatch):
    label_refusals(tiny, INSTS[:2], max_new_tokens=6)
    path = LabelCache(tiny).path
    torn = json.dumps({"key": "k", "refused": False, "text": "caf\u00e9"}, ensure_ascii=False).encode()
    path.write_bytes(path.read_bytes() + torn[: torn.index(b"\xc3") + 1])  # half of the two-byte "é"
    assert all(x.cached for x in label_refusals(tiny, INSTS[:2], max_new_tokens=6))
    label_refusals(tiny, INSTS[2:3], max_new_tokens=6)
    monkeypatch.setattr(labels_mod, "generate", _no_generation)
    assert all(x.cached for x in label_refusals(tiny, INSTS[:3], max_new_tokens=6))


def test_garbage_lines_are_ignored(tiny, cache_home):
    path = LabelCache(tiny).path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('not json\n["a list"]\n{"no_key": 1}\n\n')
    labs = label_refusals(tiny, INSTS[:1], max_new_tokens=4)
    assert not labs[0].cached


def test_logodds_labeller(tiny, cache_home, monkeypatch):
    monkeypatch.setattr(labels_mod, "generate", _no_generation)
    labs = label_refusals(tiny, INSTS, labeller="logodds")
    scores = refusal_logodds(tiny, INSTS)
    assert [x.score for x in labs] == pytest.approx(list(scores), abs=1e-9)
    assert [x.refused for x in labs] == [bool(s > 0) for s in scores]
    assert all(x.text == "" for x in labs)
    assert not (cache_home / "labels").exists() or not list((cache_home / "labels").iterdir())


def test_bad_arguments(tiny, cache_home):
    with pytest.raises(ValueError, match="labeller"):
        label_refusals(tiny, INSTS, labeller="vibes")
    assert label_refusals(tiny, []) == []


def test_agreement():
    a = [Label("x", True, ""), Label("y", False, "")]
    b = [Label("x", True, ""), Label("y", True, "")]
    assert agreement(a, a) == 1.0
    assert agreement(a, b) == 0.5
    with pytest.raises(ValueError):
        agreement(a, b[:1])
    assert np.isclose(agreement(b, b), 1.0)


def test_refusal_start_token_ids(tiny):
    ids = refusal_start_token_ids(tiny.tokenizer)
    assert ids == sorted(set(ids))
    assert all(0 <= i < len(tiny.tokenizer) for i in ids)
    tok = tiny.tokenizer
    assert {tok.convert_tokens_to_ids("I"), tok.convert_tokens_to_ids("ĠI")} <= set(ids)
    assert tok.convert_tokens_to_ids("Ġsure") not in ids
    assert "I" in REFUSAL_STARTS
    assert refusal_start_token_ids(tiny.tokenizer, starts=()) == []


def test_refusal_logodds_on_tiny(tiny):
    insts = ["How do I make a bomb?", "cook pasta", "tell me a joke"]
    s = refusal_logodds(tiny, insts)
    assert s.shape == (3,) and s.dtype == np.float64
    assert np.isfinite(s).all()
    np.testing.assert_allclose(refusal_logodds(tiny, insts, batch_size=1), s, atol=1e-5)
    assert len(set(np.round(s, 6))) == 3  # depends on the prompt
    # more refusal tokens -> higher log-odds
    ids = refusal_start_token_ids(tiny.tokenizer)
    assert (refusal_logodds(tiny, insts, token_ids=ids + list(range(20, 120))) > s).all()
    with pytest.raises(ValueError, match="no refusal-start tokens"):
        refusal_logodds(tiny, insts, token_ids=[])


def test_refusal_logodds_matches_a_manual_forward(tiny):
    import torch

    from engine.positions import locate

    ids_ref = refusal_start_token_ids(tiny.tokenizer)
    p = locate(tiny.tokenizer, "cook pasta")
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([p.input_ids]), use_cache=False).logits[0, -1].double()
    prob = torch.softmax(logits, -1)[ids_ref].sum().item()
    expected = np.log(prob) - np.log1p(-prob)
    np.testing.assert_allclose(refusal_logodds(tiny, ["cook pasta"]), [expected], atol=1e-6)


# ------------------------------------------------------------------ issue 15: strict cache rows, progress, errors
def _key(inst: str, max_new_tokens: int = 6) -> str:
    settings = {"max_new_tokens": max_new_tokens, "greedy": True, "early_stop": True, "post_inst": True, "v": 1}
    return LabelCache.key(inst, settings)


def _write_rows(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.mark.parametrize(
    "bad",
    [
        {"refused": "no", "text": "x"},  # a string is not a label (before: bool("no") -> refused)
        {"refused": 1, "text": "x"},
        {"refused": None, "text": "x"},
        {"refused": False, "text": None},
        {"refused": False},
        {"text": "x"},
    ],
)
def test_wrong_shaped_rows_are_dropped_not_trusted(tiny, cache_home, bad, count_generate):
    from engine.atomic import CacheWarning

    path = LabelCache(tiny).path
    _write_rows(path, [{"key": _key(INSTS[0]), **bad}, {"key": _key(INSTS[1]), "refused": True, "text": "I cannot"}])
    with pytest.warns(CacheWarning, match="1 malformed label row"):
        labs = label_refusals(tiny, INSTS[:2], max_new_tokens=6)
    assert not labs[0].cached and isinstance(labs[0].refused, bool)  # relabelled, not read as refused
    assert labs[1].cached and labs[1].refused is True
    assert count_generate == [[INSTS[0]]]


def test_one_bad_row_does_not_break_later_runs_and_is_set_aside_once(tiny, cache_home, monkeypatch):
    import warnings

    from engine.atomic import CacheWarning

    label_refusals(tiny, INSTS[:2], max_new_tokens=6)
    path = LabelCache(tiny).path
    good = path.read_text()
    # before: a row like ["a list"] or {"key": 1} raised from the reader and broke every later run
    path.write_text(good + '["a list"]\n{"key": 1, "refused": true, "text": ""}\n{"key": "' + "z" * 64 + '"}\n')
    with pytest.warns(CacheWarning, match="3 malformed label row") as rec:
        again = label_refusals(tiny, INSTS[:2], max_new_tokens=6)
    assert len(rec) == 1 and all(x.cached for x in again)
    aside = list(path.parent.glob(path.name + ".corrupt-*"))
    assert len(aside) == 1 and len(aside[0].read_text().splitlines()) == 3
    assert path.read_text() == good  # rewritten with the good rows only
    monkeypatch.setattr(labels_mod, "generate", _no_generation)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # reported once: the next run is quiet
        assert all(x.cached for x in label_refusals(tiny, INSTS[:2], max_new_tokens=6))


def test_progress_is_saved_every_32_prompts(tiny, cache_home, monkeypatch):
    from engine.labels import SAVE_EVERY

    assert SAVE_EVERY == 32
    insts = [f"cook pasta {'a' * (i % 7)} {i}" for i in range(80)]
    real = labels_mod.generate
    calls = []

    def interrupted(handle, items, *args, **kwargs):
        calls.append(len(items))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while the third chunk generates
        return real(handle, items, *args, **kwargs)

    monkeypatch.setattr(labels_mod, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        label_refusals(tiny, insts, max_new_tokens=2, batch_size=64)
    assert calls == [32, 32, 16]  # before: one chunk of batch_size * 4 = 256, so all 80 were lost
    lines = LabelCache(tiny).path.read_text().splitlines()
    assert len(lines) == 64 and all(json.loads(x)["key"] for x in lines)
    monkeypatch.setattr(labels_mod, "generate", real)
    again = label_refusals(tiny, insts, max_new_tokens=2, batch_size=64)
    assert sum(x.cached for x in again) == 64


def test_a_failed_generation_is_an_error_not_a_refusal_and_is_not_cached(tiny, cache_home, monkeypatch):
    from engine.labels import LabelError
    from engine.refusal import FailedGeneration

    real = labels_mod.generate

    def overflowing(handle, items, *args, **kwargs):
        texts = real(handle, items, *args, **kwargs)
        return [
            FailedGeneration("") if getattr(p, "instruction", p) == "cook pasta" else t
            for p, t in zip(items, texts, strict=True)
        ]

    monkeypatch.setattr(labels_mod, "generate", overflowing)
    with pytest.raises(LabelError, match="1 of 3 prompt\\(s\\) could not be labelled: the model's logits became NaN"):
        label_refusals(tiny, INSTS[:3], max_new_tokens=4)
    labs = label_refusals(tiny, INSTS[:3], max_new_tokens=4, errors="mark")
    bad = labs[1]
    assert bad.instruction == "cook pasta" and bad.refused is None and "NaN or inf" in bad.error
    assert all(isinstance(x.refused, bool) and x.error is None for x in (labs[0], labs[2]))
    keys = {json.loads(x)["key"] for x in LabelCache(tiny).path.read_text().splitlines()}
    assert _key("cook pasta", 4) not in keys  # retried next time, never cached as a refusal
    monkeypatch.setattr(labels_mod, "generate", real)
    assert isinstance(label_refusals(tiny, ["cook pasta"], max_new_tokens=4)[0].refused, bool)
    with pytest.raises(ValueError, match="errors must be"):
        label_refusals(tiny, INSTS, errors="ignore")
    with pytest.raises(ValueError, match="failed labels"):
        agreement([bad], [bad])


def test_logodds_nan_is_an_error_not_accepted(tiny, monkeypatch):
    from engine.labels import LabelError

    monkeypatch.setattr(labels_mod, "refusal_logodds", lambda h, items, **k: np.array([np.nan, 1.0]))
    with pytest.raises(LabelError, match="NaN or inf"):
        label_refusals(tiny, INSTS[:2], labeller="logodds")
    labs = label_refusals(tiny, INSTS[:2], labeller="logodds", errors="mark")
    assert labs[0].refused is None and labs[1].refused is True


def test_bad_instructions_fail_before_any_generation(tiny, cache_home, monkeypatch):
    monkeypatch.setattr(labels_mod, "generate", _no_generation)
    with pytest.raises(ValueError, match="lone surrogate"):
        label_refusals(tiny, ["cook pasta", "bad \ud800"], max_new_tokens=4)


def test_cache_appends_are_whole_lines(tiny, cache_home):
    cache = LabelCache(tiny)
    cache.put_many([{"key": _key("a"), "refused": False, "text": "x\ny"}, {"key": "bad", "refused": True, "text": ""}])
    lines = cache.path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 2  # the invalid row was not written
