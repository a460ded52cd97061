"""What an experiment returns and writes: :class:`ExperimentResult`, numbers in rows, CSV / JSON / PNG files.

Contract:
- ``ExperimentResult.rows`` are flat records (one dict per row, plain JSON values); rates and accuracies are
  **fractions** in [0, 1] rounded to 6 digits (``num``, ``rate``); an empty group gives ``None``.
- ``write_files(result, out_dir, stem)`` writes ``<stem>.csv`` (columns in first-seen order, empty cells for
  None), ``<stem>.json`` (``to_json()``) and ``<stem>.png`` (the result's chart, see ``figures``); a figure that
  fails is noted in ``result.notes`` and never loses the numbers. ``result.files`` lists what was written. Every
  file is written atomically (temp file + rename, ``engine.atomic``): an interrupted run leaves the old file or
  the new one, never a torn one.
- ``md_table(rows)`` is the Markdown table of the run index.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from . import figures
from .charts import ChartSpec

__all__ = ["ExperimentResult", "load_result", "md_table", "num", "rate", "write_csv", "write_files"]


@dataclass
class ExperimentResult:
    """One experiment's rows, notes and files; ``chart`` says how to draw the rows (the registry's spec)."""

    name: str
    model: str
    rows: list[dict[str, Any]]
    files: list[str] = field(default_factory=list)
    title: str = ""
    paper: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    chart: ChartSpec | None = None

    def png_bytes(self) -> bytes:
        """The experiment's figure as PNG bytes (no file needed; for the app)."""
        buf = io.BytesIO()
        figures.render(self, buf)
        return buf.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.name,
            "model": self.model,
            "rows": self.rows,
            "files": self.files,
            "notes": self.notes,
        }


def load_result(path: str | Path, chart: ChartSpec | None = None) -> ExperimentResult:
    """Read a result written by :func:`write_files` (``<stem>.json``); ``files`` are resolved next to it.

    Raises ``ValueError`` with the path for a file that is not such a result."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a readable experiment result ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("rows"), list) or not isinstance(d.get("experiment"), str):
        raise ValueError(f"{p}: not an experiment result (needs 'experiment' and 'rows')")
    files = [str(p.parent / Path(str(f)).name) for f in d.get("files") or []]
    return ExperimentResult(
        name=d["experiment"],
        model=str(d.get("model", "")),
        rows=[r for r in d["rows"] if isinstance(r, dict)],
        files=[f for f in files if Path(f).is_file()],
        notes=[str(n) for n in d.get("notes") or []],
        chart=chart,
    )


def num(x: Any, nd: int = 6) -> float | None:
    """A finite number rounded to ``nd`` digits, else None."""
    if x is None:
        return None
    x = float(x)
    return None if not math.isfinite(x) else round(x, nd)


def rate(flags: Sequence[bool | None]) -> float | None:
    """The share of true flags (None for no flags). None flags (a generation the decoder stopped on an error, see
    ``engine.refusal.FailedGeneration``) are left out of the denominator, never counted as refusals."""
    known = [bool(f) for f in flags if f is not None]
    return num(np.mean(known)) if known else None


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    atomic.write_text(path, buf.getvalue())


def _write_json(result: ExperimentResult, path: Path) -> None:
    atomic.write_json(path, result.to_json())


def write_files(result: ExperimentResult, out_dir: Path, stem: str) -> list[str]:
    """Write ``<stem>.csv``, ``.json`` and ``.png`` under ``out_dir``; returns (and sets) ``result.files``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / f"{stem}.csv", out_dir / f"{stem}.json", out_dir / f"{stem}.png"]
    result.files = [str(p) for p in files]
    write_csv(result.rows, files[0])
    _write_json(result, files[1])
    try:
        atomic.write_bytes(files[2], result.png_bytes())
    except Exception as e:  # a figure must never lose the numbers
        result.notes.append(f"figure failed: {type(e).__name__}: {e}")
        result.files = result.files[:2]
        _write_json(result, files[1])
    return result.files


def md_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table lines of ``rows`` (columns of the first row, without the instruction text)."""
    keys = [k for k in rows[0] if k != "instruction"]
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k in keys) + " |")
    return out
