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
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .models import ModelHandle, cache_dir
from .positions import pad_batch, position_ids_for, prepare
from .progress import Progress, report
from .refusal import REFUSAL_STARTS, is_refusal, refusal_decided
from .steering import GenerationConfig, generate

__all__ = [
    "LABELLERS",
    "Label",
    "LabelCache",
    "agreement",
    "label_refusals",
    "refusal_logodds",
    "refusal_start_token_ids",
]

LABELLERS = ("substring", "logodds")
DEFAULT_LABEL_TOKENS = 48
_FILE_LOCK = threading.Lock()


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
    instruction: str
    refused: bool
    text: str
    score: float | None = None  # log-odds when that labeller was used
    cached: bool = False


class LabelCache:
    """Append-only JSONL cache of generations keyed by (model, prompt, settings)."""

    def __init__(self, handle: ModelHandle, root: Path | None = None):
        fp = handle.fingerprint()
        tag = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
        self.path = (root or cache_dir() / "labels") / f"{handle.spec.name.replace('/', '_')}-{tag}.jsonl"
        self._data: dict[str, dict[str, Any]] | None = None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(instruction: str, settings: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps([instruction, settings], sort_keys=True).encode()).hexdigest()

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._data is None:
            self._data = {}
            if self.path.is_file():
                # errors="replace": a line torn inside a multi-byte character is then just invalid JSON
                for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        row = json.loads(line)
                        self._data[row["key"]] = row
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a torn line from an interrupted run: ignore it
        return self._data

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._load().get(key)
        if row is None:
            self.misses += 1
        else:
            self.hits += 1
        return row

    def put_many(self, rows: list[dict[str, Any]]) -> None:
        data = self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _FILE_LOCK:
            # a torn last line (interrupted run) has no newline: end it first, or the next row is glued onto it
            torn = False
            if self.path.is_file() and self.path.stat().st_size > 0:
                with open(self.path, "rb") as fb:
                    fb.seek(-1, os.SEEK_END)
                    torn = fb.read(1) != b"\n"
            with open(self.path, "a", encoding="utf-8") as f:
                if torn:
                    f.write("\n")
                for row in rows:
                    data[row["key"]] = row
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")


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
) -> list[Label]:
    """Label each instruction refused/accepted (see module docstring)."""
    if labeller not in LABELLERS:
        raise ValueError(f"labeller must be one of {LABELLERS}, not {labeller!r}")
    if not instructions:
        return []
    if labeller == "logodds":
        scores = refusal_logodds(handle, list(instructions), batch_size=batch_size)
        report(progress, "labelling", len(instructions), len(instructions))
        return [Label(i, bool(s > 0), "", float(s)) for i, s in zip(instructions, scores, strict=True)]
    settings = {
        "max_new_tokens": max_new_tokens,
        "greedy": True,
        "early_stop": early_stop,
        "post_inst": post_inst,
        "v": 1,
    }
    cache = cache or (LabelCache(handle) if use_cache else None)
    out: list[Label | None] = [None] * len(instructions)
    todo: list[int] = []
    for i, inst in enumerate(instructions):
        row = cache.get(LabelCache.key(inst, settings)) if cache else None
        if row is not None:
            out[i] = Label(inst, bool(row["refused"]), row["text"], cached=True)
        else:
            todo.append(i)
    n_cached = len(instructions) - len(todo)
    report(progress, "labelling", n_cached, len(instructions))
    if todo:
        uniq = list(dict.fromkeys(instructions[i] for i in todo))
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
        by_inst: dict[str, str] = {}
        # generate in chunks and write each chunk to the cache at once, so an interrupted run keeps its work
        chunk = max(batch_size * 4, 1)
        for c0 in range(0, len(uniq), chunk):
            part = uniq[c0 : c0 + chunk]

            def prog(_stage: str, done: int, total: int, c0: int = c0) -> None:
                frac = (c0 + done) / max(len(uniq), 1)
                report(progress, "labelling", n_cached + int(frac * len(todo)), len(instructions))

            texts = generate(
                handle,
                part,
                None,
                cfg,
                stop_fn=refusal_decided if early_stop else None,
                progress=prog if progress else None,
                post_inst=post_inst,
            )
            rows = []
            for inst, text in zip(part, texts, strict=True):
                by_inst[inst] = text
                rows.append({"key": LabelCache.key(inst, settings), "refused": is_refusal(text), "text": text})
            if cache:
                cache.put_many(rows)
        for i in todo:
            t = by_inst[instructions[i]]
            out[i] = Label(instructions[i], is_refusal(t), t)
    return [x for x in out if x is not None]


def agreement(a: Sequence[Label], b: Sequence[Label]) -> float:
    """Share of prompts on which two labellings agree."""
    if len(a) != len(b) or not a:
        raise ValueError("labellings differ in length or are empty")
    return float(np.mean([x.refused == y.refused for x, y in zip(a, b, strict=True)]))
