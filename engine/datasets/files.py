"""Reading prompt files (CSV, JSONL, JSON, TXT, benchmark schemas) into PromptSets; see the package docstring."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import read_regular_file
from .core import (
    DEFAULT_COLUMNS,
    FORMATS,
    GPTFUZZER_SLOT,
    KINDS,
    MAX_CHARS,
    MAX_FILE_BYTES,
    SLOT,
    TEMPLATE_COLUMNS,
    TEMPLATE_MAX_CHARS,
    DatasetError,
    PromptItem,
    PromptSet,
    Skipped,
)
from .text import normalize_instruction

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
_SPAN = "\x00lines"  # key of a CSV record's (first, last) line when it spans several lines (never a CSV header)


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


def _check_unicode(field: str, value: Any) -> None:
    """A lone surrogate (a JSON ``\\ud800`` escape without its pair) makes the row malformed: it is not text."""
    if not isinstance(value, str):
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _RowError(
            f"field {field!r} has an invalid character at position {e.start} (U+{ord(value[e.start]):04X}, a lone "
            "surrogate escape); fix the row"
        ) from None


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

    used = {key, *schema.category_fields, *_RESERVED, _SPAN}
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

    for fname, v in (("text", text), ("id", item_id), ("category", category), ("label", label), ("split", split)):
        _check_unicode(fname, v)
    for k, v in meta.items():
        _check_unicode(k, v)

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
    """Return (text, sha256 of raw bytes); raise DatasetError for every file problem (see the package docstring:
    only regular files, at most ``MAX_FILE_BYTES``)."""
    try:
        raw = read_regular_file(path, MAX_FILE_BYTES, what="prompt file")
    except ValueError as e:
        msg = str(e)
        if "the limit is" in msg or "over the limit" in msg:
            msg += "; split the file or take a sample of it first"
        raise DatasetError(msg.replace("prompt file not found", "file not found")) from None
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


def _unclosed_quote(path: Path, line: int, lines: int) -> DatasetError:
    return DatasetError(
        f"{path}: line {line}: a quoted field opens here and is never closed, so the rest of the file "
        f'({lines} line(s)) would be read as one field; close the quote (a quote inside a field is written "") '
        "and load the file again"
    )


def _records_csv(path: Path, text: str) -> tuple[list[tuple[int, Any]], list[str]]:
    """CSV records as ``(row, dict)``. A record that spans several lines (a quoted field with line breaks) is
    re-read strictly: a quote that never closes (the csv module would silently swallow every later row into that
    field) or one that closes only at a later row's quote (the quote then is followed by more text) is a
    DatasetError naming the line where the quote opens."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    lines = io.StringIO(text, newline="").readlines()
    records: list[tuple[int, Any]] = []
    row = 0
    start = 1
    try:
        header = [h.strip() for h in next(reader, [])]
        _check_span(path, lines, delimiter, start, reader.line_num)
        if not any(header):
            raise DatasetError(f"{path}: CSV file has no header row")
        start = reader.line_num + 1
        for values in reader:
            _check_span(path, lines, delimiter, start, reader.line_num)
            first, start = start, reader.line_num + 1
            if not values or not any(v.strip() for v in values):
                continue
            row += 1
            rec: dict[str, Any] = {h: v for h, v in zip(header, values, strict=False) if h}
            for h in header[len(values) :]:
                if h:
                    rec.setdefault(h, None)  # short row: fields missing
            if reader.line_num > first:
                rec[_SPAN] = (first, reader.line_num)
            records.append((row, rec))
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise _unclosed_quote(path, start, len(lines) - start + 1) from None
        raise DatasetError(f"{path}: CSV parse error at row {row + 1}: {e}") from e
    return records, header


def _check_span(path: Path, lines: list[str], delimiter: str, first: int, last: int) -> None:
    """Re-read the record on lines ``first..last`` strictly when it spans several lines (see ``_records_csv``)."""
    if last <= first:
        return
    chunk = "".join(lines[first - 1 : last])
    try:
        for _ in csv.reader(io.StringIO(chunk, newline=""), delimiter=delimiter, strict=True):
            pass
    except csv.Error as e:
        if "unexpected end of data" in str(e) or last >= len(lines):
            raise _unclosed_quote(path, first, len(lines) - first + 1) from None
        raise DatasetError(
            f"{path}: line {first}: a quoted field opens here and closes only on line {last}, where the quote is "
            f"followed by more text, so lines {first}-{last} would be read as one field; check the quotes on those "
            'lines (a quote inside a field is written "")'
        ) from None


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
            reason = str(e)
            span = rec.get(_SPAN) if isinstance(rec, dict) else None
            if span is not None:
                reason += (
                    f" (this row spans lines {span[0]}-{span[1]}: a quoted field with {span[1] - span[0]} line "
                    "break(s); if that is not meant, a quote is not closed and later rows are inside it)"
                )
            if strict:
                raise DatasetError(f"{where}: row {row}: {reason}") from None
            skipped.append(Skipped(row, reason))
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
