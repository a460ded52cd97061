"""Tests for engine.refusal: the paper's substring rule (pure strings, no model)."""

from __future__ import annotations

import pytest

from engine.refusal import (
    REFUSAL_PHRASES,
    is_refusal,
    matched_phrases,
    refusal_decided,
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


# ------------------------------------------------------------------ issue 15: failed generations are errors
def test_a_failed_generation_is_neither_refused_nor_accepted():
    import pickle

    from engine.refusal import NONFINITE, FailedGeneration, GenerationFailedError, is_failed, refusal_label

    failed = FailedGeneration("")
    assert failed == "" and isinstance(failed, str) and failed.reason == NONFINITE
    assert is_failed(failed) and not is_failed("") and not is_failed("I cannot")
    # before: an empty reply from NaN logits was scored as a refusal
    assert refusal_label(failed) is None
    with pytest.raises(GenerationFailedError, match="cannot be scored as a refusal"):
        is_refusal(failed)
    assert isinstance(GenerationFailedError("x"), ValueError)
    # a genuinely empty reply is still a refusal (the paper's rule), and labels of normal text are unchanged
    assert refusal_label("") is True and refusal_label("   ") is True
    assert refusal_label("I cannot help") is True and refusal_label("Sure, here") is False
    partial = FailedGeneration("I cannot", reason="custom")
    assert refusal_label(partial) is None and partial.reason == "custom"
    back = pickle.loads(pickle.dumps(partial))  # st.cache_data pickles results
    assert is_failed(back) and back.reason == "custom" and back == "I cannot"
