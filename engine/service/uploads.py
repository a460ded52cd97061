"""Parsing what a user types or uploads: instructions, coefficients, prompt files and labelled files.

Contract:
- Typed text: ``parse_instructions(text, max_n)`` gives one instruction per non-blank line (``ValueError`` when there
  is none or more than ``max_n``, default ``MAX_INSTRUCTIONS``); ``parse_coeffs(text)`` gives sorted unique finite
  coefficients from a comma, semicolon or space separated list.
- Files: ``read_prompt_upload(name, data)`` reads a CSV / JSONL / JSON / TXT upload through
  ``engine.datasets.load_file`` (source ``upload:<name>``); ``parse_labelled_upload(name, data)`` reads a CSV / JSONL
  file with a text and a label column into (instructions, truth harmful?, notes about rows left out).
  Anything malformed raises ``engine.datasets.DatasetError`` naming the upload (never a temporary path).
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import datasets as ds

__all__ = [
    "MAX_INSTRUCTIONS",
    "parse_coeffs",
    "parse_instructions",
    "parse_labelled_upload",
    "read_prompt_upload",
]

MAX_INSTRUCTIONS = 16
_UPLOAD_SUFFIXES = (".csv", ".jsonl", ".json", ".txt")
_TRUE_LABELS = {"harmful", "unsafe", "1", "true", "yes", "y", "refuse", "bad", "toxic", "jailbreak"}
_FALSE_LABELS = {"harmless", "safe", "0", "false", "no", "n", "benign", "comply", "good", "ok"}


def parse_instructions(text: str, max_n: int = MAX_INSTRUCTIONS) -> list[str]:
    """One instruction per non-blank line; ValueError when there is none or too many."""
    if not isinstance(text, str):
        raise ValueError("instructions must be text")
    lines = [ln.strip() for ln in text.splitlines()]
    out = [ln for ln in lines if ln]
    if not out:
        raise ValueError("type at least one instruction (one per line)")
    if len(out) > max_n:
        raise ValueError(f"{len(out)} instructions given; the limit is {max_n} per run")
    return out


def parse_coeffs(text: str, limit: int = 12) -> list[float]:
    """Comma or space separated coefficients, e.g. '0.5, 1, 2, 4'."""
    parts = [p for p in re.split(r"[,\s;]+", str(text).strip()) if p]
    if not parts:
        raise ValueError("give at least one coefficient, e.g. 0.5, 1, 2, 4")
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ValueError(f"{p!r} is not a number; give coefficients like 0.5, 1, 2, 4") from None
        if not math.isfinite(v):
            raise ValueError(f"coefficient {p} is not finite")
        out.append(v)
    out = sorted(set(out))
    if len(out) > limit:
        raise ValueError(f"{len(out)} coefficients; the limit is {limit}")
    return out


def _with_temp_file(name: str, data: bytes, fn: Callable[[Path], Any]) -> Any:
    suffix = Path(name).suffix.lower()
    if suffix not in _UPLOAD_SUFFIXES:
        raise ds.DatasetError(f"{name}: upload a CSV, JSONL, JSON or TXT file (got {suffix or 'no extension'})")
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ds.DatasetError(f"{name}: the file is empty")
    with tempfile.TemporaryDirectory(prefix="se-upload-") as tmp:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).stem)[:60] or "upload"
        path = Path(tmp) / f"{safe}{suffix}"
        path.write_bytes(bytes(data))
        try:
            return fn(path)
        except ds.DatasetError as exc:
            raise ds.DatasetError(str(exc).replace(str(path), name)) from None


def read_prompt_upload(name: str, data: bytes, *, column: str | None = None, kind: str = "unknown") -> ds.PromptSet:
    """An uploaded prompt file through ``engine.datasets.load_file`` (DatasetError on anything malformed)."""
    ps = _with_temp_file(name, data, lambda p: ds.load_file(p, "auto", column=column or None, kind=kind))
    ps.source = f"upload:{name}"
    return ps


def _to_truth(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None:
        return None
    v = str(value).strip().casefold()
    if v in _TRUE_LABELS:
        return True
    if v in _FALSE_LABELS:
        return False
    try:
        f = float(v)
    except ValueError:
        return None
    return f >= 0.5 if math.isfinite(f) else None


def parse_labelled_upload(
    name: str, data: bytes, *, text_column: str | None = None, label_column: str = "label"
) -> tuple[list[str], list[bool], list[str]]:
    """A labelled CSV/JSONL file: (instructions, truth harmful?, notes about skipped rows).

    Labels: harmful/unsafe/1/true/yes are harmful; harmless/safe/benign/0/false/no are harmless.
    """
    if Path(name).suffix.lower() == ".txt":
        raise ds.DatasetError(f"{name}: a labelled file must be CSV or JSONL (a text column and a label column)")
    ps = _with_temp_file(name, data, lambda p: ds.load_file(p, "auto", column=text_column or None))
    texts: list[str] = []
    truth: list[bool] = []
    notes = [f"row {s.row}: {s.reason}" for s in ps.skipped]
    for it in ps.items:
        raw = it.label if label_column == "label" else it.meta.get(label_column)
        if raw is None and label_column != "label":
            raw = it.label
        t = _to_truth(raw)
        if t is None:
            notes.append(f"{it.id}: label {raw!r} is neither harmful nor harmless")
            continue
        texts.append(it.instruction)
        truth.append(t)
    if not texts:
        raise ds.DatasetError(
            f"{name}: no row has a usable label in column {label_column!r} "
            "(use harmful/harmless, unsafe/safe, 1/0 or true/false)"
        )
    return texts, truth, notes
