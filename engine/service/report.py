"""The Report page and download buttons: the session log as JSON or Markdown, rows as CSV.

Contract:
- A log is a list of events ``{"page", "title", "time", "settings", "summary", "rows", "chart"}`` (rows and chart
  may be DataFrames or lists of dicts). ``to_jsonable`` turns any of that into JSON values (NaN and inf become
  None); ``report_json`` writes everything; ``report_markdown`` writes a readable report whose tables are truncated
  (the JSON export has every row); ``csv_bytes`` writes rows as CSV for a download button.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["csv_bytes", "report_json", "report_markdown", "to_jsonable"]


def to_jsonable(x: Any) -> Any:
    """``x`` with DataFrames, numpy values and non-finite floats turned into JSON values (recursively)."""
    if isinstance(x, pd.DataFrame):
        return x.replace({np.nan: None}).to_dict(orient="records")
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating,)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    return x


def report_json(log: Sequence[dict[str, Any]], settings: dict[str, Any]) -> str:
    """The session as JSON: settings (model, directions) and every logged event with its data."""
    doc = {
        "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "tool": "steering-explorer",
        "settings": to_jsonable(settings),
        "events": to_jsonable(list(log)),
    }
    return json.dumps(doc, indent=1, ensure_ascii=False, default=str)


def _md_escape(text: Any) -> str:
    s = str(text).replace("\r", "").replace("|", "\\|").replace("\n", " ⏎ ")
    return s if len(s) <= 400 else s[:400] + " …"


def _md_table(rows: Sequence[dict[str, Any]], max_rows: int = 50) -> str:
    rows = list(rows)
    if not rows:
        return "_(no rows)_\n"
    cols = list(rows[0].keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:max_rows]:
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                v = f"{v:.4g}" if math.isfinite(v) else "–"
            cells.append(_md_escape(v))
        out.append("| " + " | ".join(cells) + " |")
    if len(rows) > max_rows:
        out.append(f"\n_… {len(rows) - max_rows} more rows in the JSON export_")
    return "\n".join(out) + "\n"


def report_markdown(log: Sequence[dict[str, Any]], settings: dict[str, Any]) -> str:
    """A readable Markdown report of the session (tables are truncated; the JSON export has everything)."""
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    lines = ["# steering-explorer session report", "", f"Generated {now}.", "", "## Settings", ""]
    for k, v in settings.items():
        lines.append(f"- **{k}**: {_md_escape(v)}")
    lines.append("")
    if not log:
        lines += ["_Nothing was run in this session yet._", ""]
    for i, ev in enumerate(log, 1):
        lines += [f"## {i}. {ev.get('page', '?')}: {ev.get('title', ev.get('kind', ''))}", ""]
        if ev.get("time"):
            lines.append(f"_{ev['time']}_")
            lines.append("")
        for k, v in (ev.get("settings") or {}).items():
            lines.append(f"- {k}: `{_md_escape(v)}`")
        if ev.get("settings"):
            lines.append("")
        if ev.get("summary"):
            for k, v in ev["summary"].items():
                lines.append(f"- **{k}**: {_md_escape(to_jsonable(v))}")
            lines.append("")
        rows = to_jsonable(ev.get("rows"))
        if rows:
            lines.append(_md_table(rows))
        chart = to_jsonable(ev.get("chart"))
        if chart:
            lines.append(f"<details><summary>chart data ({len(chart)} rows)</summary>\n")
            lines.append(_md_table(chart, max_rows=30))
            lines.append("</details>\n")
    return "\n".join(lines)


def csv_bytes(rows: pd.DataFrame | Sequence[dict[str, Any]]) -> bytes:
    """Rows as CSV (for download buttons)."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    buf = io.StringIO()
    df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    return buf.getvalue().encode()
