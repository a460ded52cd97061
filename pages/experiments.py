"""Experiments: the paper's experiments, one section each, run on the loaded model (``engine.experiments``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from engine import experiments as ex
from engine import service as svc
from pages import _common as common

common.require_frame()

CLUSTER_SCALE = alt.Scale(
    domain=["refused_harmful", "accepted_harmful", "refused_harmless", "accepted_harmless"],
    range=["#c0392b", "#e67e22", "#8e44ad", "#2e86c1"],
)

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


def _layer_x() -> alt.X:
    return alt.X("layer:Q", axis=common.layer_axis())


def _lines_with_baseline(df: pd.DataFrame, y: str, color: str, title: str, facet: str | None = None) -> alt.Chart:
    """Steered rows as lines per layer; the unsteered baseline (layer None) as a dashed rule."""
    steered_names = sorted(df.loc[df["layer"].notna(), color].astype(str).unique())
    lines = (
        alt.Chart()
        .transform_filter("datum.layer != null")
        .mark_line(point=True)
        .encode(
            x=_layer_x(),
            y=alt.Y(f"{y}:Q", title=title, scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                f"{color}:N",
                scale=common.direction_scale(steered_names),
                legend=alt.Legend(orient="bottom", title=None),
            ),
            tooltip=list(df.columns),
        )
    )
    rule = (
        alt.Chart()
        .transform_filter("datum.layer == null")
        .mark_rule(strokeDash=[4, 4], color="gray")
        .encode(y=f"{y}:Q", tooltip=list(df.columns))
    )
    if facet:
        return alt.layer(lines, rule, data=df).properties(height=260).facet(column=alt.Column(f"{facet}:N", title=None))
    return alt.layer(lines, rule, data=df)


def _scatter(df: pd.DataFrame, color: str, scale: alt.Scale | None = None) -> alt.Chart:
    pts = (
        alt.Chart(df)
        .mark_circle(size=45, opacity=0.75)
        .encode(
            x=alt.X("delta_harmful:Q", title="Δ harmful (t_inst)"),
            y=alt.Y("delta_refuse:Q", title="Δ refuse (t_post_inst)"),
            color=alt.Color(f"{color}:N", scale=scale or alt.Undefined, legend=alt.Legend(orient="bottom", title=None)),
            tooltip=list(df.columns),
        )
    )
    zero = alt.Chart(pd.DataFrame({"v": [0.0]}))
    return (
        zero.mark_rule(color="gray", strokeDash=[4, 4]).encode(x="v:Q")
        + zero.mark_rule(color="gray", strokeDash=[4, 4]).encode(y="v:Q")
        + pts
    ).interactive()


def _chart_refusal_template(df: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(df)
        .mark_bar(color="#c0392b")
        .encode(
            x=alt.X("template:N", title=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("refusal_rate:Q", title="refusal rate (harmful test prompts)", scale=alt.Scale(domain=[0, 1])),
            tooltip=list(df.columns),
        )
    )


def _chart_belief_curves(df: pd.DataFrame) -> alt.Chart:
    band = (
        alt.Chart()
        .mark_area(opacity=0.15)
        .encode(x=_layer_x(), y="lo:Q", y2="hi:Q", color=alt.Color("group:N", scale=CLUSTER_SCALE))
    )
    line = (
        alt.Chart()
        .mark_line(point=True)
        .encode(
            x=_layer_x(),
            y=alt.Y("mean:Q", title="mean s_l ± std"),
            color=alt.Color("group:N", scale=CLUSTER_SCALE, legend=alt.Legend(orient="bottom", title=None)),
            tooltip=list(df.columns),
        )
    )
    d = df.assign(lo=df["mean"] - df["std"].fillna(0), hi=df["mean"] + df["std"].fillna(0))
    return alt.layer(band, line, data=d).properties(height=260).facet(column=alt.Column("position:N", title=None))


def _chart_latent_guard(df: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("set:N", title=None, axis=alt.Axis(labelAngle=-20)),
            xOffset="guard:N",
            y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("guard:N", legend=alt.Legend(orient="bottom", title=None)),
            tooltip=list(df.columns),
        )
    )


def _chart_category(df: pd.DataFrame) -> alt.Chart:
    general = df[df["a"] == "general"]
    if general.empty:
        general = df
    return (
        alt.Chart(general)
        .mark_line(point=True)
        .encode(
            x=_layer_x(),
            y=alt.Y("cosine:Q", title="cosine with the general harmfulness direction", scale=alt.Scale(domain=[-1, 1])),
            color=alt.Color("b:N", title="category", legend=alt.Legend(orient="right")),
            tooltip=list(general.columns),
        )
    )


CHARTS: dict[str, Callable[[pd.DataFrame], alt.Chart]] = {
    "refusal-template": _chart_refusal_template,
    "belief-curves": _chart_belief_curves,
    "belief-scatter": lambda df: _scatter(df, "cluster", CLUSTER_SCALE),
    "steer-refusal": lambda df: _lines_with_baseline(df, "refusal_rate", "direction", "refusal rate (harmless test)"),
    "reply-inversion": lambda df: _lines_with_baseline(
        df, "no_rate", "direction", "share answering 'No'", facet="prompts"
    ),
    "latent-guard": _chart_latent_guard,
    "jailbreaks": lambda df: _scatter(df, "kind"),
    "category-directions": _chart_category,
}


def _generic(df: pd.DataFrame) -> alt.Chart | None:
    nums = [c for c in df.columns[1:] if pd.api.types.is_numeric_dtype(df[c])]
    if df.empty or not nums:
        return None
    x = df.columns[0]
    long = df.melt(id_vars=[x], value_vars=nums, var_name="measure", value_name="value")
    return alt.Chart(long).mark_bar().encode(x=f"{x}:N", xOffset="measure:N", y="value:Q", color="measure:N")


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
        st.subheader(f"{getattr(info, 'title', name)}")
        figure = getattr(info, "figure", "")
        st.caption(f"`{name}`" + (f" · paper {figure}" if figure else ""))
        paper = getattr(info, "paper", "")
        if paper:
            st.markdown(f"**Paper:** {paper}")
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
                status.update(
                    label=f"{name}: done in {getattr(res, 'seconds', 0):.1f} s", state="complete", expanded=False
                )
                results[name] = res
                common.log_event(
                    "Experiments",
                    name,
                    settings={"limit": int(limit) or None, "model": ctx.spec.name},
                    summary={"notes": list(getattr(res, "notes", []) or [])},
                    rows=list(res.rows),
                )
        res = results.get(name)
        if res is None:
            continue
        df = pd.DataFrame(res.rows)
        with common.errors_shown():
            make = CHARTS.get(name, _generic)
            chart = make(df) if not df.empty else None
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
            pngs = [f for f in getattr(res, "files", []) or [] if str(f).endswith(".png") and Path(f).is_file()]
            if pngs:
                st.image(pngs[0], width=640)
            else:
                st.caption("No figure file was written.")
        with tab_n:
            for note in getattr(res, "notes", []) or []:
                st.markdown(f"- {note}")
