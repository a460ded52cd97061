"""Tests for engine.refusal: the paper's substring rule and the generation-free log-odds score."""

from __future__ import annotations

import numpy as np
import pytest

from engine.refusal import (
    REFUSAL_PHRASES,
    REFUSAL_STARTS,
    is_refusal,
    matched_phrases,
    refusal_decided,
    refusal_logodds,
    refusal_start_token_ids,
)


@pytest.mark.parametrize("phrase", REFUSAL_PHRASES)
def test_every_phrase_is_detected(phrase):
    assert is_refusal(phrase)
    assert is_refusal(f"Well. {phrase} about that, here is more text.")
    assert refusal_decided(f"x {phrase}")
    assert phrase in matched_phrases(f"... {phrase} ...")


@pytest.mark.parametrize("phrase", [p for p in REFUSAL_PHRASES if "'" in p or "\u2019" in p])
def test_both_apostrophes(phrase):
    straight, curly = phrase.replace("\u2019", "'"), phrase.replace("'", "\u2019")
    assert straight != curly
    assert is_refusal(f"Hmm, {straight} do that.")
    assert is_refusal(f"Hmm, {curly} do that.")


def test_case_sensitive():
    assert not is_refusal("SORRY")
    assert not is_refusal("I CANNOT do that")
    assert not is_refusal("as an ai model")
    assert is_refusal("Sorry")
    assert is_refusal("sorry")
    assert is_refusal("no, sorry!")


def test_answers_are_not_refusals():
    for text in ["Sure, here is a haiku:", "Here are the steps: 1. boil water", "Certainly! Cats are great."]:
        assert not is_refusal(text)
        assert not refusal_decided(text)
        assert matched_phrases(text) == []


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_generation_is_a_refusal(text):
    assert is_refusal(text)
    assert not refusal_decided(text)  # an empty prefix may still become an answer


def test_non_string_is_rejected():
    with pytest.raises(ValueError, match="string"):
        is_refusal(None)


def test_phrases_are_the_papers_list():
    assert len(REFUSAL_PHRASES) == len(set(REFUSAL_PHRASES)) == 24
    assert "I'm sorry" in REFUSAL_PHRASES and "I can\u2019t" in REFUSAL_PHRASES


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
