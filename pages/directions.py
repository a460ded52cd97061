"""Directions: norms, cosines across layers, provenance, download / upload, recompute from prompt files."""

from __future__ import annotations

import json

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
    "Directions",
    "the harmfulness direction (refused harmful − accepted harmless at t_inst) and the refusal direction (the same "
    "contrast at t_post_inst) are different directions: their cosine stays well below 1 across layers, while "
    "category directions (per harm type) are close to the harmfulness direction.",
    "the harmfulness-vs-refusal cosine per layer, and the block structure of the cosine matrix at the middle layer.",
)
ctx = common.require_model()
bundle = ctx.bundle
L = ctx.handle.n_layers
prov = bundle.provenance
names = svc.steerable_directions(bundle)

# ------------------------------------------------------------------------------------------------ provenance card
with st.container(border=True):
    st.markdown(f"**Active directions:** {ctx.source}")
    summ = prov.get("summary") or {}
    data = prov.get("data") or {}
    c = st.columns(4)
    c[0].metric("Model", str(prov.get("model_id", "?"))[:28])
    c[1].metric("Rows (L+1) × width", f"{bundle.n_rows} × {bundle.hidden_size}")
    c[2].metric("Prompts", summ.get("n_prompts", "–"))
    c[3].metric("Directions", len(names))
    lines = []
    if prov.get("created"):
        lines.append(f"created {prov['created']}")
    if prov.get("engine_version"):
        lines.append(f"engine {prov['engine_version']}")
    if data.get("labeller"):
        lines.append(f"labels: {data['labeller']} ({data.get('label_max_new_tokens', '?')} tokens, greedy)")
    if prov.get("positions"):
        lines.append("positions: " + ", ".join(f"{k} at {v}" for k, v in prov["positions"].items()))
    if prov.get("coefficients_note"):
        lines.append(str(prov["coefficients_note"]))
    st.caption(" · ".join(lines))
    if summ.get("clusters"):
        st.caption("Clusters: " + svc.cluster_counts_text(summ["clusters"]))
    for w in prov.get("cluster_fallback") or []:
        st.warning(w)
    with st.expander("Full provenance (JSON)"):
        st.json(json.loads(svc.provenance_json(bundle)), expanded=1)
    d1, d2, d3 = st.columns([1, 1, 2])
    stem = f"directions-{ctx.spec.name.replace('/', '_')}"
    with common.errors_shown():
        d1.download_button(
            "Download .safetensors",
            svc.bundle_bytes(bundle),
            file_name=f"{stem}.safetensors",
            mime="application/octet-stream",
            icon=":material/download:",
            key="dir_dl",
        )
        d2.download_button(
            "Provenance .json",
            svc.provenance_json(bundle),
            file_name=f"{stem}.json",
            mime="application/json",
            key="dir_dl_json",
        )
    if st.session_state.get(state.OVERRIDE) and d3.button("Back to the model's default directions", key="dir_reset"):
        common.clear_override()
        st.rerun()

# ------------------------------------------------------------------------------------------------ charts
left, right = st.columns(2)
with left:
    st.subheader("Norm per layer")
    chosen = st.multiselect(
        "Directions", names, default=[n for n in ("harmfulness", "refusal") if n in names], key="dir_norm_names"
    )
    if chosen:
        nf = svc.norms_frame(bundle, chosen)
        st.altair_chart(
            charts.layer_lines(
                nf,
                "norm",
                "‖v_l‖",
                series="direction",
                scale=charts.direction_scale(chosen),
                tooltip=["direction:N", "layer:Q", alt.Tooltip("norm:Q", format=".3f")],
            ).properties(height=300),
            width="stretch",
        )
with right:
    # ---- cos(harmfulness, refusal) per layer with its bootstrap 95% interval (issue 13)
    st.subheader("Harmfulness vs refusal, per layer")
    if "harmfulness" in names and "refusal" in names:
        ci = svc.stored_cosine_interval(bundle)
        ci_source = "stored with these directions at precompute time"
        held = st.session_state.get(state.DIR_COSINE_CI)
        if ci is None and held and held.get("key") == ctx.bundle_key:
            ci, ci_source = held["ci"], "computed on demand from the built-in train prompts"
        if ci is not None:
            st.altair_chart(
                charts.cosine_interval_chart(svc.cosine_interval_frame(ci)).properties(height=300), width="stretch"
            )
            g = ci.groups
            st.caption(
                f"Line: cos(harmfulness_l, refusal_l) of these directions. Band: bootstrap {ci.level:.0%} interval "
                f"({ci.n_boot} resamples of the prompts behind the centroids, drawn within each group: harmfulness "
                f"{g.get('a_pos')} vs {g.get('a_neg')} prompts at t_inst, refusal {g.get('b_pos')} vs {g.get('b_neg')} "
                f"at t_post_inst; both recomputed from the same draw), {ci_source}. It shows how much the cosine "
                "depends on which prompts were sampled, not the spread across models or templates. Resampled "
                "cosines run low (resampling noise is never aligned between the two directions), so the line sits "
                "near the top of its band."
            )
        else:
            cf = svc.cosine_across_layers(bundle, "harmfulness", "refusal")
            st.altair_chart(
                charts.layer_lines(
                    cf,
                    "cosine",
                    "cos(harmfulness, refusal)",
                    color=charts.role("cosine"),
                    y_domain=[-1, 1],
                    tooltip=["layer:Q", alt.Tooltip("cosine:Q", format="+.3f")],
                ).properties(height=300),
                width="stretch",
            )
            st.caption(
                "No bootstrap interval is stored with these directions (they were made before precompute stored "
                "it). Compute it from the built-in train prompts (the prompts the shipped directions come from; one "
                "capture, shared with the Clusters page); it is refused if those prompts do not reproduce this line."
            )
            if st.button("Add the 95% interval", key="dir_ci_go", icon=":material/query_stats:"):
                with common.errors_shown():
                    ref, _ = common.reference(ctx.spec, ctx.handle)
                    got = svc.cosine_interval_on_demand(bundle, ref.records, ref.acts)
                    st.session_state[state.DIR_COSINE_CI] = {"key": ctx.bundle_key, "ci": got}
                    st.rerun()
    else:
        st.info("This bundle lacks a harmfulness or a refusal direction.")

st.subheader("Cosine matrix at one layer")
layer = st.slider("Layer", 0, L, svc.default_layer(L), key="dir_layer")
cm_names = [n for n in names if not n.startswith("form:")] + [n for n in names if n.startswith("form:")]
with common.errors_shown():
    cm = svc.cosine_matrix(bundle, cm_names, layer)
    st.altair_chart(charts.cosine_heatmap(cm, cm_names, layer), width="stretch")
    st.caption(
        "form:punctuation / form:question are confound checks: directions for a trailing '.' or '?' on harmless prompts."
    )

# ------------------------------------------------------------------------------------------------ upload / recompute
st.subheader("Use other directions")
u1, u2 = st.columns(2)
with u1, st.container(border=True):
    st.markdown("**Upload a directions file** (.safetensors saved by this app or `python -m engine precompute`)")
    up = st.file_uploader("Directions file", type=["safetensors"], key="dir_upload", label_visibility="collapsed")
    if up is not None:
        with common.errors_shown():
            b = svc.read_bundle_upload(up.getvalue(), ctx.handle, source=up.name)
            st.success(
                f"{up.name}: {len(svc.steerable_directions(b))} directions made for "
                f"{b.provenance.get('model_id', 'an unknown model')}; they fit this model."
            )
            if st.button("Use these directions", key="dir_use"):
                common.set_override(ctx.spec, b, f"uploaded file {up.name}")
                common.log_event("Directions", f"uploaded {up.name}", summary={"directions": len(b.directions)})
                st.rerun()
with u2, st.container(border=True):
    st.markdown("**Recompute from prompt files** (CSV / JSONL / JSON / TXT; labels come from greedy replies)")
    harm = st.file_uploader(
        "Harmful prompts", type=["csv", "jsonl", "json", "txt"], accept_multiple_files=True, key="dir_harmful"
    )
    harmless = st.file_uploader(
        "Harmless prompts", type=["csv", "jsonl", "json", "txt"], accept_multiple_files=True, key="dir_harmless"
    )
    col = st.text_input("Text column (blank: detect)", "", key="dir_column")
    st.caption(
        f"At most {svc.max_rows():,} prompts per recompute; a run stops after {svc.max_run_s():g} s (the app's "
        "limits; replies made so far stay cached, so running it again continues)."
    )
    if st.button("Recompute", type="primary", key="dir_recompute"):
        with common.errors_shown():
            hs = [svc.read_prompt_upload(f.name, f.getvalue(), column=col or None, kind="harmful") for f in harm or []]
            ls = [
                svc.read_prompt_upload(f.name, f.getvalue(), column=col or None, kind="harmless")
                for f in harmless or []
            ]
            for ps in hs + ls:
                if ps.skipped:
                    st.warning(
                        f"{ps.name}: skipped {len(ps.skipped)} malformed row(s), e.g. row {ps.skipped[0].row}: {ps.skipped[0].reason}"
                    )
            with st.status("Recomputing directions …", expanded=True) as status:
                result = svc.recompute_directions(
                    ctx.handle, hs, ls, progress=common.progress_reporter(st, "Recomputing")
                )
                status.update(label="Recomputed", state="complete", expanded=False)
            src = "recomputed from " + ", ".join(p.name for p in hs + ls)
            common.set_override(ctx.spec, result.bundle, src)
            st.session_state[state.DIR_RECOMPUTE_SUMMARY] = result.summary
            common.log_event(
                "Directions", src, summary={k: result.summary[k] for k in ("clusters", "refusal_rate", "n_prompts")}
            )
            st.rerun()
    if st.session_state.get(state.DIR_RECOMPUTE_SUMMARY):
        s = st.session_state[state.DIR_RECOMPUTE_SUMMARY]
        st.caption(
            f"Last recompute: {s['n_prompts']} prompts; refusal rate harmful {s['refusal_rate']['harmful']:.0%}, "
            f"harmless {s['refusal_rate']['harmless']:.0%}; clusters {s['clusters']}"
        )
        if s.get("cluster_fallback"):
            st.warning("; ".join(s["cluster_fallback"]))

# ------------------------------------------------------------------------------------------------ llama.cpp export
st.subheader("Use a direction in llama.cpp")
with st.container(border=True):
    st.markdown(
        "Download a direction as a **GGUF control vector** for llama.cpp (`--control-vector FILE`, also read by "
        "repeng). Rows are this app's layers (row l = input of block l); llama.cpp numbers the same point "
        "`direction.(l-1)` (the output of block l-1) and adds it at **every token**, like *prompt + generated* on "
        "the Steer page. The coefficient is baked into the file."
    )
    cv_rows = svc.control_vector_rows(ctx.handle)
    x1, x2, x3 = st.columns([2, 1, 1])
    cv_name = x1.selectbox("Direction", names, key="dir_cv_name")
    cv_coeff = x2.number_input("Coefficient", value=1.0, step=0.5, format="%g", key="dir_cv_coeff")
    cv_reverse = x3.toggle("Reverse (subtract)", value=False, key="dir_cv_reverse")
    mid = min(max(svc.default_layer(L), cv_rows[0]), cv_rows[-1])
    cv_lo, cv_hi = st.slider(
        "Rows (layers) to include", cv_rows[0], cv_rows[-1], (mid, mid), key="dir_cv_rows",
        help="Rows 0 and 1 have no llama.cpp slot (llama.cpp never uses direction.0).",
    )  # fmt: skip
    with common.errors_shown():
        cv = svc.control_vector_download(
            bundle, ctx.handle, cv_name, -cv_coeff if cv_reverse else cv_coeff, range(cv_lo, cv_hi + 1)
        )
        st.caption(
            f"rows {cv.rows[0]}–{cv.rows[-1]} → llama.cpp direction.{cv.llamacpp_layers[0]}–"
            f"direction.{cv.llamacpp_layers[-1]} · {len(cv.data) / 1024:.0f} KiB"
        )
        st.code(cv.command.replace("model.gguf", "YOUR-MODEL.gguf"), language="bash")
        st.download_button(
            "Download control vector (.gguf)",
            cv.data,
            file_name=cv.file_name,
            mime="application/octet-stream",
            icon=":material/download:",
            key="dir_cv_dl",
        )

with st.expander("Per-layer table"):
    st.dataframe(
        pd.DataFrame(svc.norms_frame(bundle, names).pivot(index="layer", columns="direction", values="norm")),
        width="stretch",
    )
