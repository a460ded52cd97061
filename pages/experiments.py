"""Experiments: the paper's experiments, one section each, run on the loaded model (``engine.experiments``).

Every section comes from the registry (``ex.EXPERIMENTS``: title, paper figure and claim); its chart is drawn by
``chart_for`` from the experiment's :class:`~engine.experiments.ChartSpec`, the same spec the engine's PNG writer
draws, with the palette's colours; this page knows no experiment by name.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from engine import experiments as ex
from engine import service as svc
from pages import _common as common

common.require_frame()

common.page_header(
    "Experiments",
    "the paper's evidence, re-run on the loaded model: refusal depends on the post-instruction template; belief "
    "curves and scatter separate the two positions; steering the harmfulness direction flips the model's yes/no "
    "judgement of harm (reply inversion) while the refusal direction does not; the Latent Guard beats refusal, also "
    "under jailbreak templates; category directions align with the harmfulness direction.",
    "each section's paper claim (what the paper reports for Llama2/Llama3/Qwen2), then the chart and table this "
    "model produces. Directions come from the train splits, every number from the test splits. Start with a small "
    "limit: each run generates or captures on the loaded model.",
)
ctx = common.require_model()

registry = ex.EXPERIMENTS
names = list(registry)
results: dict[str, Any] = st.session_state.setdefault("exp_results", {})


def _rule(axis: str, color: str) -> alt.Chart:
    """A dashed reference rule at 0 on ``axis``, one per panel (aggregated to one row, so it works inside facets)."""
    enc = {axis: alt.datum(0)}
    return alt.Chart().transform_aggregate(n="count()").mark_rule(color=color, strokeDash=[4, 4]).encode(**enc)


def _x_integer(rows: list[dict[str, Any]], field: str) -> bool:
    xs = [r.get(field) for r in rows if r.get(field) is not None]
    return bool(xs) and all(isinstance(v, int) and not isinstance(v, bool) for v in xs)


def chart_for(spec: ex.ChartSpec, rows: list[dict[str, Any]]) -> alt.Chart | alt.FacetChart | None:
    """The Altair chart of ``rows`` drawn as ``spec`` says (the same spec the engine's PNG writer draws)."""
    rows = spec.rows(rows)
    if not rows:
        return None
    df = pd.DataFrame(rows)
    tooltip = list(df.columns)
    names = spec.series(rows)
    colors = spec.colors(names)
    color: Any = alt.Undefined
    if spec.color:
        color = alt.Color(
            f"{spec.color}:N",
            scale=alt.Scale(domain=names, range=[colors[n] for n in names]),
            legend=alt.Legend(orient="bottom", title=None, symbolOpacity=1),  # opaque also where a band is drawn
        )
    y_scale = alt.Scale(domain=list(spec.y_domain)) if spec.y_domain else alt.Undefined
    y = alt.Y(f"{spec.y}:Q", title=spec.y_title or spec.y, scale=y_scale)
    if spec.kind == "bars":
        long = sum(len(str(v)) for v in df[spec.x].unique()) > 40
        x = alt.X(f"{spec.x}:N", title=spec.x_title or None, sort=None, axis=alt.Axis(labelAngle=-20 if long else 0))
        enc: dict[str, Any] = {"x": x, "y": y, "color": color, "tooltip": tooltip}
        if spec.color:
            enc["xOffset"] = alt.XOffset(f"{spec.color}:N", sort=names)
        mark = {} if spec.color else {"color": spec.mark_color}
        layers: list[alt.Chart] = [alt.Chart().mark_bar(**mark).encode(**enc)]
    else:
        axis = common.layer_axis(spec.x_title or spec.x) if _x_integer(rows, spec.x) else alt.Axis(title=spec.x_title)
        x = alt.X(f"{spec.x}:Q", axis=axis)
        if spec.kind == "scatter":
            layers = [alt.Chart().mark_circle(size=45, opacity=0.75).encode(x=x, y=y, color=color, tooltip=tooltip)]
        else:
            steered = alt.Chart().transform_filter(f"isValid(datum['{spec.x}'])")
            layers = []
            if spec.band:
                df = df.assign(_lo=df[spec.y] - df[spec.band].fillna(0), _hi=df[spec.y] + df[spec.band].fillna(0))
                layers.append(steered.mark_area(opacity=0.15).encode(x=x, y="_lo:Q", y2="_hi:Q", color=color))
            line = steered.mark_line(point=True)
            layers.append(line.encode(x=x, y=y, color=color, tooltip=tooltip))
            if spec.baseline:
                base = alt.Chart().transform_filter(f"!isValid(datum['{spec.x}'])")
                rule = base.mark_rule(strokeDash=[4, 4], color=spec.baseline_color)
                layers.append(rule.encode(y=f"{spec.y}:Q", tooltip=tooltip))
    layers += [_rule(a, spec.rule_color) for a in spec.zero]
    chart = alt.layer(*layers, data=df)
    if spec.facet:
        panels = spec.panels(rows)
        return chart.properties(height=260).facet(column=alt.Column(f"{spec.facet}:N", title=None, sort=panels))
    return chart.interactive() if spec.kind == "scatter" else chart


def _out_dir() -> Path:
    d = st.session_state.get("exp_out_dir")
    if not d or not Path(d).is_dir():
        d = tempfile.mkdtemp(prefix="steering-explorer-exp-")
        st.session_state["exp_out_dir"] = d
    return Path(d)


if not names:
    st.info("The experiments module lists no experiments yet.")

for name in names:
    info = registry[name]
    with st.container(border=True):
        st.subheader(info.title)
        st.caption(f"`{name}`" + (f" · paper {info.figure}" if info.figure else ""))
        if info.paper:
            st.markdown(f"**Paper:** {info.paper}")
        c1, c2 = st.columns([1, 4], vertical_alignment="bottom")
        limit = c1.number_input(
            "Limit (prompts per test set)",
            min_value=0,
            max_value=10_000,
            value=16,
            key=f"exp_limit_{name}",
            help="A seeded sample of at most this many prompts from every test set; 0 = the experiment's default.",
        )
        if c2.button("Run", key=f"exp_run_{name}", type="primary", icon=":material/play_arrow:"):
            with common.errors_shown(), st.status(f"Running {name} …", expanded=True) as status:
                res = ex.run_experiment(
                    name,
                    ctx.handle,
                    ctx.bundle,
                    limit=int(limit) or None,
                    out_dir=_out_dir(),
                    progress=common.progress_reporter(st, name),
                )
                status.update(label=f"{name}: done in {res.seconds:.1f} s", state="complete", expanded=False)
                results[name] = res
                common.log_event(
                    "Experiments",
                    name,
                    settings={"limit": int(limit) or None, "model": ctx.spec.name},
                    summary={"notes": list(res.notes)},
                    rows=list(res.rows),
                )
        res = results.get(name)
        if res is None:
            continue
        df = pd.DataFrame(res.rows)
        with common.errors_shown():
            chart = chart_for(info.chart, res.rows) if info.chart is not None else None
            if chart is not None:
                chart = chart.properties(title=f"{res.title} ({res.model})")
                if isinstance(chart, alt.FacetChart):
                    st.altair_chart(chart)
                else:
                    st.altair_chart(chart, width="stretch", height=340)
        tab_t, tab_f, tab_n = st.tabs(["Table", "Figure file", "Notes"])
        with tab_t:
            st.dataframe(df, hide_index=True)
            st.download_button("rows .csv", svc.csv_bytes(df), file_name=f"{name}.csv", key=f"exp_dl_{name}")
        with tab_f:
            pngs = [f for f in res.files if str(f).endswith(".png") and Path(f).is_file()]
            if pngs:
                st.image(pngs[0], width=640)
            else:
                st.caption("No figure file was written.")
        with tab_n:
            for note in res.notes:
                st.markdown(f"- {note}")
