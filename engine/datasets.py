"""Prompt-set loaders for steering-explorer.

Contract
--------
Every loader returns a :class:`PromptSet`: an ordered list of
:class:`PromptItem` (``id``, ``instruction``, optional ``category``, ``split``,
``label`` and a small ``meta`` dict) plus provenance (``source``, the SHA-256 of
the raw input bytes, and the list of rows that were skipped and why).

Reading files (:func:`load_file`, :func:`load_templates`):

* Files must be UTF-8 (a UTF-8 byte-order mark is accepted and removed).
  A file that is not valid UTF-8 raises :class:`DatasetError` naming the file
  and the first bad byte; we do *not* guess an encoding or drop undecodable
  rows, because silently losing prompts would bias an experiment.
* A missing file, an empty file, a file whose top-level structure is wrong,
  or a file in which *every* row is malformed raises :class:`DatasetError`.
* Malformed rows (missing field, empty or whitespace-only text, non-string
  text, text longer than ``max_chars``, invalid JSON line, duplicate id) are
  skipped and recorded in ``PromptSet.skipped`` as ``Skipped(row, reason)``.
  With ``strict=True`` the first malformed row raises :class:`DatasetError`.
* Row numbers are 1-based: the line number for JSONL and TXT files, the data
  record number (header not counted) for CSV, and the element number for a
  JSON array.
* Blank lines in JSONL/TXT are ignored, not counted as malformed. Rows removed
  by the ``label=`` filter are not malformed either and are not listed.
* ``instruction`` is kept verbatim (TXT lines are stripped) unless
  ``normalize=True``, in which case :func:`normalize_instruction` is applied.
* Item ids come from an ``id`` field when present, else ``f"{name}-{row:05d}"``.
* Only ``json`` and ``csv`` parsers are used: never pickle or eval.

Built-in sets live in :data:`ASSETS_DIR` (override with the environment
variable ``STEERING_EXPLORER_ASSETS``, read at call time); each is a JSONL file
with rows ``{"id", "instruction", "category", "form", "split"}``.

Hugging Face datasets (:func:`load_hf`) need the optional ``datasets``
package; every failure is reported as :class:`DatasetError`, and an
unreachable hub is detected with a short socket probe so nothing hangs offline.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import socket
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "ASSETS_DIR",
    "BUILTIN",
    "FORMATS",
    "KINDS",
    "MAX_CHARS",
    "SLOT",
    "TEMPLATE_MAX_CHARS",
    "DatasetError",
    "PromptItem",
    "PromptSet",
    "Skipped",
    "assets_dir",
    "fill_template",
    "form_stats",
    "list_builtin",
    "load_any",
    "load_builtin",
    "load_file",
    "load_hf",
    "load_templates",
    "normalize_instruction",
]

MAX_CHARS = 8000
"""Rows whose instruction is longer than this are skipped (see ``max_chars``)."""

TEMPLATE_MAX_CHARS = 32000
"""Default length limit for jailbreak templates, which are much longer than prompts."""

SLOT = "{instruction}"
GPTFUZZER_SLOT = "[INSERT PROMPT HERE]"

KINDS = (
    "harmful",
    "harmless",
    "harmless_sounds_harmful",
    "jailbreak_template",
    "inversion_question",
    "unknown",
)

FORMATS = (
    "auto",
    "advbench",
    "jbb",
    "xstest",
    "sorrybench",
    "alpaca",
    "catqa",
    "csv",
    "jsonl",
    "json",
    "txt",
)

SPLITS = ("train", "test")

ASSETS_ENV = "STEERING_EXPLORER_ASSETS"
_DEFAULT_ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
ASSETS_DIR: Path = Path(os.environ[ASSETS_ENV]) if os.environ.get(ASSETS_ENV) else _DEFAULT_ASSETS_DIR

BUILTIN: dict[str, tuple[str, str]] = {
    "harmful": ("harmful.jsonl", "harmful"),
    "harmless": ("harmless.jsonl", "harmless"),
    "harmless_sounds_harmful": (
        "harmless_sounds_harmful.jsonl",
        "harmless_sounds_harmful",
    ),
    "jailbreak_templates": ("jailbreak_templates.jsonl", "jailbreak_template"),
    "inversion_questions": ("inversion_questions.jsonl", "inversion_question"),
}

# Default instruction columns for generic files, in order of preference.
DEFAULT_COLUMNS = (
    "instruction",
    "prompt",
    "bad_q",
    "goal",
    "Goal",
    "question",
    "Question",
    "text",
)
TEMPLATE_COLUMNS = ("template", "instruction", "text", "prompt")


class DatasetError(ValueError):
    """A prompt file or data set cannot be used; the message says where and why."""


@dataclass(frozen=True)
class PromptItem:
    """One prompt. ``meta`` holds small extra fields; it is compared but not hashed."""

    id: str
    instruction: str
    category: str | None = None
    split: str | None = None
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)


@dataclass
class Skipped:
    """A malformed row that was left out: its 1-based row number and why."""

    row: int
    reason: str


@dataclass
class PromptSet:
    """An ordered collection of prompts with provenance."""

    name: str
    kind: str
    items: list[PromptItem]
    skipped: list[Skipped] = field(default_factory=list)
    source: str = ""
    sha256: str = ""
    normalized: bool = False

    def instructions(self) -> list[str]:
        return [it.instruction for it in self.items]

    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[PromptItem]:
        return iter(self.items)

    def _with_items(self, items: list[PromptItem]) -> PromptSet:
        return dataclasses.replace(self, items=items, skipped=list(self.skipped))

    def filter(
        self,
        split: str | None = None,
        category: str | Iterable[str] | None = None,
    ) -> PromptSet:
        """Items whose split equals ``split`` and whose category is ``category``
        (a string or a collection of strings); ``None`` means no constraint."""
        if split is not None and split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        cats: set[str] | None
        if category is None:
            cats = None
        elif isinstance(category, str):
            cats = {category}
        else:
            cats = set(category)
        items = [
            it for it in self.items if (split is None or it.split == split) and (cats is None or it.category in cats)
        ]
        return self._with_items(items)

    def sample(self, n: int | None, seed: int = 0) -> PromptSet:
        """Seeded random sample of ``n`` items without replacement.

        The kept items stay in their original order. ``n`` of ``None`` or
        ``>= len(self)`` keeps everything. The selection only uses
        ``random.Random(seed).random()``, whose output Python guarantees to
        stay the same across versions, so samples are reproducible.
        """
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise DatasetError(f"sample size must be a non-negative integer or None, got {n!r}")
        if n is None or n >= len(self.items):
            return self._with_items(list(self.items))
        rng = random.Random(seed)
        keys = [rng.random() for _ in self.items]
        chosen = sorted(sorted(range(len(self.items)), key=keys.__getitem__)[:n])
        return self._with_items([self.items[i] for i in chosen])

    def provenance(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "n": len(self.items),
            "skipped": len(self.skipped),
            "normalized": self.normalized,
        }


# --------------------------------------------------------------------------
# Normalisation and form statistics
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# Row schemas
# --------------------------------------------------------------------------


class _RowError(Exception):
    """A malformed row; message is the reason."""


@dataclass(frozen=True)
class _Schema:
    text_fields: tuple[str, ...]
    category_fields: tuple[str, ...] = ("category", "Category")
    label_field: str | None = "label"
    meta_fields: tuple[str, ...] | None = None  # None: every other scalar field
    turns: bool = False  # instruction = record[field][0]
    join_input: bool = False  # alpaca: instruction + "\n\n" + input
    template: bool = False  # must contain a slot; GPTFuzzer slot converted


_SCHEMAS: dict[str, _Schema] = {
    "advbench": _Schema(("goal", "bad_q"), meta_fields=("target",)),
    "jbb": _Schema(
        ("Goal", "instruction", "goal"),
        meta_fields=("Behavior", "Target", "Source", "behavior", "target", "source"),
    ),
    "xstest": _Schema(("prompt",), category_fields=("type",), meta_fields=("note", "focus")),
    "sorrybench": _Schema(("turns",), meta_fields=("question_id", "prompt_style"), turns=True),
    "alpaca": _Schema(("instruction",), meta_fields=(), join_input=True),
    "catqa": _Schema(("Question",), category_fields=("Category",), meta_fields=("Subcategory",)),
}

_SCALAR = (str, int, float, bool, type(None))
_RESERVED = {"id", "split", "label", "category", "Category"}


def _detect_schema(keys: set[str]) -> str:
    if "bad_q" in keys or {"goal", "target"} <= keys:
        return "advbench"
    if "Goal" in keys:
        return "jbb"
    if "turns" in keys:
        return "sorrybench"
    if {"Question", "Category"} <= keys:
        return "catqa"
    if {"prompt", "type", "label"} <= keys:
        return "xstest"
    if "instruction" in keys and ("input" in keys or "output" in keys):
        return "alpaca"
    return "generic"


def _common_keys(records: list[tuple[int, Any]], sample: int = 50) -> set[str]:
    """Keys present in at least half of the first ``sample`` object records."""
    dicts = [r for _, r in records[:sample] if isinstance(r, dict)]
    if not dicts:
        return set()
    counts = Counter(k for d in dicts for k in d)
    return {k for k, c in counts.items() if 2 * c >= len(dicts)}


def _field_name(candidates: Iterable[str]) -> str:
    return " or ".join(repr(c) for c in candidates)


def _to_item(
    record: Any,
    row: int,
    schema: _Schema,
    *,
    name: str,
    max_chars: int,
    normalize: bool,
) -> tuple[PromptItem, str]:
    """Build an item from one record; returns (item, raw_text) or raises _RowError."""
    if isinstance(record, str) and schema.meta_fields is None:
        # A bare string in a generic JSON array or JSONL file is the instruction.
        record = {schema.text_fields[0]: record}
    if not isinstance(record, dict):
        raise _RowError(f"expected a JSON object, got {type(record).__name__}")

    key = next((k for k in schema.text_fields if k in record and record[k] is not None), None)
    if key is None:
        raise _RowError(f"missing field {_field_name(schema.text_fields)}")
    value = record[key]
    if schema.turns:
        if not isinstance(value, list) or not value:
            raise _RowError(f"field {key!r} must be a non-empty list of strings")
        value = value[0]
    if not isinstance(value, str):
        raise _RowError(f"field {key!r} is not text (got {type(value).__name__})")
    text = value
    if schema.join_input:
        extra = record.get("input")
        if extra is not None and not isinstance(extra, str):
            raise _RowError(f"field 'input' is not text (got {type(extra).__name__})")
        if extra and extra.strip() and text.strip():
            text = f"{text}\n\n{extra}"
    if not text.strip():
        raise _RowError(f"empty text in field {key!r}")
    if len(text) > max_chars:
        raise _RowError(f"text too long ({len(text)} chars > max_chars={max_chars})")
    if schema.template:
        text = text.replace(GPTFUZZER_SLOT, SLOT)
        if SLOT not in text:
            raise _RowError(f"template has no {SLOT} or {GPTFUZZER_SLOT} slot")
    raw = text
    if normalize:
        text = normalize_instruction(text)
        if not text:
            raise _RowError("text is empty after normalisation")

    raw_id = record.get("id")
    if raw_id is None or raw_id == "":
        item_id = f"{name}-{row:05d}"
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
        item_id = str(raw_id)
    else:
        raise _RowError(f"field 'id' must be a string or integer (got {type(raw_id).__name__})")

    category = next(
        (record[k] for k in schema.category_fields if record.get(k) not in (None, "")),
        None,
    )
    label = record.get(schema.label_field) if schema.label_field else None
    split = record.get("split")
    for fname, v in (("category", category), ("label", label), ("split", split)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (str, int, float))):
            raise _RowError(f"field {fname!r} must be text (got {type(v).__name__})")
    split = str(split).strip().lower() if split not in (None, "") else None

    used = {key, *schema.category_fields, *_RESERVED}
    if schema.label_field:
        used.add(schema.label_field)
    if schema.join_input:
        used |= {"input", "output"}
    if schema.meta_fields is None:
        meta = {k: v for k, v in record.items() if k not in used and isinstance(v, _SCALAR)}
    else:
        meta = {
            k: record[k] for k in schema.meta_fields if k in record and isinstance(record[k], _SCALAR) and k not in used
        }
    if schema.join_input:
        meta["has_input"] = bool(record.get("input") and str(record["input"]).strip())

    item = PromptItem(
        id=item_id,
        instruction=text,
        category=None if category is None else str(category),
        split=split,
        label=None if label in (None, "") else str(label),
        meta=meta,
    )
    return item, raw


# --------------------------------------------------------------------------
# File reading
# --------------------------------------------------------------------------


def _read_text(path: Path) -> tuple[str, str]:
    """Return (text, sha256 of raw bytes); raise DatasetError for every file problem."""
    if not path.exists():
        raise DatasetError(f"file not found: {path}")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected a file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read file: {e}") from e
    digest = hashlib.sha256(raw).hexdigest()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError(f"{path}: file is UTF-16 encoded; re-save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}: file is not valid UTF-8 (bad byte 0x{raw[e.start]:02x} at offset "
            f"{e.start}, line {line}); re-save it as UTF-8"
        ) from None
    if not text.strip():
        raise DatasetError(f"{path}: file is empty")
    return text, digest


def _container_for(path: Path, fmt: str, text: str) -> str:
    if fmt in ("csv", "jsonl", "json", "txt"):
        return fmt
    ext = path.suffix.lower()
    if ext in (".csv", ".tsv"):
        return "csv"
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".json":
        return "json"
    if ext == ".txt":
        return "txt"
    head = text.lstrip()[:1]
    if head == "[":
        return "json"
    if head == "{":
        try:
            json.loads(text)
            return "json"
        except json.JSONDecodeError:
            return "jsonl"
    raise DatasetError(
        f"{path}: cannot tell the file format from extension {ext or '(none)'!r}; "
        f"pass fmt= (one of {', '.join(FORMATS[1:])})"
    )


def _records_csv(path: Path, text: str) -> tuple[list[tuple[int, Any]], list[str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records: list[tuple[int, Any]] = []
    row = 0
    try:
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise DatasetError(f"{path}: CSV file has no header row")
        for values in reader:
            if not values or not any(v.strip() for v in values):
                continue
            row += 1
            rec = {h: v for h, v in zip(header, values, strict=False) if h}
            for h in header[len(values) :]:
                if h:
                    rec.setdefault(h, None)  # short row: fields missing
            records.append((row, rec))
    except csv.Error as e:
        raise DatasetError(f"{path}: CSV parse error at row {row + 1}: {e}") from e
    return records, header


def _records_jsonl(path: Path, text: str) -> list[tuple[int, Any]]:
    records: list[tuple[int, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            records.append((lineno, _RowError(f"invalid JSON: {e.msg} at column {e.colno}")))
    return records


def _records_json(path: Path, text: str) -> list[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1 and lines[0].lstrip().startswith("{"):
            try:
                json.loads(lines[0])
                return _records_jsonl(path, text)  # JSON Lines saved as .json
            except json.JSONDecodeError:
                pass
        raise DatasetError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if isinstance(data, dict):
        lists = [(k, v) for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DatasetError(
                f"{path}: JSON top level is an object with keys {sorted(data)[:10]}; "
                "expected an array of rows or an object holding exactly one array"
            )
        data = lists[0][1]
    if not isinstance(data, list):
        raise DatasetError(f"{path}: JSON top level is {type(data).__name__}, expected an array")
    return [(i, rec) for i, rec in enumerate(data, start=1)]


def _records_txt(text: str) -> list[tuple[int, Any]]:
    return [(lineno, {"text": line.strip()}) for lineno, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _check_common(kind: str, max_chars: int, limit: int | None) -> None:
    if kind not in KINDS:
        raise DatasetError(f"unknown kind {kind!r}; expected one of {list(KINDS)}")
    if not isinstance(max_chars, int) or max_chars <= 0:
        raise DatasetError(f"max_chars must be a positive integer, got {max_chars!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise DatasetError(f"limit must be a non-negative integer or None, got {limit!r}")


def _choose_column(
    where: str,
    available: set[str],
    column: str | None,
    candidates: tuple[str, ...],
    ordered: list[str] | None = None,
) -> str:
    shown = ordered if ordered is not None else sorted(available)
    if column is not None:
        if column not in available:
            raise DatasetError(f"{where}: column {column!r} not found; available: {shown}")
        return column
    for c in candidates:
        if c in available:
            return c
    raise DatasetError(
        f"{where}: no instruction column found (looked for {list(candidates)}); available: {shown}; pass column="
    )


def _build(
    records: list[tuple[int, Any]],
    schema: _Schema,
    *,
    where: str,
    name: str,
    kind: str,
    source: str,
    sha256: str | None,
    normalize: bool,
    max_chars: int,
    strict: bool,
    label: str | None,
) -> PromptSet:
    items: list[PromptItem] = []
    raws: list[str] = []
    skipped: list[Skipped] = []
    seen: dict[str, int] = {}
    labels_seen: Counter[str] = Counter()
    for row, rec in records:
        try:
            if isinstance(rec, _RowError):
                raise rec
            item, raw = _to_item(rec, row, schema, name=name, max_chars=max_chars, normalize=normalize)
            if item.id in seen:
                raise _RowError(f"duplicate id {item.id!r} (first seen at row {seen[item.id]})")
        except _RowError as e:
            if strict:
                raise DatasetError(f"{where}: row {row}: {e}") from None
            skipped.append(Skipped(row, str(e)))
            continue
        seen[item.id] = row
        if item.label is not None:
            labels_seen[item.label] += 1
        if label is not None and (item.label or "").casefold() != label.casefold():
            continue
        items.append(item)
        raws.append(raw)
    if not items:
        if label is not None and labels_seen:
            raise DatasetError(f"{where}: no row has label {label!r}; labels present: {sorted(labels_seen)}")
        if skipped:
            first = "; ".join(f"row {s.row}: {s.reason}" for s in skipped[:5])
            raise DatasetError(f"{where}: no usable rows; {len(skipped)} malformed row(s). First problems: {first}")
        if label is not None:
            raise DatasetError(f"{where}: label={label!r} given but no row has a label")
        raise DatasetError(f"{where}: no data rows")
    if sha256 is None:
        sha256 = hashlib.sha256("\n".join(raws).encode("utf-8")).hexdigest()
    return PromptSet(
        name=name,
        kind=kind,
        items=items,
        skipped=skipped,
        source=source,
        sha256=sha256,
        normalized=normalize,
    )


def _schema_for_records(
    fmt: str,
    container: str,
    records: list[tuple[int, Any]],
    *,
    where: str,
    column: str | None,
    header: list[str] | None = None,
) -> _Schema:
    if container == "txt":
        if fmt not in ("auto", "txt"):
            raise DatasetError(f"{where}: format {fmt!r} cannot be read from a text file")
        return _Schema(("text",), category_fields=(), label_field=None, meta_fields=())
    keys = set(header) if header is not None else _common_keys(records)
    schema_name = fmt if fmt in _SCHEMAS else "generic"
    if fmt == "auto":
        schema_name = _detect_schema(keys)
    if schema_name == "generic":
        if not keys and column is None:
            # No JSON objects to inspect (a list of strings, or only broken lines):
            # rows are read per row, and broken ones are reported as skipped.
            return _Schema(DEFAULT_COLUMNS, meta_fields=None)
        col = _choose_column(where, keys, column, DEFAULT_COLUMNS, header)
        return _Schema((col,), meta_fields=None)
    schema = _SCHEMAS[schema_name]
    if column is not None:
        if header is not None and column not in header:
            _choose_column(where, keys, column, (), header)  # raises with column list
        schema = dataclasses.replace(schema, text_fields=(column,))
    elif header is not None and not any(k in keys for k in schema.text_fields):
        raise DatasetError(
            f"{where}: {schema_name} file needs column {_field_name(schema.text_fields)}; available: {header}"
        )
    return schema


def _read_records(path: Path, fmt: str) -> tuple[str, str, list[tuple[int, Any]], list[str] | None]:
    text, digest = _read_text(path)
    container = _container_for(path, fmt, text)
    header = None
    if container == "csv":
        records, header = _records_csv(path, text)
    elif container == "jsonl":
        records = _records_jsonl(path, text)
    elif container == "json":
        records = _records_json(path, text)
    else:
        records = _records_txt(text)
    if not records:
        raise DatasetError(f"{path}: no data rows")
    return digest, container, records, header


def load_file(
    path: str | os.PathLike[str],
    fmt: str = "auto",
    *,
    column: str | None = None,
    label: str | None = None,
    name: str | None = None,
    kind: str = "unknown",
    normalize: bool = False,
    limit: int | None = None,
    seed: int = 0,
    max_chars: int = MAX_CHARS,
    strict: bool = False,
) -> PromptSet:
    """Load a prompt file.

    ``fmt`` is ``auto`` (container from the extension, schema from the fields
    present), a benchmark schema (``advbench``, ``jbb``, ``xstest``,
    ``sorrybench``, ``alpaca``, ``catqa``; container from the extension), or a
    generic container (``csv``, ``jsonl``, ``json``, ``txt``) whose instruction
    column is ``column`` or the first of :data:`DEFAULT_COLUMNS` present.
    ``label`` keeps only rows whose label matches (case-insensitive), e.g.
    XSTest ``label="safe"``. ``limit`` takes a seeded sample (see
    :meth:`PromptSet.sample`). See the module docstring for error handling.
    """
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    _check_common(kind, max_chars, limit)
    p = Path(path)
    where = str(p)
    digest, container, records, header = _read_records(p, fmt)
    schema = _schema_for_records(fmt, container, records, where=where, column=column, header=header)
    ps = _build(
        records,
        schema,
        where=where,
        name=name or p.stem,
        kind=kind,
        source=str(p),
        sha256=digest,
        normalize=normalize,
        max_chars=max_chars,
        strict=strict,
        label=label,
    )
    return ps.sample(limit, seed) if limit is not None else ps


def load_templates(
    path: str | os.PathLike[str],
    fmt: str = "auto",
    column: str | None = None,
    *,
    name: str | None = None,
    max_chars: int = TEMPLATE_MAX_CHARS,
    strict: bool = False,
    limit: int | None = None,
    seed: int = 0,
) -> PromptSet:
    """Load jailbreak templates (``kind="jailbreak_template"``).

    Accepts JSONL/JSON rows with a ``template``, ``instruction`` or ``text``
    field and GPTFuzzer-style CSV (``id,text``) whose ``[INSERT PROMPT HERE]``
    slot is converted to ``{instruction}``. Rows without a slot are skipped.
    Templates are never normalised.
    """
    if fmt not in ("auto", "csv", "jsonl", "json"):
        raise DatasetError(f"unknown template format {fmt!r}; expected auto, csv, jsonl or json")
    _check_common("jailbreak_template", max_chars, limit)
    p = Path(path)
    where = str(p)
    digest, container, records, header = _read_records(p, fmt)
    if container == "txt":
        raise DatasetError(f"{where}: templates must be CSV, JSONL or JSON, not plain text")
    keys = set(header) if header is not None else _common_keys(records)
    col = _choose_column(where, keys, column, TEMPLATE_COLUMNS, header)
    schema = _Schema((col,), meta_fields=None, template=True)
    ps = _build(
        records,
        schema,
        where=where,
        name=name or p.stem,
        kind="jailbreak_template",
        source=str(p),
        sha256=digest,
        normalize=False,
        max_chars=max_chars,
        strict=strict,
        label=None,
    )
    return ps.sample(limit, seed) if limit is not None else ps


# --------------------------------------------------------------------------
# Built-in sets
# --------------------------------------------------------------------------


def assets_dir() -> Path:
    """The assets folder: ``$STEERING_EXPLORER_ASSETS`` if set, else the repository's assets/."""
    env = os.environ.get(ASSETS_ENV)
    return Path(env) if env else _DEFAULT_ASSETS_DIR


def load_builtin(name: str, split: str | None = None, *, normalize: bool = False) -> PromptSet:
    """Load a built-in set by name, optionally only its ``train`` or ``test`` split.

    ``normalize`` is ignored for ``jailbreak_templates`` (templates are never
    normalised). The returned set's ``source`` is ``builtin:NAME``; with a split
    its ``name`` is ``NAME:SPLIT``.
    """
    if name not in BUILTIN:
        raise DatasetError(f"unknown built-in set {name!r}; known: {', '.join(BUILTIN)}")
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {list(SPLITS)} or None")
    filename, kind = BUILTIN[name]
    path = assets_dir() / filename
    if not path.exists():
        raise DatasetError(
            f"built-in set {name!r} not found: file not found: {path} (set {ASSETS_ENV} to the assets folder)"
        )
    if kind == "jailbreak_template":
        ps = load_templates(path, fmt="jsonl", name=name)
    else:
        ps = load_file(path, fmt="jsonl", name=name, kind=kind, normalize=normalize)
    ps.source = f"builtin:{name}"
    if split is not None:
        ps = ps.filter(split=split)
        ps.name = f"{name}:{split}"
    return ps


def list_builtin() -> list[dict[str, Any]]:
    """Summary of every built-in set; missing or broken files are reported, not raised."""
    out: list[dict[str, Any]] = []
    for name, (filename, kind) in BUILTIN.items():
        path = assets_dir() / filename
        entry: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "n": 0,
            "n_train": 0,
            "n_test": 0,
            "categories": {},
            "skipped": 0,
            "available": path.exists(),
            "path": str(path),
        }
        if path.exists():
            try:
                ps = load_builtin(name)
            except DatasetError as e:
                entry["error"] = str(e)
            else:
                cats = Counter(it.category or "uncategorized" for it in ps.items)
                entry.update(
                    n=len(ps),
                    n_train=sum(it.split == "train" for it in ps.items),
                    n_test=sum(it.split == "test" for it in ps.items),
                    categories=dict(sorted(cats.items())),
                    skipped=len(ps.skipped),
                )
        out.append(entry)
    return out


# --------------------------------------------------------------------------
# Hugging Face
# --------------------------------------------------------------------------


def _hub_reachable(timeout: float) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def load_hf(
    dataset_id: str,
    split: str = "train",
    column: str | None = None,
    timeout: float = 10.0,
    *,
    config: str | None = None,
    fmt: str = "auto",
    label: str | None = None,
    name: str | None = None,
    kind: str = "unknown",
    normalize: bool = False,
    limit: int | None = None,
    seed: int = 0,
    max_chars: int = MAX_CHARS,
    strict: bool = False,
) -> PromptSet:
    """Load a data set from the Hugging Face hub with the optional ``datasets`` package.

    The hub is probed with a ``timeout``-second socket connection first (skipped
    when ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set, so cached data sets
    load offline); hub request timeouts are set to ``timeout`` too. Rows are
    read with the same schemas as :func:`load_file`. ``sha256`` is computed
    over the kept raw instructions joined by newlines.
    """
    if fmt not in FORMATS or fmt == "txt":
        raise DatasetError(f"unknown format {fmt!r} for a Hugging Face data set")
    _check_common(kind, max_chars, limit)
    source = f"hf:{dataset_id}" + (f":{split}" if split else "")
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")
    for var in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        os.environ.setdefault(var, str(max(1, int(timeout))))
    try:
        import datasets as hf_datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DatasetError(
            f"loading {source} needs the Hugging Face 'datasets' package: pip install datasets"
        ) from None
    unreachable = f"could not reach the Hugging Face hub (offline?) for ID: {dataset_id}"
    if not offline and not _hub_reachable(timeout):
        raise DatasetError(f"{unreachable} (set HF_HUB_OFFLINE=1 to use the local cache)")
    try:
        ds = hf_datasets.load_dataset(dataset_id, config, split=split)
        rows = [dict(r) if isinstance(r, Mapping) else r for r in ds]
    except Exception as e:  # the hub raises many unrelated exception types
        network = isinstance(e, (ConnectionError, TimeoutError)) or any(
            s in type(e).__name__ for s in ("Connection", "Timeout", "Offline", "HTTP")
        )
        if offline or network:
            raise DatasetError(f"{unreachable}: {type(e).__name__}: {e}") from e
        raise DatasetError(f"could not load {source}: {type(e).__name__}: {e}") from e
    records = [(i, r) for i, r in enumerate(rows, start=1)]
    if not records:
        raise DatasetError(f"{source}: data set split is empty")
    schema = _schema_for_records(fmt, "json", records, where=source, column=column)
    ps = _build(
        records,
        schema,
        where=source,
        name=name or dataset_id.rsplit("/", 1)[-1],
        kind=kind,
        source=source,
        sha256=None,
        normalize=normalize,
        max_chars=max_chars,
        strict=strict,
        label=label,
    )
    return ps.sample(limit, seed) if limit is not None else ps


# --------------------------------------------------------------------------
# Spec dispatch
# --------------------------------------------------------------------------


def load_any(spec: str | os.PathLike[str], **kw: Any) -> PromptSet:
    """Load from a spec: ``builtin:NAME[:SPLIT]``, ``hf:ID[:SPLIT]`` or a file path.

    Keyword arguments go to the underlying loader; ``limit`` and ``seed`` also
    work for built-in sets.
    """
    if isinstance(spec, os.PathLike):
        return load_file(spec, **kw)
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"empty or invalid data set spec: {spec!r}")
    if spec.startswith("builtin:"):
        parts = spec[len("builtin:") :].split(":")
        if len(parts) > 2 or not parts[0]:
            raise DatasetError(f"bad spec {spec!r}; expected builtin:NAME or builtin:NAME:SPLIT")
        limit = kw.pop("limit", None)
        seed = kw.pop("seed", 0)
        ps = load_builtin(parts[0], parts[1] if len(parts) == 2 else None, **kw)
        return ps.sample(limit, seed) if limit is not None else ps
    if spec.startswith("hf:"):
        rest = spec[len("hf:") :]
        if ":" in rest:
            dataset_id, split = rest.rsplit(":", 1)
            kw["split"] = split
        else:
            dataset_id = rest
        if not dataset_id:
            raise DatasetError(f"bad spec {spec!r}; expected hf:ID or hf:ID:SPLIT")
        return load_hf(dataset_id, **kw)
    path = Path(spec.removeprefix("file:"))
    if not path.exists() and spec in BUILTIN:
        raise DatasetError(f"file not found: {spec} (did you mean builtin:{spec}?)")
    return load_file(path, **kw)
