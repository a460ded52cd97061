"""Experiments: the paper's experiments, one section each, run on the loaded model (``engine.experiments``)."""

from __future__ import annotations

import importlib
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from app_pages import _common as common
from engine import service as svc

NAMES = [
    "refusal-template",
    "belief-curves",
    "belief-scatter",
    "steer-refusal",
    "reply-inversion",
    "latent-guard",
    "jailbreaks",
    "category-directions",
]

common.page_header(
    "Experiments",
    "the paper's evidence, re-run on the loaded model: refusal depends on the post-instruction template; belief "
    "curves and scatter separate the two positions; steering the harmfulness direction flips the model's yes/no "
    "judgement of harm (reply inversion) while the refusal direction does not; the Latent Guard beats refusal, also "
    "under jailbreak templates; category directions align with the harmfulness direction.",
    "each section's note on what the paper reports, then the table and chart this model produces. Use a small "
    "limit first: each run generates or captures on the loaded model.",
)
ctx = common.require_model()

try:
    ex = importlib.import_module("engine.experiments")
except ImportError as exc:  # the module is written by a colleague; the page must not crash before it lands
    st.info(f"The experiments module is not available yet ({exc}). The other pages work without it.")
    st.stop()

registry: dict[str, Any] = getattr(ex, "EXPERIMENTS", {}) or {}
names = [n for n in NAMES if n in registry] + [n for n in registry if n not in NAMES]
results: dict[str, Any] = st.session_state.setdefault("exp_results", {})


def _info(name: str) -> tuple[str, str]:
    info = registry.get(name)
    title = getattr(info, "title", None) or name
    desc = (
        getattr(info, "description", None) or getattr(info, "summary", None) or (info if isinstance(info, str) else "")
    )
    return str(title), str(desc or "")


def _chart(df: pd.DataFrame) -> alt.Chart | None:
    """A generic chart for an experiment's table: first column on x, the numeric columns as lines or bars."""
    if df is None or df.empty or len(df.columns) < 2:
        return None
    x = df.columns[0]
    color = next(
        (c for c in ("series", "group", "direction", "set", "cluster", "condition") if c in df.columns and c != x), None
    )
    if "y" in df.columns:
        ys = ["y"]
    else:
        ys = [c for c in df.columns[1:] if c != color and pd.api.types.is_numeric_dtype(df[c])]
    if not ys:
        return None
    long = df.melt(id_vars=[c for c in (x, color) if c], value_vars=ys, var_name="measure", value_name="value")
    col = color or "measure"
    if color and len(ys) > 1:
        long["series"] = long[color].astype(str) + " · " + long["measure"]
        col = "series"
    numeric_x = pd.api.types.is_numeric_dtype(df[x])
    mark = alt.Chart(long).mark_line(point=True) if numeric_x else alt.Chart(long).mark_bar()
    enc: dict[str, Any] = {
        "x": alt.X(f"{x}:{'Q' if numeric_x else 'N'}", title=str(x)),
        "y": alt.Y("value:Q", title=ys[0] if len(ys) == 1 else "value"),
        "color": alt.Color(f"{col}:N", legend=alt.Legend(orient="bottom", title=None)),
        "tooltip": list(long.columns),
    }
    if not numeric_x:
        enc["xOffset"] = f"{col}:N"
    return mark.encode(**enc).properties(height=300)


if not names:
    st.info("The experiments module lists no experiments yet.")

for name in names:
    title, desc = _info(name)
    with st.container(border=True):
        st.subheader(title)
        if desc:
            st.caption(desc)
        c1, c2 = st.columns([1, 4])
        limit = c1.number_input(
            "Limit (prompts per set)",
            min_value=0,
            max_value=10_000,
            value=16,
            key=f"exp_limit_{name}",
            help="0 = every prompt (slow on CPU)",
        )
        if c2.button("Run", key=f"exp_run_{name}", type="primary", icon=":material/play_arrow:"):
            with common.errors_shown(), st.status(f"Running {name} …", expanded=True) as status:
                res = ex.run_experiment(
                    name, ctx.handle, ctx.bundle, limit=int(limit) or None, progress=common.progress_reporter(st, name)
                )
                status.update(label=f"{name}: done", state="complete", expanded=False)
                results[name] = res
                common.log_event(
                    "Experiments",
                    name,
                    settings={"limit": int(limit) or None, "model": ctx.spec.name},
                    rows=list(getattr(res, "rows", []) or []),
                    chart=getattr(res, "chart", None),
                )
        res = results.get(name)
        if res is not None:
            note = getattr(res, "paper_note", "")
            if note:
                st.info(note)
            rows = getattr(res, "rows", None) or []
            chart_df = getattr(res, "chart", None)
            if isinstance(chart_df, pd.DataFrame):
                ch = _chart(chart_df)
                if ch is not None:
                    st.altair_chart(ch.properties(title=str(getattr(res, "title", "") or name)), width="stretch")
            if rows:
                st.dataframe(pd.DataFrame(rows), hide_index=True)
                st.download_button("rows .csv", svc.csv_bytes(rows), file_name=f"{name}.csv", key=f"exp_dl_{name}")
            files = getattr(res, "files", None) or []
            if files:
                st.caption("Files: " + ", ".join(str(f) for f in files))
