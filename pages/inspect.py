"""Inspect: one instruction's tokens, per-layer beliefs, its place among the clusters, per-token projections."""

from __future__ import annotations

import html

import altair as alt
import pandas as pd
import streamlit as st

from engine import service as svc
from pages import _common as common

common.require_frame()

common.page_header(
    "Inspect",
    "two token positions carry two different beliefs. At t_inst the model's hidden state is closer to the harmful "
    "than to the harmless centroid when it judges the request harmful (s_l > 0); at t_post_inst it is closer to the "
    "refused than to the accepted centroid when it is about to refuse. Δ = mean over layers of s_l.",
    "prompts where the two disagree: Δ harmful > 0 with Δ refuse < 0 is a harmful request the model will answer "
    "(the accepted-harmful cluster, as in jailbreaks); the opposite is an over-refusal.",
)
ctx = common.require_model()
L = ctx.handle.n_layers

ROLE_STYLE = {
    "template": "background:#f1f3f5;color:#6c757d",
    "instruction": "background:#e7f1fb;color:#1b4f72",
    "t_inst": "background:#e67e22;color:white;font-weight:600",
    "t_post_inst": "background:#2e86c1;color:white;font-weight:600",
}


@st.cache_data(show_spinner=False, max_entries=64)
def _inspect(
    key: tuple[str, str, str], bkey: str, instruction: str, _handle: object, _bundle: object
) -> svc.Inspection:
    return svc.inspect_instruction(_handle, _bundle, instruction)  # type: ignore[arg-type]


@st.cache_data(show_spinner=False, max_entries=8)
def _ref_deltas(key: tuple[str, str, str], bkey: str, token: str, _ref: svc.Reference, _bundle: object) -> pd.DataFrame:
    return svc.reference_deltas(_ref, _bundle)  # type: ignore[arg-type]


def _token_html(tf: pd.DataFrame) -> str:
    chips = []
    for _, r in tf.iterrows():
        tok = str(r["token"]).replace(" ", "\u00b7").replace("\n", "\u23ce")
        title = f"#{r['index']} ({r['role']})"
        label = ""
        if r["role"] in ("t_inst", "t_post_inst"):
            label = f"<sub style='margin-left:3px;opacity:.9'>{r['role']}</sub>"
        chips.append(
            f"<span title='{html.escape(title)}' style='{ROLE_STYLE[r['role']]};padding:2px 4px;margin:2px;"
            f"border-radius:4px;display:inline-block;font-family:monospace;font-size:0.85rem'>"
            f"{html.escape(tok)}{label}</span>"
        )
    return "<div style='line-height:2.0'>" + "".join(chips) + "</div>"


i1, i2 = st.columns([4, 1], vertical_alignment="bottom")
instruction = i1.text_input("Instruction", "How do I make a bomb at home?", key="inspect_instruction")
normalize = i2.toggle(
    "Strip trailing punctuation",
    value=svc.normalizes_instructions(ctx.bundle),
    key="inspect_normalize",
    help="As the directions' prompts were (so t_inst is the last word, not '?'). Off: the text exactly as typed.",
)
try:
    text = svc.parse_instructions(instruction, max_n=1)[0]
except ValueError as exc:
    st.error(str(exc))
    st.stop()
if normalize:
    text = svc.normalize_like(ctx.bundle, [text])[0]

with common.errors_shown():
    insp = _inspect(ctx.key, ctx.bundle_key, text, ctx.handle, ctx.bundle)
    tf = svc.token_frame(insp)

    st.subheader("Prompt as the model sees it")
    st.html(_token_html(tf))
    st.caption(
        f"{insp.positions.n_tokens} tokens. t_inst = #{insp.positions.t_inst} (last token of the instruction), "
        f"t_post_inst = #{insp.positions.t_post_inst} (last token of the template, where the reply starts). "
        "Spaces are shown as ·, newlines as ⏎."
    )

    verdict = "harmful" if insp.delta_harmful >= 0 else "harmless"
    m1, m2, m3 = st.columns(3)
    m1.metric("Δ harmful (t_inst)", f"{insp.delta_harmful:+.4f}", help="Latent Guard score; harmful iff ≥ 0.")
    m2.metric("Δ refuse (t_post_inst)", f"{insp.delta_refuse:+.4f}", help="> 0: closer to the refused centroid.")
    m3.metric("Latent Guard verdict", verdict)

    left, right = st.columns(2)
    with left:
        st.subheader("Belief per layer")
        bf = svc.belief_frame(insp)
        lines = (
            alt.Chart(bf)
            .mark_line(point=True)
            .encode(
                x=alt.X("layer:Q", axis=common.layer_axis()),
                y=alt.Y("score:Q", title="s_l = cos(h, μ+) − cos(h, μ−)"),
                color=alt.Color(
                    "series:N",
                    legend=alt.Legend(orient="bottom", title=None, columns=1),
                    scale=alt.Scale(range=["#e67e22", "#2e86c1"]),
                ),
                tooltip=["series:N", "layer:Q", alt.Tooltip("score:Q", format="+.4f")],
            )
        )
        zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(strokeDash=[4, 4], color="gray").encode(y="y:Q")
        st.altair_chart((zero + lines).properties(height=320), width="stretch")
        st.caption(
            "Harmfulness belief uses the harmfulness centroids at t_inst; refusal belief the refusal centroids at t_post_inst."
        )

    with right:
        st.subheader("Among the reference clusters")
        ref, token = common.reference(ctx.spec, ctx.handle)
        rd = _ref_deltas(ctx.key, ctx.bundle_key, token, ref, ctx.bundle)
        me = pd.DataFrame(
            {
                "delta_harmful": [insp.delta_harmful],
                "delta_refuse": [insp.delta_refuse],
                "instruction": [text],
                "cluster": ["your prompts"],
            }
        )
        domain = list(svc.CLUSTER_COLORS)
        scale = alt.Scale(domain=domain, range=[svc.CLUSTER_COLORS[d] for d in domain])
        enc = {
            "x": alt.X("delta_harmful:Q", title="Δ harmful (t_inst)"),
            "y": alt.Y("delta_refuse:Q", title="Δ refuse (t_post_inst)"),
            "color": alt.Color("cluster:N", scale=scale, legend=alt.Legend(orient="bottom", title=None, columns=3)),
            "tooltip": [
                "instruction:N",
                "cluster:N",
                alt.Tooltip("delta_harmful:Q", format="+.3f"),
                alt.Tooltip("delta_refuse:Q", format="+.3f"),
            ],
        }
        pts = alt.Chart(rd).mark_circle(size=30, opacity=0.6).encode(**enc)
        star = alt.Chart(me).mark_point(shape="diamond", size=260, filled=True, stroke="white").encode(**enc)
        axes = alt.Chart(pd.DataFrame({"v": [0.0]}))
        rules = axes.mark_rule(color="gray", strokeDash=[4, 4]).encode(x="v:Q") + axes.mark_rule(
            color="gray", strokeDash=[4, 4]
        ).encode(y="v:Q")
        st.altair_chart((rules + pts + star).properties(height=320).interactive(), width="stretch")
        st.caption(f"{len(rd)} built-in prompts; the diamond is this instruction.")

    st.subheader("Per-token projection onto the directions")
    layer = st.slider("Layer", 0, L, svc.default_layer(L), key="inspect_layer")
    pf = svc.token_projection_frame(insp, ctx.bundle, layer)
    pf["label"] = pf["index"].astype(str) + " " + pf["token"].str.replace("\n", "⏎").str.replace(" ", "·")
    order = list(dict.fromkeys(pf.sort_values("index")["label"]))
    bars = (
        alt.Chart(pf)
        .mark_bar()
        .encode(
            x=alt.X(
                "label:N",
                sort=order,
                title="token",
                axis=alt.Axis(labelAngle=-60, labelOverlap=False, labelFontSize=10),
            ),
            xOffset="direction:N",
            y=alt.Y("projection:Q", title="h · v̂  (unit direction)"),
            color=alt.Color(
                "direction:N",
                scale=alt.Scale(domain=["harmfulness", "refusal"], range=["#e67e22", "#2e86c1"]),
                legend=alt.Legend(orient="bottom", title=None),
            ),
            tooltip=["index:Q", "token:N", "role:N", "direction:N", alt.Tooltip("projection:Q", format="+.3f")],
        )
        .properties(height=300)
    )
    st.altair_chart(bars, width="stretch")
    st.caption(
        f"Dot product of each token's residual stream at row {layer} with the unit harmfulness and refusal directions "
        "of that row. Look at where the harmfulness projection rises inside the instruction and where the refusal "
        "projection appears in the template tokens."
    )
    if st.button("Add to the report", key="inspect_log"):
        common.log_event(
            "Inspect",
            text,
            settings={"layer": layer, "model": ctx.spec.name},
            summary={
                "delta_harmful": insp.delta_harmful,
                "delta_refuse": insp.delta_refuse,
                "guard verdict": verdict,
                "t_inst": insp.positions.t_inst,
                "t_post_inst": insp.positions.t_post_inst,
            },
            chart=bf,
        )
        st.toast("Added to the report")
