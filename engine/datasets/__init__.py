"""Prompt-set loaders for steering-explorer.

Contract
--------
Every loader returns a :class:`PromptSet`: an ordered list of
:class:`PromptItem` (``id``, ``instruction``, optional ``category``, ``split``,
``label`` and a small ``meta`` dict) plus provenance (``source``, the SHA-256 of
the raw input bytes, and the list of rows that were skipped and why).

Reading files (:func:`load_file`, :func:`load_templates`):

* Only regular files are read, of at most :data:`MAX_FILE_BYTES` (50 MB): a FIFO,
  socket or device (``/dev/zero``) is refused at once, never waited on or read
  without end, and a bigger file is a :class:`DatasetError` (split or sample it).
* Files must be UTF-8 (a UTF-8 byte-order mark is accepted and removed).
  A file that is not valid UTF-8 raises :class:`DatasetError` naming the file
  and the first bad byte; we do *not* guess an encoding or drop undecodable
  rows, because silently losing prompts would bias an experiment.
* A missing file, an empty file, a file whose top-level structure is wrong,
  or a file in which *every* row is malformed raises :class:`DatasetError`.
* Malformed rows (missing field, empty or whitespace-only text, non-string
  text, text longer than ``max_chars``, invalid JSON line, duplicate id, a
  lone surrogate such as a JSON ``\\ud800`` escape in any kept text field) are
  skipped and recorded in ``PromptSet.skipped`` as ``Skipped(row, reason)``.
  With ``strict=True`` the first malformed row raises :class:`DatasetError`.
* CSV: a quoted field that never closes would swallow every later row into
  one field; that is a :class:`DatasetError` naming the line where the quote
  opens. A skipped CSV row that spans several lines says so (lines a-b), so
  rows lost inside a badly quoted field are visible.
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

from . import hub
from .builtin import assets_dir, list_builtin, load_any, load_builtin
from .core import (
    ASSETS_DIR,
    ASSETS_ENV,
    BUILTIN,
    DEFAULT_COLUMNS,
    FORMATS,
    GPTFUZZER_SLOT,
    KINDS,
    MAX_CHARS,
    MAX_FILE_BYTES,
    SLOT,
    SPLITS,
    TEMPLATE_COLUMNS,
    TEMPLATE_MAX_CHARS,
    DatasetError,
    PromptItem,
    PromptSet,
    Skipped,
)
from .files import load_file, load_templates
from .hub import load_hf
from .splits import split_set
from .text import fill_template, form_stats, normalize_instruction

__all__ = [
    "ASSETS_DIR",
    "ASSETS_ENV",
    "BUILTIN",
    "DEFAULT_COLUMNS",
    "FORMATS",
    "GPTFUZZER_SLOT",
    "KINDS",
    "MAX_CHARS",
    "MAX_FILE_BYTES",
    "SLOT",
    "SPLITS",
    "TEMPLATE_COLUMNS",
    "TEMPLATE_MAX_CHARS",
    "DatasetError",
    "PromptItem",
    "PromptSet",
    "Skipped",
    "assets_dir",
    "fill_template",
    "form_stats",
    "hub",
    "list_builtin",
    "load_any",
    "load_builtin",
    "load_file",
    "load_hf",
    "load_templates",
    "normalize_instruction",
    "split_set",
]
