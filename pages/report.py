"""Report: export this session (settings, instructions, outputs, refusal marks, guard verdicts, chart data)."""

from __future__ import annotations

import datetime as _dt

import pandas as pd
import streamlit as st

from engine import service as svc
from pages import _common as common
from pages import _state as state
from pages._frame import require_frame

require_frame()

common.page_header(
    "Report",
    "every result in this app is a measurement on one model with one set of directions; a report keeps the model, "
    "the directions' provenance and the exact settings next to the outputs so that a run can be repeated.",
    "the events below, one per run (Steer, sweeps, guard runs, maps and evaluations you added); download them as "
    "Markdown for a notebook or as JSON with every row.",
    claim_label="Why",
)

log = st.session_state.get(state.LOG, [])
spec = st.session_state.get(state.SPEC)
settings: dict[str, object] = {"model": "none chosen"}
if spec is not None:
    settings = {"model": spec.name, "device": spec.device, "dtype": spec.dtype}
if spec is not None and not st.session_state.get(state.MODEL_ERROR):
    try:
        handle = common.get_handle(spec)
        bundle, source = common.active_bundle(spec, handle)
        settings.update(
            {
                "model id": handle.model_id,
                "blocks": handle.n_layers,
                "width": handle.hidden_size,
                "weights hash": handle.weights_hash,
                "directions": source,
                "directions created": bundle.provenance.get("created", "?"),
                "directions hash": svc.bundle_key(bundle),
            }
        )
    except svc.USER_ERRORS as exc:
        settings["directions"] = f"unavailable ({exc})"

stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
md = svc.report_markdown(log, settings)
js = svc.report_json(log, settings)
bar = st.container(horizontal=True)
bar.download_button(
    "Markdown",
    md,
    file_name=f"steering-explorer-{stamp}.md",
    mime="text/markdown",
    icon=":material/download:",
    key="rep_md",
)
bar.download_button(
    "JSON",
    js,
    file_name=f"steering-explorer-{stamp}.json",
    mime="application/json",
    icon=":material/download:",
    key="rep_json",
)
if log and bar.button("Clear the log", key="rep_clear", type="tertiary", icon=":material/delete:"):
    st.session_state[state.LOG] = []
    st.rerun()

st.subheader(f"{len(log)} event(s)")
if not log:
    st.info("Nothing logged yet: generate on Steer, classify on Latent Guard, or use an 'Add to the report' button.")
for i, ev in enumerate(reversed(log), 1):
    with st.expander(f"{len(log) - i + 1}. {ev['page']}: {ev['title']}  ·  {ev['time']}", expanded=i == 1):
        if ev.get("settings"):
            st.caption(" · ".join(f"{k}: {v}" for k, v in ev["settings"].items()))
        if ev.get("summary"):
            st.json(svc.to_jsonable(ev["summary"]), expanded=False)
        rows = ev.get("rows")
        if rows is not None and len(rows):
            st.dataframe(rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows), hide_index=True)
with st.expander("Markdown source"):
    st.code(md, language="markdown", wrap_lines=True)
