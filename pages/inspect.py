"""Inspect: one instruction's tokens, per-layer beliefs, its place among the clusters, per-token projections."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import service as svc
from pages import _charts as charts
from pages import _common as common
from pages._frame import require_frame

require_frame()

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


@st.cache_data(show_spinner=False, max_entries=64)
def _inspect(
    key: tuple[str, str, str], bkey: str, instruction: str, _handle: object, _bundle: object
) -> svc.Inspection:
    return svc.inspect_instruction(_handle, _bundle, instruction)  # type: ignore[arg-type]


@st.cache_data(show_spinner=False, max_entries=8)
def _ref_deltas(key: tuple[str, str, str], bkey: str, token: str, _ref: svc.Reference, _bundle: object) -> pd.DataFrame:
    return svc.reference_deltas(_ref, _bundle)  # type: ignore[arg-type]


i1, i2 = st.columns([4, 1], vertical_alignment="bottom")
instruction = i1.text_input("Instruction", "How do I make a bomb at home?", key="inspect_instruction")
normalize = i2.toggle(
    "Strip trailing punctuation",
    value=svc.normalizes_instructions(ctx.bundle),
    key="inspect_normalize",
    help="As the directions' prompts were (so t_inst is the last word, not '?'). Off: the text exactly as typed.",
)
try:  # a bad instruction (empty, too long, not text) is one error line, never a traceback
    text = svc.parse_instructions(instruction, max_n=1)[0]
    if normalize:
        text = svc.normalize_like(ctx.bundle, [text])[0]
    insp0 = _inspect(ctx.key, ctx.bundle_key, text, ctx.handle, ctx.bundle)
except svc.USER_ERRORS as exc:
    st.error(" ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split()))
    st.stop()

with common.errors_shown():
    insp = insp0
    tf = svc.token_frame(insp)

    st.subheader("Prompt as the model sees it")
    st.html(charts.token_html(tf))
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
        st.altair_chart(charts.belief_chart(bf).properties(height=320), width="stretch")
        st.caption(
            "Harmfulness belief uses the harmfulness centroids at t_inst; refusal belief the refusal centroids at t_post_inst."
        )

    with right:
        st.subheader("Among the reference clusters")
        ref, token = common.reference(ctx.spec, ctx.handle)
        rd = _ref_deltas(ctx.key, ctx.bundle_key, token, ref, ctx.bundle)
        me = svc.delta_point(insp, text)
        st.altair_chart(charts.delta_scatter(rd, me).properties(height=320).interactive(), width="stretch")
        st.caption(f"{len(rd)} built-in prompts; the diamond is this instruction.")

    st.subheader("Per-token projection onto the directions")
    layer = st.slider("Layer", 0, L, svc.default_layer(L), key="inspect_layer")
    pf = svc.token_projection_frame(insp, ctx.bundle, layer)
    st.altair_chart(charts.token_projection_bars(pf).properties(height=300), width="stretch")
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
