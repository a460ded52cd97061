"""Experiments: the paper's experiments, one section each, on the loaded model.

Every section comes from the registry (``svc.experiment_infos()``: title, paper figure and claim); its chart is
drawn by ``_charts.experiment_chart`` from the experiment's chart spec, the same spec the engine's PNG writer draws,
with the palette's colours; this page knows no experiment by name. Before anything runs, each section shows the
committed reproduction of the loaded model (``docs/reproduction/<model>/builtin``) when there is one; Run recomputes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from engine import service as svc
from pages import _charts as charts
from pages import _common as common
from pages import _state as state
from pages._frame import require_frame

require_frame()

common.page_header(
    "Experiments",
    "the paper's evidence, re-run on the loaded model: refusal depends on the post-instruction template; belief "
    "curves and scatter separate the two positions; steering the harmfulness direction flips the model's yes/no "
    "judgement of harm (reply inversion) while the refusal direction does not; the Latent Guard beats refusal, also "
    "under jailbreak templates; category directions align with the harmfulness direction.",
    "each section's paper claim (what the paper reports for Llama2/Llama3/Qwen2), then the chart and table this "
    "model produces: first the committed reproduction (built-in sets, default sizes) when the loaded model has one, "
    "then your own run. Directions come from the train splits, every number from the test splits. Start with a "
    "small limit: each run generates or captures on the loaded model.",
)
ctx = common.require_model()

registry = svc.experiment_infos()
names = list(registry)
results: dict[str, Any] = st.session_state.setdefault(state.EXP_RESULTS, {})
stored = svc.stored_results(ctx.spec.name)
if stored.results:
    st.caption(
        f"Stored results: the committed reproduction of **{ctx.spec.name}** on the built-in sets "
        f"(`{stored.folder.relative_to(stored.folder.parents[2])}`, see REPRODUCTION.md). Run replaces a section's "
        "result with your own run."
    )
else:
    st.caption(f"No committed reproduction for **{ctx.spec.name}**: run the experiments below.")
for problem in stored.problems:
    st.warning(f"A stored result could not be read: {problem}")


def _out_dir() -> Path:
    d = st.session_state.get(state.EXP_OUT_DIR)
    if not d or not Path(d).is_dir():
        d = tempfile.mkdtemp(prefix="steering-explorer-exp-")
        st.session_state[state.EXP_OUT_DIR] = d
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
                res = svc.run_one(
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
        origin = "your run"
        if res is None:
            res = stored.results.get(name)
            origin = "stored reproduction"
        if res is None:
            continue
        st.caption(f"Showing: **{origin}**" + (" (built-in sets, default sizes)" if origin != "your run" else ""))
        df = pd.DataFrame(res.rows)
        with common.errors_shown():
            chart = charts.experiment_chart(info.chart, res.rows) if info.chart is not None else None
            if chart is not None:
                chart = chart.properties(title=f"{info.title} ({res.model}, {origin})")
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
