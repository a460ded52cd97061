"""steering-explorer: the Streamlit frame (page config, model picker, status, navigation).

Run with ``streamlit run app.py`` (``make run``). ``$STEERING_EXPLORER_MODEL`` picks the model at start
(``default``: Qwen2.5-Coder-0.5B-Instruct; ``tiny-random``: a random 3-block model for smoke tests).
Pages live in ``pages/`` and, like this frame, import the engine only through ``engine.service`` (no torch code in
pages). Every page starts with ``require_frame()`` (pages/_frame.py says why: a fresh server's first deep link would
otherwise run the page bare, outside this frame). After the first page's run it packs the model's linear weights for
generation (``engine.service.pack_in_background``) and then warms UMAP's compilation (``engine.service.maps.
warm_up_umap``; ``STEERING_EXPLORER_UMAP_WARMUP=0`` turns it off), each in a background thread.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = str(Path(__file__).resolve().parent)
if ROOT not in sys.path:  # `streamlit run` adds it; AppTest and other runners may not
    sys.path.insert(0, ROOT)

from engine import service as svc  # noqa: E402
from pages import _common as common  # noqa: E402
from pages import _state as state  # noqa: E402
from pages._frame import require_frame  # noqa: E402

# a fresh server's first run: leave Streamlit's legacy pages/ mode before any widget
require_frame(is_frame=True)
st.set_page_config(page_title="steering-explorer", page_icon=":material/explore:", layout="wide")

PAGES = [
    st.Page("pages/steer.py", title="Steer", icon=":material/tune:", default=True),
    st.Page("pages/clusters.py", title="Clusters", icon=":material/scatter_plot:"),
    st.Page("pages/inspect.py", title="Inspect", icon=":material/search:"),
    st.Page("pages/guard.py", title="Latent Guard", icon=":material/shield:"),
    st.Page("pages/directions.py", title="Directions", icon=":material/north_east:"),
    st.Page("pages/experiments.py", title="Experiments", icon=":material/science:"),
    st.Page("pages/report.py", title="Report", icon=":material/description:"),
]
OTHER = "other (local .gguf file, Hugging Face id or local folder)"
DEVICES = ["auto", "cpu", "cuda", "mps"]
DTYPES = ["auto", "float32", "bfloat16", "float16"]


def _model_picker() -> svc.ModelSpec | None:
    env = svc.default_model_name()
    choices = svc.model_choices()
    presets = [name for name, _ in choices]
    options = [*presets, OTHER]
    labels = {name: svc.model_label(name, desc) for name, desc in choices}
    # Initial values go through index=/value= (not by seeding st.session_state): robust across reruns.
    choice = st.selectbox(
        "Model",
        options,
        index=options.index(env) if env in presets else len(presets),
        key="model_choice",
        format_func=lambda o: labels.get(o, o),
        help="\n\n".join(f"**{k}**: {v}" for k, v in choices)
        + "\n\nOr a local .gguf file (verified by its SHA-256, dequantised once and cached), a Hugging Face model id "
        "or a local folder.",
    )
    name = choice
    if choice == OTHER:
        name = st.text_input(
            "Local .gguf file, Hugging Face id or local folder",
            value="" if env in presets else env,
            key="model_custom",
            placeholder="/path/to/model.gguf",
        ).strip()
        if not name:
            st.info("Type a .gguf path, a model id or a folder, then press Enter.")
            return None
    c1, c2 = st.columns(2)
    device = c1.selectbox("Device", DEVICES, key="model_device")
    dtype = c2.selectbox("Dtype", DTYPES, key="model_dtype")
    try:
        return svc.ModelSpec(name=name, device=device, dtype=dtype)
    except ValueError as exc:
        st.error(str(exc))
        return None


def _status(spec: svc.ModelSpec) -> svc.ModelHandle | None:
    try:
        handle = common.get_handle(spec)
    except Exception as exc:  # a bad id, missing weights, out of memory: show it, keep the app usable
        st.session_state[state.MODEL_ERROR] = str(exc)
        st.sidebar.error(f"Could not load {spec.name!r}: {exc}")
        return None
    st.session_state.pop(state.MODEL_ERROR, None)
    bundle, source = None, ""
    try:
        with st.container():
            bundle, source = common.active_bundle(spec, handle)
    except Exception as exc:  # engine errors and anything unexpected: a message, never a traceback
        st.sidebar.error(f"Directions unavailable: {exc}")
    status = svc.model_status(handle, bundle, source)
    with st.sidebar:
        st.markdown(
            f"**{status['model']}**  \n{status['blocks (L)']} blocks · width {status['width (d)']} · "
            f"{status['device']} · {status['dtype']}"
        )
        st.caption(f"Directions: {status['directions']}")
        if status.get("warning"):
            st.warning(status["warning"])
        with st.expander("Model status"):
            st.json({k: v for k, v in status.items()}, expanded=True)
            st.caption(
                "Layer convention: row l < L is the residual stream at the input of block l (row 0 = embeddings); "
                "row L is the last block's output before the final norm. Steering adds c·v[l] at the input of block l."
            )
    return handle


with st.sidebar:
    st.markdown("### :material/explore: steering-explorer")
    st.caption(
        "How a chat model encodes *harmfulness* (at t_inst) and *refusal* (at t_post_inst), and how to steer them."
    )
    spec = _model_picker()

if spec is not None:
    st.session_state[state.SPEC] = spec
    page = st.navigation(PAGES)
    handle = _status(spec)
else:
    st.session_state[state.SPEC] = None  # the pages say "choose a model" instead of running
    page = st.navigation(PAGES)
    handle = None
try:
    page.run()
finally:
    # after the first page's run (so they slow neither the model load nor that page: both hold the GIL for long
    # stretches), in background threads, one after the other: the linear weights packed for generation (once per
    # model, engine.packing), then UMAP's numba compilation (~20 s, once per process) so the first Clusters/Inspect
    # map takes about a second
    packing = svc.pack_in_background(handle) if handle is not None else None
    svc.maps.warm_up_umap(after=packing)
