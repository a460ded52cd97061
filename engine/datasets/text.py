"""Instruction text: normalisation (trailing punctuation), form statistics, template filling."""

from __future__ import annotations

import re
import statistics
from typing import Any

from .core import SLOT, DatasetError, PromptSet

_WS = re.compile(r"\s+")
_TRAIL_PUNCT = ".!?;:,"
_CLOSERS = "\"'\u201d\u2019\u00bb)]"
_TRAIL_RE = re.compile(rf"[\s{re.escape(_TRAIL_PUNCT)}]+$")
_TRAIL_QUOTED_RE = re.compile(rf"[\s{re.escape(_TRAIL_PUNCT)}]+([{re.escape(_CLOSERS)}]+)$")
_PAIRS = {
    "\u201d": "\u201c",
    "\u2019": "\u2018",
    "\u00bb": "\u00ab",
    ")": "(",
    "]": "[",
}


def _closer_is_balanced(prefix: str, ch: str) -> bool:
    """True when ``ch`` closes a quote or bracket that was opened in ``prefix``."""
    if ch in _PAIRS:
        return prefix.count(_PAIRS[ch]) > prefix.count(ch)
    if ch == '"':
        return prefix.count('"') % 2 == 1
    # "'" doubles as an apostrophe: count only quotes that open a word.
    return re.search(r"(^|\s)'\S", prefix) is not None


def normalize_instruction(text: str) -> str:
    """Strip surrounding whitespace, collapse internal runs of whitespace to one
    space, and strip trailing punctuation (``. ! ? ; : ,``), including
    punctuation just inside closing quotes (``'."'``), so that surface form
    (a final period versus a question mark) does not masquerade as harm.

    A closing quote or bracket that balances an opening one is kept
    (``Say "hi."`` -> ``Say "hi"``); a stray one after punctuation is removed
    (``Do it."`` -> ``Do it``). Case and interior punctuation are untouched.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_instruction expects str, got {type(text).__name__}")
    out = _WS.sub(" ", text).strip()
    while True:
        before = out
        out = _TRAIL_RE.sub("", out)
        m = _TRAIL_QUOTED_RE.search(out)
        if m:
            prefix = out[: m.start()]
            kept = "".join(ch for ch in m.group(1) if _closer_is_balanced(prefix, ch))
            out = prefix + kept
        if out == before:
            return out


_WH_WORDS = frozenset(["what", "how", "why", "who", "whom", "whose", "when", "where", "which"])
# Auxiliaries that open a question; "do"/"have" also open imperatives ("Do this"),
# so they count only when followed by a subject pronoun ("Do you ...").
_AUX_WORDS = frozenset(
    [
        "is",
        "are",
        "am",
        "was",
        "were",
        "can",
        "could",
        "would",
        "should",
        "shall",
        "will",
        "does",
        "did",
        "may",
        "might",
        "must",
        "has",
        "had",
    ]
)
_AUX_NEEDS_SUBJECT = frozenset({"do", "have"})
_SUBJECTS = frozenset(["i", "you", "we", "they", "he", "she", "it"])


def _is_question(text: str) -> bool:
    if _strip_closers(text).endswith("?"):
        return True
    words = [w.strip("\"'(\u201c").lower() for w in text.split()[:2]]
    if not words:
        return False
    if words[0] in _WH_WORDS or words[0] in _AUX_WORDS:
        return True
    return words[0] in _AUX_NEEDS_SUBJECT and len(words) > 1 and words[1] in _SUBJECTS


def _strip_closers(text: str) -> str:
    return text.rstrip().rstrip(_CLOSERS).rstrip()


def form_stats(ps: PromptSet) -> dict[str, Any]:
    """Surface-form statistics of a prompt set.

    ``question_frac``: ends with ``?``, or starts with a wh-word or an
    auxiliary (``do``/``have`` only before a subject pronoun, so ``Do this`` is
    not a question); ``period_frac``/``qmark_frac``: last character (ignoring closing
    quotes) is ``.``/``?``; ``nopunct_frac``: last character is a letter or
    digit; word counts use whitespace splitting.
    """
    texts = ps.instructions()
    n = len(texts)
    if n == 0:
        return {
            "n": 0,
            "question_frac": 0.0,
            "period_frac": 0.0,
            "qmark_frac": 0.0,
            "nopunct_frac": 0.0,
            "median_words": 0.0,
            "mean_words": 0.0,
        }
    ends = [_strip_closers(t)[-1:] for t in texts]
    words = [len(t.split()) for t in texts]
    question = sum(_is_question(t) for t in texts)
    return {
        "n": n,
        "question_frac": question / n,
        "period_frac": sum(e == "." for e in ends) / n,
        "qmark_frac": sum(e == "?" for e in ends) / n,
        "nopunct_frac": sum(e.isalnum() for e in ends) / n,
        "median_words": float(statistics.median(words)),
        "mean_words": float(statistics.fmean(words)),
    }


# --------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------


def fill_template(template: str, instruction: str) -> str:
    """Put ``instruction`` into every ``{instruction}`` slot of ``template``.

    Uses ``str.replace``, not ``str.format``: templates often contain other
    braces (code, JSON) that must survive unchanged.
    """
    if SLOT not in template:
        raise DatasetError(f"template has no {SLOT} slot: {template[:80]!r}")
    return template.replace(SLOT, instruction)
