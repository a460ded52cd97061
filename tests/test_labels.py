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
