"""Refused/accepted labels for prompts, with an on-disk cache.

Contract:
- ``refusal_logodds`` is the Arditi-style score: at the first generated position, log P(refusal-start tokens) -
  log P(everything else), from one forward pass (no generation); the substring rule itself is ``engine.refusal``.
- ``label_refusals(handle, instructions)`` labels each prompt by greedy generation with the full chat template
  plus the paper's substring scorer (``labeller="substring"``), or by the generation-free log-odds of a
  refusal-start token (``labeller="logodds"``, threshold 0).
- Substring labels are cached in ``cache_dir()/labels/<model fingerprint>.jsonl`` keyed by a hash of
  (model, prompt, decoding settings); a re-run with the same settings generates nothing. Rows stop generating as
  soon as a refusal phrase appears (the label cannot change after that).
- Progress is saved every ``SAVE_EVERY`` (32) new prompts: generation runs in chunks of at most 32 prompts (so at
  most 32 rows per batch), each chunk appended to the cache at once, whole lines only (an interrupted run loses at
  most one chunk). Prompts are tokenised (and checked) before anything is generated and sorted by length, so the
  chunks pad little.
- ``label_refusals(..., prefill=PrefillStates(...))`` keeps the hidden states of its prompt pass when it generates
  for every prompt (nothing cached); ``prompt_states`` runs that pass alone (same chunks and batches, no decoding)
  and gives the same states bit for bit, so precompute's directions do not depend on the label cache.
- The cache reader is strict and tolerant: a row must be an object with ``key`` (64 hex digits), ``refused`` (a JSON
  boolean: ``"no"`` is not a label) and ``text`` (a string); anything else (a torn line, garbage, a wrong-shaped
  row) is dropped, counted and reported once with an ``engine.atomic.CacheWarning``; the damaged lines are set
  aside in ``<file>.corrupt-<timestamp>`` and the file is rewritten atomically with the good rows, so later runs
  neither break nor warn again.
- Failed generations (non-finite logits; ``engine.refusal.FailedGeneration``) are never cached. With
  ``errors="raise"`` (default) ``label_refusals`` raises :class:`LabelError` naming how many prompts failed; with
  ``errors="mark"`` their :class:`Label` has ``refused=None`` and ``error`` set (an error, not a refusal).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import atomic
from .capture import PrefillStates
from .models import ModelHandle, cache_dir
from .positions import PromptPositions, pad_batch, position_ids_for, prepare
from .progress import Progress, report
from .refusal import REFUSAL_STARTS, FailedGeneration, refusal_decided, refusal_label
from .steering import GenerationConfig, generate, prompt_pass

__all__ = [
    "LABELLERS",
    "SAVE_EVERY",
    "Label",
    "LabelCache",
    "LabelError",
    "agreement",
    "label_refusals",
    "prompt_states",
    "refusal_logodds",
    "refusal_start_token_ids",
]

LABELLERS = ("substring", "logodds")
DEFAULT_LABEL_TOKENS = 48
SAVE_EVERY = 32  # new labels are written to the cache at least every SAVE_EVERY prompts
_FILE_LOCK = threading.Lock()
_KEY_CHARS = frozenset("0123456789abcdef")


class LabelError(ValueError):
    """Some prompts could not be labelled (their generation failed); the message says how many and why."""


def refusal_start_token_ids(tokenizer: Any, starts: Sequence[str] = REFUSAL_STARTS) -> list[int]:
    """First token ids of the refusal-start words (with and without a leading space)."""
    ids: set[int] = set()
    for w in starts:
        for form in (w, " " + w):
            toks = tokenizer(form, add_special_tokens=False)["input_ids"]
            if toks:
                ids.add(int(toks[0]))
    return sorted(ids)


@torch.no_grad()
def refusal_logodds(
    handle: Any, items: Sequence[Any], *, batch_size: int = 16, token_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Log-odds of a refusal-start token at the first generated position, one forward pass per batch.

    Returns (n,) float64: log(sum p[refusal starts]) - log(1 - sum p[refusal starts]).
    """
    prompts = prepare(handle, items)
    ids_ref = list(token_ids) if token_ids is not None else refusal_start_token_ids(handle.tokenizer)
    if not ids_ref:
        raise ValueError("no refusal-start tokens for this tokenizer")
    out = np.zeros(len(prompts), dtype=np.float64)
    sel = torch.tensor(ids_ref)
    with handle.lock:
        for b0 in range(0, len(prompts), batch_size):
            batch = prompts[b0 : b0 + batch_size]
            ids, mask, _ = pad_batch(handle, batch)
            logits = (
                handle.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position_ids_for(mask),
                    use_cache=False,
                    logits_to_keep=1,
                )
                .logits[:, -1]
                .float()
                .cpu()
            )
            logp = torch.log_softmax(logits.double(), dim=-1)
            lp_ref = torch.logsumexp(logp[:, sel], dim=-1)
            lp_other = torch.log1p(-lp_ref.exp().clamp(max=1 - 1e-12))
            out[b0 : b0 + len(batch)] = (lp_ref - lp_other).numpy()
    return out


@dataclass(frozen=True)
class Label:
    """One prompt's label. ``refused`` is None (and ``error`` says why) when its generation failed."""

    instruction: str
    refused: bool | None
    text: str
    score: float | None = None  # log-odds when that labeller was used
    cached: bool = False
    error: str | None = None


def _valid_row(row: Any) -> bool:
    """A cache row: {"key": 64 hex digits, "refused": true|false, "text": str} (other fields are ignored)."""
    return (
        isinstance(row, dict)
        and isinstance(row.get("key"), str)
        and len(row["key"]) == 64
        and set(row["key"]) <= _KEY_CHARS
        and isinstance(row.get("refused"), bool)
        and isinstance(row.get("text"), str)
    )


class LabelCache:
    """Append-only JSONL cache of generations keyed by (model, prompt, settings); see the module docstring."""

    def __init__(self, handle: ModelHandle, root: Path | None = None):
        fp = handle.fingerprint()
        tag = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
        self.path = (root or cache_dir() / "labels") / f"{handle.spec.name.replace('/', '_')}-{tag}.jsonl"
        self._data: dict[str, dict[str, Any]] | None = None
        self.hits = 0
        self.misses = 0
        self.dropped = 0  # malformed lines found (and set aside) when the file was read

    @staticmethod
    def key(instruction: str, settings: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps([instruction, settings], sort_keys=True).encode()).hexdigest()

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._data is None:
            with _FILE_LOCK:
                self._data = self._read()
        return self._data

    def _read(self) -> dict[str, dict[str, Any]]:
        data: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return data
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            atomic.set_aside(self.path, f"unreadable label cache ({exc.strerror or exc})")
            return data
        good: list[bytes] = []
        bad: list[bytes] = []
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                # a line torn inside a multi-byte character fails to decode: it is just another bad line
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                row = None
            if _valid_row(row):
                data[row["key"]] = row
                good.append(line)
            else:
                bad.append(line)
        if bad:
            self.dropped = len(bad)
            self._repair(good, bad)
        return data

    def _repair(self, good: list[bytes], bad: list[bytes]) -> None:
        """Keep the damaged lines aside and rewrite the file with the good ones (atomically); warn once."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            atomic.write_bytes(aside, b"\n".join(bad) + b"\n")
            atomic.write_bytes(self.path, b"".join(g + b"\n" for g in good))
        except OSError as exc:
            warnings.warn(
                f"{self.path}: {len(bad)} malformed label row(s) ignored (could not repair the file: {exc})",
                atomic.CacheWarning,
                3,
            )
            return
        warnings.warn(
            f"{self.path}: {len(bad)} malformed label row(s) ignored and set aside in {aside.name}; "
            "those prompts are labelled again",
            atomic.CacheWarning,
            3,
        )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._load().get(key)
        if row is None:
            self.misses += 1
        else:
            self.hits += 1
        return row

    def put_many(self, rows: list[dict[str, Any]]) -> None:
        """Append rows (whole lines; a torn last line from an interrupted run is ended first)."""
        rows = [r for r in rows if _valid_row(r)]
        if not rows:
            return
        data = self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
        with _FILE_LOCK:
            # a torn last line (interrupted run) has no newline: end it first, or the next row is glued onto it
            torn = False
            if self.path.is_file() and self.path.stat().st_size > 0:
                with open(self.path, "rb") as fb:
                    fb.seek(-1, os.SEEK_END)
                    torn = fb.read(1) != b"\n"
            with open(self.path, "ab") as f:
                f.write((b"\n" if torn else b"") + payload)  # one write: a kill leaves whole lines or one torn one
                f.flush()
            for row in rows:
                data[row["key"]] = row


def _error_of(text: str) -> str | None:
    return text.reason if isinstance(text, FailedGeneration) else None


def label_refusals(
    handle: ModelHandle,
    instructions: Sequence[str],
    *,
    labeller: str = "substring",
    max_new_tokens: int = DEFAULT_LABEL_TOKENS,
    batch_size: int = 64,
    use_cache: bool = True,
    early_stop: bool = True,
    post_inst: bool = True,
    progress: Progress | None = None,
    cache: LabelCache | None = None,
    errors: str = "raise",
    prefill: PrefillStates | None = None,
) -> list[Label]:
    """Label each instruction refused/accepted (see module docstring). ``errors``: ``"raise"`` (a
    :class:`LabelError` when a generation failed) or ``"mark"`` (such labels get ``refused=None`` and ``error``).
    ``prefill`` collects the prompt pass's hidden states when every prompt is generated now (``prompt_states``
    computes the same states, bit for bit, when some labels were cached; then ``prefill`` is left as it was)."""
    if labeller not in LABELLERS:
        raise ValueError(f"labeller must be one of {LABELLERS}, not {labeller!r}")
    if errors not in ("raise", "mark"):
        raise ValueError(f"errors must be 'raise' or 'mark', not {errors!r}")
    if not instructions:
        return []
    if labeller == "logodds":
        scores = refusal_logodds(handle, list(instructions), batch_size=batch_size)
        report(progress, "labelling", len(instructions), len(instructions))
        labs = []
        for inst, score in zip(instructions, scores, strict=True):
            ok = bool(np.isfinite(score))
            labs.append(
                Label(inst, bool(score > 0) if ok else None, "", float(score), error=None if ok else NONFINITE_SCORE)
            )
        _check_errors(labs, errors)
        return labs
    settings: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "greedy": True,
        "early_stop": early_stop,
        "post_inst": post_inst,
        "v": 1,
    }
    if handle.dtype != torch.float32:  # labels of a reduced-precision model are its own (float32 keys unchanged)
        settings["dtype"] = str(handle.dtype).replace("torch.", "")
    cache = cache or (LabelCache(handle) if use_cache else None)
    out: list[Label | None] = [None] * len(instructions)
    todo: list[int] = []
    for i, inst in enumerate(instructions):
        row = cache.get(LabelCache.key(inst, settings)) if cache else None
        if row is not None:
            out[i] = Label(inst, row["refused"], row["text"], cached=True)
        else:
            todo.append(i)
    n_cached = len(instructions) - len(todo)
    report(progress, "labelling", n_cached, len(instructions))
    if todo:
        # tokenise (and check) every prompt before generating anything; sort by length so the chunks pad little
        chunks = _chunks(handle, [instructions[i] for i in todo], post_inst)
        n_prepared = sum(len(c) for c in chunks)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=min(batch_size, SAVE_EVERY))
        # the prompt pass's states are kept only when it covers every prompt: its chunks are then prompt_states' ones
        record = prefill if len(todo) == len(instructions) else None
        by_inst: dict[str, str] = {}
        # generate in chunks of SAVE_EVERY and write each chunk to the cache at once: an interruption loses little
        for k, part in enumerate(chunks):
            c0 = k * SAVE_EVERY

            def prog(_stage: str, done: int, total: int, c0: int = c0) -> None:
                frac = (c0 + done) / max(n_prepared, 1)
                report(progress, "labelling", n_cached + int(frac * len(todo)), len(instructions))

            texts = generate(
                handle,
                part,
                None,
                cfg,
                stop_fn=refusal_decided if early_stop else None,
                progress=prog if progress else None,
                post_inst=post_inst,
                prefill=record,
            )
            rows = []
            for p, text in zip(part, texts, strict=True):
                by_inst[p.instruction] = text
                if _error_of(text) is None:  # failed generations are never cached: they are retried next time
                    rows.append(
                        {"key": LabelCache.key(p.instruction, settings), "refused": refusal_label(text), "text": text}
                    )
            if cache:
                cache.put_many(rows)
        for i in todo:
            got = by_inst[instructions[i]]
            out[i] = Label(instructions[i], refusal_label(got), str(got), error=_error_of(got))
    labs = [x for x in out if x is not None]
    _check_errors(labs, errors)
    return labs


def _chunks(handle: ModelHandle, instructions: Sequence[str], post_inst: bool) -> list[list[PromptPositions]]:
    """The distinct prompts, tokenised, sorted by length (stable), in chunks of SAVE_EVERY: how labelling batches."""
    prepared = sorted(prepare(handle, list(dict.fromkeys(instructions)), post_inst=post_inst), key=lambda p: p.n_tokens)
    return [prepared[c0 : c0 + SAVE_EVERY] for c0 in range(0, len(prepared), SAVE_EVERY)]


def prompt_states(
    handle: ModelHandle,
    instructions: Sequence[str],
    prefill: PrefillStates,
    *,
    batch_size: int = 64,
    post_inst: bool = True,
    progress: Progress | None = None,
) -> PrefillStates:
    """Fill ``prefill`` with every instruction's prompt-pass states, batched exactly as ``label_refusals`` batches
    them when none of them is cached (same chunks, same rows per batch; ``steering.prompt_pass``, no decoding): the
    states are then bit-identical to the ones that labelling records, whatever the label cache held."""
    chunks = _chunks(handle, instructions, post_inst)
    total, done = sum(len(c) for c in chunks), 0
    for part in chunks:
        prompt_pass(handle, part, prefill, batch_size=min(batch_size, SAVE_EVERY), post_inst=post_inst)
        done += len(part)
        report(progress, "capturing", done, total)
    return prefill


NONFINITE_SCORE = "the refusal log-odds is NaN or inf (non-finite logits); use --dtype float32"


def _check_errors(labs: list[Label], errors: str) -> None:
    failed = [lab for lab in labs if lab.error is not None]
    if failed and errors == "raise":
        raise LabelError(
            f"{len(failed)} of {len(labs)} prompt(s) could not be labelled: {failed[0].error} "
            f"(first: {failed[0].instruction[:60]!r})"
        )


def agreement(a: Sequence[Label], b: Sequence[Label]) -> float:
    """Share of prompts on which two labellings agree (a failed label is a ValueError: it is not a vote)."""
    if len(a) != len(b) or not a:
        raise ValueError("labellings differ in length or are empty")
    if any(x.refused is None for x in (*a, *b)):
        raise ValueError("a labelling has failed labels (refused=None); drop them before comparing")
    return float(np.mean([x.refused == y.refused for x, y in zip(a, b, strict=True)]))
