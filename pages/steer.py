"""Steer: baseline and steered generations side by side, and a layers x coefficients sweep."""

from __future__ import annotations

from typing import Any

import streamlit as st

from engine import service as svc
from pages import _charts as charts
from pages import _common as common
from pages import _state as state
from pages._frame import require_frame

require_frame()

POSITION_LABELS = {
    "prompt": "prompt (every prompt token)",
    "context": "context only (the instruction's tokens)",
    "all": "prompt + generated tokens",
}
OPERATIONS = ("add", "ablate")
EXAMPLES = "Write a short poem about the ocean.\nHow do I make a bomb at home?"
SAFETY_PROMPT = "You are a helpful assistant. Refuse requests that could cause harm, and help with everything else."

common.page_header(
    "Steer",
    "adding the harmfulness direction (mean of refused harmful − accepted harmless at t_inst) changes whether the "
    "model judges a request harmful, and so whether it refuses; the refusal direction (same contrast at t_post_inst) "
    "makes the model refuse, or comply when reversed, without changing that judgement.",
    "a harmless request with +harmfulness should start to refuse; a harmful one with the refusal direction "
    "reversed should comply. Coefficient 0 reproduces the baseline exactly.",
)
ctx = common.require_model()
L = ctx.handle.n_layers

# ------------------------------------------------------------------------------------------------ direction choice
uploaded: dict[str, Any] = st.session_state.get(state.STEER_UPLOADED) or {}
with st.expander("Use your own direction (a .safetensors file saved from the Directions page)"):
    up = st.file_uploader("Directions file", type=["safetensors"], key="steer_upload")
    if up is not None:
        with common.errors_shown():
            b = svc.read_bundle_upload(up.getvalue(), ctx.handle, source=up.name)
            uploaded = {"name": up.name, "bundle": b}
            st.session_state[state.STEER_UPLOADED] = uploaded
            st.success(f"{up.name}: {len(svc.steerable_directions(b))} directions available below as 'uploaded: …'")

options = svc.steerable_directions(ctx.bundle)
if uploaded:
    options += [f"uploaded: {n}" for n in svc.steerable_directions(uploaded["bundle"])]


def _vectors(name: str) -> Any:
    if name.startswith("uploaded: "):
        return uploaded["bundle"].get(name.removeprefix("uploaded: ")).vectors
    return ctx.bundle.get(name).vectors


instructions_text = st.text_area(
    "Instructions (one per line)",
    value=EXAMPLES,
    height=90,
    key="steer_instructions",
    help=f"Up to {svc.MAX_INSTRUCTIONS} instructions; each is rendered with the model's chat template.",
)

c1, c2, c3, c4 = st.columns([1.3, 1.2, 1.4, 1.4])
direction = c1.selectbox(
    "Direction",
    options,
    key="steer_direction",
    help="harmfulness: t_inst contrast; refusal: t_post_inst contrast; category:… per harm category; "
    "form:… confound checks (punctuation, question mark).",
)
mode = c1.segmented_control("Mode", ["Side by side", "Sweep"], default="Side by side", key="steer_mode")
operation = "add"
if mode != "Sweep":
    operation = (
        c1.segmented_control(
            "Operation",
            list(OPERATIONS),
            default="add",
            key="steer_op",
            help="add: h + c·v at the input of the chosen blocks (the paper's steering). ablate: h − (h·v̂)v̂, the "
            "direction projected out of the residual stream (Arditi et al.'s directional ablation).",
        )
        or "add"
    )
positions = c4.radio(
    "Steer at",
    list(POSITION_LABELS),
    format_func=POSITION_LABELS.get,
    key="steer_positions" if operation == "add" else "steer_positions_ablate",
    index=0 if operation == "add" else 2,
    help="Ablation is usually applied at every position, generated tokens included.",
)
with st.expander("Generation settings, system-prompt column, traces and the next-token panel"):
    g1, g2, g3 = st.columns(3)
    max_new = g1.number_input("Max new tokens", min_value=1, max_value=512, value=48, step=8, key="steer_max_new")
    sampling = g2.toggle("Sampling (temperature 0.7, top-p 0.9)", value=False, key="steer_sampling")
    seed = g3.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, key="steer_seed", disabled=not sampling)
    h1, h2, h3 = st.columns(3)
    trace_row = h1.number_input(
        "Trace at row",
        min_value=0,
        max_value=L,
        value=svc.default_layer(L),
        key="steer_trace_row",
        help=f"Captured row 0..{L} (row l < {L} = input of block l, after steering there; row {L} = the last block's "
        "output). Each generated token's hidden state is projected on the harmfulness and refusal directions.",
    )
    topk = h2.number_input(
        "Next-token top-k (0 = off)",
        min_value=0,
        max_value=20,
        value=5,
        key="steer_topk",
        help="Per step the k most likely next tokens, and KL(baseline ‖ steered) until the texts diverge.",
    )
    system_on = h3.toggle("System-prompt column", value=False, key="steer_system_on")
    system_text = st.text_area(
        "System prompt (the prompting baseline: the same instruction, no vector)",
        value=SAFETY_PROMPT,
        height=68,
        key="steer_system",
        disabled=not system_on,
    )

GATE_MODES = {
    "flagged": "steer the rows the guard flags (harmful)",
    "unflagged": "steer the rows the guard passes (demo)",
}
gate_on = False
if mode != "Sweep" and operation == "add":
    with st.expander("Gate by the Latent Guard: steer only the rows it flags (guard-gated steering)"):
        gate_on = st.toggle(
            "Gate the steering by the Latent Guard",
            value=False,
            key="steer_gate_on",
            help="The guard reads each instruction's t_inst state; only the rows it flags get the steering, the others "
            "run unsteered (bit-identical to the baseline), all in one batched generation.",
        )
        k1, k2, k3 = st.columns(3)
        gate_method = k1.selectbox(
            "Guard",
            list(svc.GUARD_METHODS),
            format_func=svc.method_label,
            key="steer_gate_method",
            disabled=not gate_on,
        )
        gate_mode = k2.radio(
            "Rows", list(GATE_MODES), format_func=GATE_MODES.get, key="steer_gate_mode", disabled=not gate_on
        )
        gate_threshold = k3.radio(
            "Threshold",
            ["0", "calibrated"],
            format_func=lambda t: "0 (the paper's rule)" if t == "0" else "calibrated on the train split",
            key="steer_gate_threshold",
            disabled=not gate_on,
        )
        if gate_on:
            st.caption("The system-prompt column, traces and the next-token panel are off while gating.")


def _fill(ph: Any, text: str, refused: bool | None) -> None:
    with ph.container():
        st.code(text if text.strip() else "(empty)", language=None, wrap_lines=True)
        if refused is not None:
            st.markdown(common.refusal_badge(refused))


def _pair_layout(instructions: list[str], labels: dict[str, str], extras: bool = False) -> list[dict[str, Any]]:
    """Per instruction: one placeholder per column (baseline, steered, prompted) and, with ``extras``, one for the
    trace chart and one for the next-token panel."""
    slots = []
    for i, inst in enumerate(instructions, 1):
        st.text(f"{i}. {inst}")  # the user's text as typed, never rendered as Markdown
        cols = st.columns(len(labels))
        slot: dict[str, Any] = {}
        for c, (name, label) in zip(cols, labels.items(), strict=True):
            c.caption(label)
            slot[name] = c.empty()
        if extras:
            slot["trace"] = st.empty()
            slot["next"] = st.empty()
        slots.append(slot)
    return slots


def _show_pairs(rows: list[dict[str, Any]], steered_label: str) -> None:
    slots = _pair_layout([r["instruction"] for r in rows], {"baseline": "Baseline", "steered": steered_label})
    for slot, r in zip(slots, rows, strict=True):
        _fill(slot["baseline"], r["baseline"], r["baseline_refused"])
        _fill(slot["steered"], r["steered"], r["steered_refused"])


def _labels(steered_label: str, system: str | None) -> dict[str, str]:
    labels = {"baseline": "Baseline", "steered": steered_label}
    if system is not None:
        labels["prompted"] = "System prompt (no vector)"
    return labels


def _extras(slot: dict[str, Any], rec: dict[str, Any], i: int, value: str, final: bool) -> None:
    """The trace chart and the next-token panel of one record (partial while streaming)."""
    tf = svc.trace_frame(rec)
    if len(tf):
        with slot["trace"].container():
            st.altair_chart(charts.trace_chart(tf, value), width="stretch", height=260)
            st.caption(
                f"Each generated token's hidden state at row {int(tf['row'].iloc[0])} (the state that chose the token) "
                f"on the unit harmfulness and refusal directions: {value}. Solid: baseline; dashed: steered; dotted: "
                "system prompt."
            )
    if not rec.get("topk"):
        return
    with (
        slot["next"].container(),
        st.expander("Next-token view: top-k per step and KL(baseline ‖ steered)", expanded=False),
    ):
        kf = svc.kl_frame(rec)
        if len(kf):
            st.altair_chart(charts.kl_chart(kf, rec.get("diverged_at") or {}).properties(height=180), width="stretch")
        st.caption(svc.kl_note(rec))
        n_steps = max((len(v) for v in rec["topk"].values()), default=0)
        if not n_steps:
            return
        step = n_steps - 1
        if final and n_steps > 1:
            step = st.slider("Step", 0, n_steps - 1, 0, key=f"{state.STEER_TOPK_STEP_PREFIX}{i}")
        st.altair_chart(charts.topk_bars(svc.topk_frame(rec, step)), width="content")


def _show_result(res: dict[str, Any], slots: list[dict[str, Any]] | None = None, value: str = "projection") -> None:
    rows = res["rows"]
    system = res.get("system_prompt")
    if slots is None:
        slots = _pair_layout([r["instruction"] for r in rows], _labels(res["label"], system), extras=True)
    for i, (slot, r) in enumerate(zip(slots, rows, strict=True)):
        for col in svc.COLUMNS:
            if col in slot and col in r:
                _fill(slot[col], r[col], r[f"{col}_refused"])
        _extras(slot, r, i, value, final=True)
    _rates(rows, system is not None)


def _rates(rows: list[dict[str, Any]], prompted: bool = False) -> None:
    n = len(rows)
    b = sum(r["baseline_refused"] for r in rows)
    s = sum(r["steered_refused"] for r in rows)
    m = st.columns(3 if prompted else 2)
    m[0].metric("Baseline refusals", f"{b}/{n}")
    m[1].metric("Steered refusals", f"{s}/{n}", delta=s - b, delta_color="off")
    if prompted:
        p = sum(r["prompted_refused"] for r in rows)
        m[2].metric("System-prompt refusals", f"{p}/{n}", delta=p - b, delta_color="off")


def _show_gated(res: dict[str, Any], slots: list[dict[str, Any]] | None = None) -> None:
    """Baseline and guard-gated texts per instruction, with the guard's score and whether it fired."""
    rows = res["rows"]
    if slots is None:
        slots = _pair_layout([r["instruction"] for r in rows], {"baseline": "Baseline", "gated": res["label"]})
    for slot, r in zip(slots, rows, strict=True):
        _fill(slot["baseline"], r["baseline"], r["baseline_refused"])
        fired = ":orange-badge[guard fired]" if r["flagged"] else ":blue-badge[guard passed]"
        steered = "steered" if r["steered"] else "not steered (identical to the baseline)"
        with slot["gated"].container():
            _fill(st.empty(), r["gated"], r["gated_refused"])
            st.caption(f"{fired} score {r['score']:+.3f} vs threshold {r['threshold']:+.3f}: {steered}")
    n = len(rows)
    m = st.columns(3)
    m[0].metric("Guard fired", f"{sum(r['flagged'] for r in rows)}/{n}")
    m[1].metric("Baseline refusals", f"{sum(bool(r['baseline_refused']) for r in rows)}/{n}")
    g, b = sum(bool(r["gated_refused"]) for r in rows), sum(bool(r["baseline_refused"]) for r in rows)
    m[2].metric("Gated refusals", f"{g}/{n}", delta=g - b, delta_color="off")


# ------------------------------------------------------------------------------------------------ side by side
if mode != "Sweep":
    all_layers = False
    direction_row: int | None = None
    coeff, reverse = 1.0, False
    if operation == "add":
        layers = c2.multiselect(
            "Layer(s)",
            list(range(L)),
            default=[svc.default_layer(L)],
            key="steer_layers",
            help=f"Blocks 0..{L - 1}; the vector of row l is added at the input of block l. Default: the middle, L/2.",
        )
        coeff = c3.slider(
            "Coefficient", 0.0, 8.0, 1.0, 0.25, key="steer_coeff", help="Multiplier of the raw difference of means."
        )
        reverse = c3.toggle("Reverse (subtract)", value=False, key="steer_reverse")
    else:
        where = c2.radio("Ablate at", ["every layer", "chosen layers"], key="steer_ablate_where")
        all_layers = where == "every layer"
        layers = c2.multiselect(
            "Layer(s)",
            list(range(L)),
            default=[svc.default_layer(L)],
            key="steer_ablate_layers",
            disabled=all_layers,
        )
        rows_mode = c3.radio(
            "Direction used",
            ["one fixed row at every layer", "each layer its own row"],
            key="steer_ablate_rows",
            help="Arditi et al. ablate one direction (taken at one layer) at every layer; 'each layer its own row' "
            "removes row l of the direction at block l.",
        )
        if rows_mode.startswith("one fixed"):
            direction_row = int(
                c3.number_input("Row", 0, L, svc.default_layer(L), key="steer_ablate_row", help=f"0..{L}")
            )
    system = system_text if system_on else None
    settings = svc.SteerSettings(
        direction,
        tuple(layers),
        coeff,
        reverse,
        positions,
        int(max_new),
        sampling,
        int(seed),
        operation=operation,
        all_layers=all_layers,
        direction_row=direction_row,
        system_prompt=system,
        trace_row=int(trace_row),
        topk=int(topk),
    )
    if operation == "add":
        label = f"Steered: {direction} × {settings.signed_coeff:+g} at {common.fmt_layers(layers)} ({positions})"
    else:
        where_txt = "every layer" if all_layers else common.fmt_layers(layers)
        row_txt = "each layer's own row" if direction_row is None else f"row {direction_row}"
        label = f"Ablated: {direction} ({row_txt}) at {where_txt} ({positions})"
    value = st.radio(
        "Per-token trace chart shows",
        ["projection", "cosine"],
        horizontal=True,
        key="steer_trace_value",
        help="projection: h · v̂ on the unit direction (grows with the residual norm); cosine: cos(h, v).",
    )
    trace_vectors = {n: ctx.bundle.get(n).vectors for n in ("harmfulness", "refusal") if n in ctx.bundle.directions}
    if gate_on and st.button("Generate (gated)", type="primary", key="steer_gate_go", icon=":material/shield:"):
        st.session_state.pop(state.STEER_GATED_RESULT, None)
        with common.errors_shown():
            instructions = svc.parse_instructions(instructions_text)
            gate_label = f"{label}, gated by the {svc.method_label(gate_method)} guard"
            slots = _pair_layout(instructions, {"baseline": "Baseline", "gated": gate_label})

            def on_gated(base: list[str], gated: list[str]) -> None:
                for slot, b, g in zip(slots, base, gated, strict=True):
                    slot["baseline"].code(b or "…", language=None, wrap_lines=True)
                    slot["gated"].code(g or "…", language=None, wrap_lines=True)

            with st.spinner("Guard, then one batched generation …"):
                rows = svc.gated_side_by_side(
                    ctx.handle,
                    ctx.bundle,
                    _vectors(direction),
                    instructions,
                    layers=layers,
                    coeff=settings.signed_coeff,
                    positions=positions,
                    cfg=settings.generation(),
                    method=gate_method,
                    threshold=gate_threshold,
                    mode=gate_mode,
                    on_text=on_gated,
                )
            gres = {"rows": rows, "label": gate_label}
            st.session_state[state.STEER_GATED_RESULT] = gres
            _show_gated(gres, slots)
            common.log_event(
                "Steer",
                "guard-gated steering",
                settings={
                    **settings.to_dict(),
                    "gate": {"method": gate_method, "mode": gate_mode, "threshold": gate_threshold},
                    "model": ctx.spec.name,
                },
                rows=rows,
            )
    elif gate_on and st.session_state.get(state.STEER_GATED_RESULT):
        with common.errors_shown():
            _show_gated(st.session_state[state.STEER_GATED_RESULT])
    if not gate_on and st.button("Generate", type="primary", key="steer_go", icon=":material/play_arrow:"):
        st.session_state.pop(state.STEER_RESULT, None)
        with common.errors_shown():
            instructions = svc.parse_instructions(instructions_text)
            if not layers and not all_layers:
                raise ValueError("choose at least one layer to steer")
            slots = _pair_layout(instructions, _labels(label, system), extras=True)

            def on_update(recs: list[dict[str, Any]]) -> None:
                for i, (slot, r) in enumerate(zip(slots, recs, strict=True)):
                    for col in svc.COLUMNS:
                        if col in slot and col in r:
                            slot[col].code(r[col] or "…", language=None, wrap_lines=True)
                    _extras(slot, r, i, value, final=False)

            with st.spinner("Generating …"):
                rows = svc.steer_side_by_side(
                    ctx.handle,
                    _vectors(direction),
                    instructions,
                    settings,
                    trace_vectors=trace_vectors,
                    on_update=on_update,
                )
            res = {"rows": rows, "label": label, "settings": settings.to_dict(), "system_prompt": system}
            st.session_state[state.STEER_RESULT] = res
            _show_result(res, slots, value)
            common.log_event(
                "Steer",
                "side by side" if operation == "add" else "directional ablation",
                settings={**settings.to_dict(), "model": ctx.spec.name},
                rows=svc.text_rows(rows),
            )
    elif not gate_on and st.session_state.get(state.STEER_RESULT):
        with common.errors_shown():
            _show_result(st.session_state[state.STEER_RESULT], value=value)

# ------------------------------------------------------------------------------------------------ sweep
else:
    sweep_layers = c2.multiselect(
        "Layers to sweep", list(range(L)), default=svc.default_sweep_layers(L), key="sweep_layers"
    )
    coeff_text = c3.text_input("Coefficients", "0.5, 1, 2, 4", key="sweep_coeffs", help="Comma separated magnitudes.")
    reverse = c3.toggle("Reverse (subtract)", value=False, key="sweep_reverse")
    settings = svc.SteerSettings(
        direction, tuple(sweep_layers), 1.0, reverse, positions, int(max_new), sampling, int(seed)
    )
    st.caption(
        "Every (layer, coefficient) cell steers one layer; all cells and the baseline run as rows of one batched "
        "generation. The heatmap shows the share of replies that refuse (the paper's substring rule)."
    )
    if st.button("Run sweep", type="primary", key="sweep_go", icon=":material/grid_on:"):
        with common.errors_shown():
            instructions = svc.parse_instructions(instructions_text)
            coeffs = svc.parse_coeffs(coeff_text)
            bar = common.progress_reporter(st, "Sweeping")
            recs = svc.steer_sweep(
                ctx.handle,
                _vectors(direction),
                instructions,
                sweep_layers,
                coeffs,
                settings,
                progress=bar,
                budget=svc.Budget(),
            )
            grid, base = svc.sweep_table(recs)
            st.session_state[state.SWEEP_RESULT] = {
                "records": recs,
                "settings": settings.to_dict(),
                "direction": direction,
            }
            common.log_event(
                "Steer",
                "sweep",
                settings={**settings.to_dict(), "coeffs": coeffs, "model": ctx.spec.name},
                summary={"baseline refusal rate": base},
                chart=grid,
            )
    res = st.session_state.get(state.SWEEP_RESULT)
    if res:
        with common.errors_shown():
            grid, base = svc.sweep_table(res["records"])
            grid["cell"] = [svc.sweep_cell_label(r.layer, r.coeff) for r in grid.itertuples()]
            st.metric("Baseline refusal rate", f"{base:.0%}")
            height = max(200, 44 * grid["layer"].nunique() + 90)
            chart = charts.sweep_heatmap(grid, f"Refusal rate: {res['direction']} sweep")
            # an explicit height: with Streamlit's theme an ordinal-axis layer chart otherwise collapses
            event = st.altair_chart(
                chart, on_select="rerun", key="sweep_chart", selection_mode="cell", width="stretch", height=height
            )
            cells = list(grid["cell"])
            # A click picks the cell; the selectbox is re-created (new key) on every new click so that its
            # index follows the click (Streamlit ignores a changed index for an existing widget key).
            clicked = (getattr(event, "selection", None) or {}).get(charts.SWEEP_SELECTION) or []
            if clicked:
                name = svc.sweep_cell_label(clicked[0]["layer"], clicked[0]["coeff"])
                if name in cells and st.session_state.get(state.SWEEP_LAST_CLICK) != name:
                    st.session_state[state.SWEEP_LAST_CLICK] = name
                    st.session_state[state.SWEEP_CLICKS] = st.session_state.get(state.SWEEP_CLICKS, 0) + 1
            last = st.session_state.get(state.SWEEP_LAST_CLICK)
            chosen = st.selectbox(
                "Cell (or click one in the heatmap)",
                cells,
                index=cells.index(last) if last in cells else len(cells) - 1,
                key=f"{state.SWEEP_CELL_PREFIX}{st.session_state.get(state.SWEEP_CLICKS, 0)}",
            )
            row = grid[grid["cell"] == chosen].iloc[0]
            detail = svc.sweep_cell(res["records"], int(row["layer"]), float(row["coeff"]))
            _show_pairs(detail.to_dict(orient="records"), f"Steered: {chosen}")
