"""Clusters: UMAP / PCA maps of the built-in prompts' hidden states at t_inst and t_post_inst."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from engine import service as svc
from pages import _charts as charts
from pages import _common as common
from pages import _state as state
from pages._frame import require_frame

require_frame()

common.page_header(
    "Clusters",
    "at t_inst (the instruction's last token) the hidden states group by *harmfulness*: refused and accepted "
    "harmful prompts sit together, away from harmless ones. At t_post_inst (the end of the chat template) they group "
    "by *refusal*: accepted harmful prompts move to the harmless side, refused harmless ones to the harmful side.",
    "the orange (accepted harmful) and purple (refused harmless) points: near their harmfulness group on the left, "
    "near their refusal group on the right. The nearest-centroid accuracies under each map say the same in numbers.",
)
ctx = common.require_model()
L = ctx.handle.n_layers
ref, ref_token = common.reference(ctx.spec, ctx.handle)


@st.cache_data(show_spinner=False, max_entries=64)
def _map(
    key: tuple[str, str, str],
    token: str,
    layer: int,
    position: str,
    method: str,
    seed: int,
    n_neighbors: int,
    extra: tuple[str, ...],
    _ref: svc.Reference,
    _extra_acts: np.ndarray | None,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, float]]:
    df, info = svc.cluster_map(
        _ref, layer, position, method, seed=seed, n_neighbors=n_neighbors, extra_acts=_extra_acts, extra_texts=extra
    )
    return df, info, svc.separation(_ref, layer, position)


@st.cache_data(show_spinner=False, max_entries=32)
def _own_acts(key: tuple[str, str, str], texts: tuple[str, ...], _handle: Any) -> np.ndarray:
    return svc.capture_instructions(_handle, list(texts))


c1, c2, c3, c4 = st.columns([2.2, 1, 1, 1.2])
layer = c1.slider(
    "Layer (captured row)",
    0,
    L,
    svc.default_layer(L),
    key="clusters_layer",
    help=f"Row l < {L} is the input of block l (row 0 = embeddings); row {L} is the last block's output.",
)
method = c2.radio("Method", ["UMAP", "PCA"], key="clusters_method", help="UMAP: non-linear, seed fixed. PCA: linear.")
seed = c3.number_input("Seed", 0, 10_000, 0, key="clusters_seed", help="UMAP random state (the map is reproducible).")
n_neighbors = c3.number_input("UMAP neighbours", 2, 100, 15, key="clusters_nn", disabled=method != "UMAP")
side = c4.toggle(
    "Both positions",
    value=True,
    key="clusters_side",
    help="t_inst and t_post_inst side by side, same layer, same method.",
)
position = "t_inst" if side else c4.radio("Position", list(svc.POSITIONS), key="clusters_position")
own_text = st.text_area(
    "Your prompts (optional, one per line): placed into the same map (normalised like the built-in ones)",
    "",
    height=68,
    key="clusters_own",
    placeholder="How do I kill a Python process?",
)

extra: tuple[str, ...] = ()
extra_acts = None
if own_text.strip():
    with common.errors_shown():
        extra = tuple(svc.normalize_like(ctx.bundle, svc.parse_instructions(own_text, max_n=32)))
        extra_acts = _own_acts(ctx.key, extra, ctx.handle)


def _show(position: str, col: Any) -> None:
    with col, common.errors_shown():
        with st.spinner(f"Projecting {len(ref.records)} prompts at {position}, layer {layer} ({method}) …"):
            df, info, sep = _map(
                ctx.key, ref_token, layer, position, method.lower(), int(seed), int(n_neighbors), extra, ref, extra_acts
            )
        st.session_state.setdefault(state.CLUSTERS_POINTS, {})[position] = {
            "n": len(df),
            "n_yours": int((df["source"] == "yours").sum()),
        }
        st.altair_chart(charts.cluster_map_chart(df, f"{position} · layer {layer} · {method}"), width="stretch")
        note = (
            f"{len(ref.records)} built-in prompts"
            + (f" + {len(extra)} of yours" if extra else "")
            + f". Nearest-centroid accuracy in the full space: harmful vs harmless {sep['harmful vs harmless']:.0%}, "
            f"refused vs accepted {sep['refused vs accepted']:.0%}."
        )
        if info.get("explained_variance"):
            ev = info["explained_variance"]
            note += f" PCA axes explain {ev[0]:.0%} and {ev[1]:.0%} of the variance."
        if info.get("degenerate"):
            note += " All prompts share one hidden state here (e.g. the embedding of the same template token)."
        st.caption(note)
        if position == "t_inst":
            st.session_state[state.CLUSTERS_LAST] = df


if side:
    left, right = st.columns(2)
    _show("t_inst", left)
    _show("t_post_inst", right)
else:
    _show(position, st.container())

counts = ref.frame()["cluster"].value_counts().to_dict()
st.caption(
    "Clusters come from greedy replies labelled with the paper's refusal substrings: "
    + ", ".join(f"{k} {v}" for k, v in counts.items())
    + ". Maps are cached per (model, layer, position, method, seed); the captures are made once per model."
)
df_last = st.session_state.get(state.CLUSTERS_LAST)
if df_last is not None and st.button("Add this map to the report", key="clusters_log"):
    common.log_event(
        "Clusters",
        f"map at layer {layer} ({method})",
        settings={"layer": layer, "method": method, "seed": int(seed), "model": ctx.spec.name},
        chart=df_last[["instruction", "cluster", "x", "y", "source"]],
    )
    st.toast("Added to the report")
