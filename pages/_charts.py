"""The app's chart builders (Altair) and the token chips, coloured from the one palette (assets/palette.json).

Contract:
- Every colour comes from the palette through ``svc.color(group, name)`` / ``svc.palette()``: clusters by cluster
  name, directions by direction name, ``roles`` for everything else (guides, outlines, text on dark cells, the Latent
  Guard and the model's own refusal). No colour literal is written in the pages or here; Vega scheme names
  ("reds", "redblue", "blues") pick continuous scales.
- Builders take the service's frames as they come (``svc.norms_frame``, ``svc.cluster_map``, ``svc.roc_frame`` ...)
  and return Altair charts; the pages only add sizes and hand them to ``st.altair_chart``.
- Layers are captured rows (``layer_axis``: integer ticks); direction colours are the same on every page
  (``direction_scale``): harmfulness and refusal from the palette's directions group, others from its series.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import altair as alt
import pandas as pd

from engine import service as svc

__all__ = [
    "SWEEP_SELECTION",
    "belief_chart",
    "cluster_map_chart",
    "cluster_scale",
    "column_scale",
    "confusion_charts",
    "cosine_heatmap",
    "cosine_interval_chart",
    "delta_scatter",
    "direction_scale",
    "experiment_chart",
    "kl_chart",
    "layer_axis",
    "layer_lines",
    "roc_chart",
    "role",
    "sweep_heatmap",
    "token_html",
    "token_projection_bars",
    "topk_bars",
    "trace_chart",
    "zero_rule",
]

SWEEP_SELECTION = "cell"  # the sweep heatmap's click selection (read back from st.altair_chart's event)
_BOTTOM_LEGEND: dict[str, Any] = {"orient": "bottom", "title": None}


def role(name: str) -> str:
    """A colour of the palette's ``roles`` group (e.g. "guide", "latent")."""
    return svc.color("roles", name)


def layer_axis(title: str = "layer (captured row)") -> alt.Axis:
    """An integer x axis for layer numbers."""
    return alt.Axis(title=title, tickMinStep=1, format="d")


def direction_scale(names: Sequence[str]) -> alt.Scale:
    """Colours of directions: harmfulness and refusal as everywhere, other directions from the palette's series."""
    known = svc.palette().get("directions", {})
    others = iter(list(svc.palette()["series"]) * 4)
    return alt.Scale(domain=list(names), range=[known.get(n) or next(others) for n in names])


def cluster_scale() -> alt.Scale:
    """Colours of the four clusters and of the user's own prompts (``svc.CLUSTER_KEYS``)."""
    return alt.Scale(domain=list(svc.CLUSTER_KEYS), range=[svc.color("clusters", k) for k in svc.CLUSTER_KEYS.values()])


def _text_color(dark_when: str) -> Any:
    """Light text on dark cells (``dark_when`` is a Vega expression), dark text elsewhere."""
    return alt.condition(dark_when, alt.value(role("text_on_dark")), alt.value(role("text_on_light")))


def zero_rule(channel: str = "y") -> alt.Chart:
    """A dashed guide line at 0 on ``channel`` ("x" or "y")."""
    base = alt.Chart(pd.DataFrame({"v": [0.0]})).mark_rule(strokeDash=[4, 4], color=role("guide"))
    return base.encode(**{channel: "v:Q"})


def layer_lines(
    df: pd.DataFrame,
    y: str,
    y_title: str,
    *,
    series: str | None = None,
    scale: alt.Scale | None = None,
    color: str | None = None,
    y_domain: Sequence[float] | None = None,
    legend_columns: int = 2,
    tooltip: Sequence[Any] = (),
) -> alt.Chart:
    """Lines with points over the layer axis (column ``layer``): one per value of ``series`` coloured by ``scale``,
    or one line in the fixed ``color``."""
    mark = {"point": True} if color is None else {"point": True, "color": color}
    enc: dict[str, Any] = {
        "x": alt.X("layer:Q", axis=layer_axis()),
        "y": alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(domain=list(y_domain)) if y_domain else alt.Undefined),
        "tooltip": list(tooltip),
    }
    if series is not None:
        enc["color"] = alt.Color(
            f"{series}:N", scale=scale or alt.Undefined, legend=alt.Legend(**_BOTTOM_LEGEND, columns=legend_columns)
        )
    return alt.Chart(df).mark_line(**mark).encode(**enc)


def belief_chart(bf: pd.DataFrame) -> alt.LayerChart:
    """The Inspect page's per-layer beliefs (``svc.belief_frame``) in their directions' colours, with a zero line."""
    names = list(svc.BELIEF_SERIES)
    scale = alt.Scale(domain=[svc.BELIEF_SERIES[n] for n in names], range=[svc.color("directions", n) for n in names])
    lines = layer_lines(
        bf,
        "score",
        "s_l = cos(h, μ+) − cos(h, μ−)",
        series="series",
        scale=scale,
        legend_columns=1,
        tooltip=["series:N", "layer:Q", alt.Tooltip("score:Q", format="+.4f")],
    )
    return zero_rule() + lines


def _annotated(
    df: pd.DataFrame, x: alt.X, y: alt.Y, color: alt.Color, text: alt.Text, dark_when: str, **text_mark: Any
) -> tuple[alt.Chart, alt.Chart]:
    """A heatmap's rectangles and its value labels (light on dark cells): the shared part of every heatmap."""
    base = alt.Chart(df).encode(x=x, y=y)
    rect = base.mark_rect().encode(color=color)
    labels = base.mark_text(**text_mark).encode(text=text, color=_text_color(dark_when))
    return rect, labels


def sweep_heatmap(grid: pd.DataFrame, title: str) -> alt.LayerChart:
    """Refusal rate per (layer, coefficient) cell of ``svc.sweep_table``; a click selects a cell (``SWEEP_SELECTION``)."""
    pick = alt.selection_point(fields=["layer", "coeff"], name=SWEEP_SELECTION, on="click", clear="dblclick")
    rect, labels = _annotated(
        grid,
        alt.X("coeff:O", title="coefficient", axis=alt.Axis(labelAngle=0)),
        alt.Y("layer:O", title="layer (block input)", sort="descending"),
        alt.Color("refusal_rate:Q", title="refusal rate", scale=alt.Scale(domain=[0, 1], scheme="reds")),
        alt.Text("refusal_rate:Q", format=".0%"),
        "datum.refusal_rate > 0.5",
        baseline="middle",
    )
    rect = (
        rect.mark_rect(stroke=role("outline"))
        .encode(
            opacity=alt.condition(pick, alt.value(1.0), alt.value(0.45)),
            tooltip=[
                "layer:O",
                "coeff:O",
                alt.Tooltip("refusal_rate:Q", format=".0%"),
                "n:Q",
                alt.Tooltip("change:Q", format="+.0%", title="vs baseline"),
            ],
        )
        .add_params(pick)
    )
    return (rect + labels).properties(title=title)


def cosine_heatmap(cm: pd.DataFrame, names: Sequence[str], layer: int) -> alt.LayerChart:
    """The cosine between every pair of directions at one layer (``svc.cosine_matrix``), in ``names`` order."""
    rect, labels = _annotated(
        cm,
        alt.X("b:N", sort=list(names), title=None, axis=alt.Axis(labelAngle=-40, labelOverlap=False, labelLimit=180)),
        alt.Y("a:N", sort=list(names), title=None, axis=alt.Axis(labelOverlap=False, labelLimit=180)),
        alt.Color("cosine:Q", scale=alt.Scale(domain=[-1, 1], scheme="redblue", reverse=True)),
        alt.Text("cosine:Q", format=".2f"),
        "abs(datum.cosine) > 0.6",
        fontSize=9,
    )
    rect = rect.encode(tooltip=["a:N", "b:N", alt.Tooltip("cosine:Q", format="+.3f")])
    return (rect + labels).properties(
        height=max(260, 30 * len(names)), title=f"cosine between directions at row {layer}"
    )


def confusion_charts(cm: pd.DataFrame) -> alt.FacetChart:
    """One confusion matrix per guard (``svc.confusion_frame``), side by side."""
    rect, labels = _annotated(
        cm,
        alt.X("predicted:N", title="predicted", axis=alt.Axis(labelAngle=0)),
        alt.Y("truth:N", title="truth"),
        alt.Color("count:Q", scale=alt.Scale(scheme="blues"), legend=None),
        alt.Text("count:Q"),
        f"datum['count'] > {cm['count'].max() / 2}",
        fontSize=16,
    )
    return (rect + labels).properties(width=170, height=150).facet(column=alt.Column("guard:N", title=None))


def roc_chart(roc: pd.DataFrame, points: pd.DataFrame, auc: float) -> alt.LayerChart:
    """The Latent Guard's ROC curve (``svc.roc_frame``), the chance diagonal and the operating points
    (``svc.operating_points``: the guard first, then the model's refusal)."""
    curve = roc[roc["series"].str.startswith("Latent")]
    line = (
        alt.Chart(curve)
        .mark_line(interpolate="step-after", color=role("latent"))
        .encode(
            x=alt.X("fpr:Q", title="false positive rate (harmless flagged)", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("tpr:Q", title="true positive rate (harmful caught)", scale=alt.Scale(domain=[0, 1])),
            tooltip=[
                alt.Tooltip("threshold:Q", format="+.4f"),
                alt.Tooltip("fpr:Q", format=".2f"),
                alt.Tooltip("tpr:Q", format=".2f"),
            ],
        )
    )
    diag = (
        alt.Chart(pd.DataFrame({"a": [0.0, 1.0]}))
        .mark_line(color=role("guide_light"), strokeDash=[4, 4])
        .encode(x="a:Q", y="a:Q")
    )
    whats = list(points["what"])
    dots = (
        alt.Chart(points)
        .mark_point(size=140, filled=True)
        .encode(
            x="fpr:Q",
            y="tpr:Q",
            color=alt.Color(
                "what:N",
                scale=alt.Scale(domain=whats, range=[role("latent"), role("own_refusal")][: len(whats)]),
                legend=alt.Legend(**_BOTTOM_LEGEND),
            ),
            shape="what:N",
            tooltip=["what:N", alt.Tooltip("fpr:Q", format=".2f"), alt.Tooltip("tpr:Q", format=".2f")],
        )
    )
    return (diag + line + dots).properties(title=f"ROC (AUC {auc:.3f})")


def cluster_map_chart(df: pd.DataFrame, title: str) -> alt.LayerChart:
    """A 2-D map of ``svc.cluster_map``: built-in prompts as dots, the user's prompts as labelled diamonds."""
    scale = cluster_scale()
    builtin = df[df["source"] == "built-in"]
    mine = df[df["source"] == "yours"]
    tooltip = ["instruction:N", "cluster:N", "set:N", "category:N"]
    bare = alt.Axis(labels=False, ticks=False, grid=False, domain=False)
    layers: list[alt.Chart] = [
        alt.Chart(builtin)
        .mark_circle(size=38, opacity=0.75)
        .encode(
            x=alt.X("x:Q", title=None, axis=bare),
            y=alt.Y("y:Q", title=None, axis=bare),
            color=alt.Color("cluster:N", scale=scale, legend=alt.Legend(**_BOTTOM_LEGEND, columns=3)),
            tooltip=tooltip,
        )
    ]
    if len(mine):
        layers.append(
            alt.Chart(mine)
            .mark_point(shape="diamond", size=180, filled=True, stroke=role("outline"), strokeWidth=1.2)
            .encode(x="x:Q", y="y:Q", color=alt.Color("cluster:N", scale=scale), tooltip=tooltip)
        )
        layers.append(
            alt.Chart(mine)
            .mark_text(dx=9, dy=-9, align="left", fontSize=11)
            .encode(x="x:Q", y="y:Q", text="instruction:N")
        )
    return alt.layer(*layers).properties(title=title, height=420).configure_view(strokeOpacity=0.3).interactive()


def delta_scatter(reference: pd.DataFrame, point: pd.DataFrame) -> alt.LayerChart:
    """Delta harmful vs Delta refuse of the reference prompts (``svc.reference_deltas``) with one inspected
    instruction (``svc.delta_point``) as a diamond, and dashed zero lines."""
    enc = {
        "x": alt.X("delta_harmful:Q", title="Δ harmful (t_inst)"),
        "y": alt.Y("delta_refuse:Q", title="Δ refuse (t_post_inst)"),
        "color": alt.Color("cluster:N", scale=cluster_scale(), legend=alt.Legend(**_BOTTOM_LEGEND, columns=3)),
        "tooltip": [
            "instruction:N",
            "cluster:N",
            alt.Tooltip("delta_harmful:Q", format="+.3f"),
            alt.Tooltip("delta_refuse:Q", format="+.3f"),
        ],
    }
    pts = alt.Chart(reference).mark_circle(size=30, opacity=0.6).encode(**enc)
    star = alt.Chart(point).mark_point(shape="diamond", size=260, filled=True, stroke=role("outline")).encode(**enc)
    return zero_rule("x") + zero_rule("y") + pts + star


def token_projection_bars(pf: pd.DataFrame) -> alt.Chart:
    """Per-token projections onto the unit directions (``svc.token_projection_frame``), grouped by token."""
    pf = pf.copy()
    pf["label"] = pf["index"].astype(str) + " " + pf["token"].str.replace("\n", "⏎").str.replace(" ", "·")
    order = list(dict.fromkeys(pf.sort_values("index")["label"]))
    names = list(dict.fromkeys(pf["direction"]))
    return (
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
            color=alt.Color("direction:N", scale=direction_scale(names), legend=alt.Legend(**_BOTTOM_LEGEND)),
            tooltip=["index:Q", "token:N", "role:N", "direction:N", alt.Tooltip("projection:Q", format="+.3f")],
        )
    )


def _chip_style(token_role: str) -> str:
    if token_role in svc.POSITIONS:
        return f"background:{svc.color('positions', token_role)};color:{role('text_on_dark')};font-weight:600"
    return f"background:{role(token_role + '_bg')};color:{role(token_role + '_fg')}"


def token_html(tf: pd.DataFrame) -> str:
    """The prompt's tokens (``svc.token_frame``) as HTML chips coloured by role, t_inst and t_post_inst marked.

    Token text is escaped; spaces show as · and newlines as ⏎.
    """
    chips = []
    for _, r in tf.iterrows():
        tok = str(r["token"]).replace(" ", "\u00b7").replace("\n", "\u23ce")
        title = f"#{r['index']} ({r['role']})"
        label = ""
        if r["role"] in svc.POSITIONS:
            label = f"<sub style='margin-left:3px;opacity:.9'>{r['role']}</sub>"
        chips.append(
            f"<span title='{html.escape(title)}' style='{_chip_style(r['role'])};padding:2px 4px;margin:2px;"
            f"border-radius:4px;display:inline-block;font-family:monospace;font-size:0.85rem'>"
            f"{html.escape(tok)}{label}</span>"
        )
    return "<div style='line-height:2.0'>" + "".join(chips) + "</div>"


# ------------------------------------------------------------------------------------------ experiment charts
def _experiment_rule(axis: str, color: str) -> alt.Chart:
    """A dashed reference rule at 0 on ``axis``, one per panel (aggregated to one row, so it works inside facets)."""
    enc = {axis: alt.datum(0)}
    return alt.Chart().transform_aggregate(n="count()").mark_rule(color=color, strokeDash=[4, 4]).encode(**enc)


def _x_integer(rows: list[dict[str, Any]], field: str) -> bool:
    xs = [r.get(field) for r in rows if r.get(field) is not None]
    return bool(xs) and all(isinstance(v, int) and not isinstance(v, bool) for v in xs)


def experiment_chart(spec: svc.ChartSpec, rows: list[dict[str, Any]]) -> alt.Chart | alt.FacetChart | None:
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
        axis = layer_axis(spec.x_title or spec.x) if _x_integer(rows, spec.x) else alt.Axis(title=spec.x_title)
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
    layers += [_experiment_rule(a, spec.rule_color) for a in spec.zero]
    chart = alt.layer(*layers, data=df)
    if spec.facet:
        panels = spec.panels(rows)
        return chart.properties(height=260).facet(column=alt.Column(f"{spec.facet}:N", title=None, sort=panels))
    return chart.interactive() if spec.kind == "scatter" else chart


# ------------------------------------------------------------------------------------------ steering operations
# (issue 13: per-token traces, the next-token panel, the cosine interval; colours: directions and the roles
# "baseline" / "steered" / "prompted" of the palette)
def column_scale(columns: Sequence[str]) -> alt.Scale:
    """Colours of the generation columns (baseline, steered, prompted) from the palette's roles."""
    return alt.Scale(domain=list(columns), range=[role(c) for c in columns])


_DASHES = {"baseline": [1, 0], "steered": [6, 3], "prompted": [2, 2]}


def trace_chart(tf: pd.DataFrame, value: str = "projection") -> alt.LayerChart:
    """Per generated token, ``value`` (projection h·v̂ or cosine) on each direction (``svc.trace_frame``): colour =
    direction, dash = column (baseline solid, steered dashed, prompted dotted), one shared y axis."""
    names = list(dict.fromkeys(tf["direction"]))
    columns = [c for c in _DASHES if c in set(tf["column"])]
    title = "h · v̂ (unit direction)" if value == "projection" else "cos(h, v)"
    lines = (
        alt.Chart(tf)
        .mark_line(point=alt.OverlayMarkDef(size=22))
        .encode(
            x=alt.X("step:Q", title="generated token", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y(f"{value}:Q", title=title),
            color=alt.Color("direction:N", scale=direction_scale(names), legend=alt.Legend(**_BOTTOM_LEGEND)),
            strokeDash=alt.StrokeDash(
                "column:N",
                scale=alt.Scale(domain=columns, range=[_DASHES[c] for c in columns]),
                legend=alt.Legend(**_BOTTOM_LEGEND, symbolType="stroke", symbolStrokeColor=role("neutral")),
            ),
            detail="column:N",
            tooltip=[
                "column:N",
                "step:Q",
                "token:N",
                "direction:N",
                alt.Tooltip("projection:Q", format="+.3f"),
                alt.Tooltip("cosine:Q", format="+.3f"),
            ],
        )
    )
    return zero_rule() + lines


def kl_chart(kf: pd.DataFrame, diverged: dict[str, int | None]) -> alt.LayerChart:
    """KL(baseline ‖ column) per step (``svc.kl_frame``), with a dashed rule where each column's text diverges."""
    columns = list(dict.fromkeys(kf["column"])) or ["steered"]
    scale = column_scale(columns)
    line = (
        alt.Chart(kf)
        .mark_line(point=True)
        .encode(
            x=alt.X("step:Q", title="generated token", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("kl:Q", title="KL(baseline ‖ column), nats"),
            color=alt.Color("column:N", scale=scale, legend=alt.Legend(**_BOTTOM_LEGEND)),
            tooltip=["column:N", "step:Q", alt.Tooltip("kl:Q", format=".4f")],
        )
    )
    marks = pd.DataFrame([{"column": c, "step": s} for c, s in diverged.items() if s is not None and c in columns])
    if marks.empty:
        return alt.layer(line)
    rules = (
        alt.Chart(marks)
        .mark_rule(strokeDash=[4, 4])
        .encode(x="step:Q", color=alt.Color("column:N", scale=scale, legend=None), tooltip=["column:N", "step:Q"])
    )
    return line + rules


def topk_bars(kf: pd.DataFrame) -> alt.FacetChart:
    """The top-k next tokens of one step (``svc.topk_frame(record, step)``), one panel per column."""
    columns = [c for c in _DASHES if c in set(kf["column"])]
    kf = kf.assign(label=kf["token"].astype(str).str.replace("\n", "⏎").str.replace(" ", "·"))
    return (
        alt.Chart(kf)
        .mark_bar()
        .encode(
            x=alt.X("prob:Q", title="probability", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("label:N", sort=alt.EncodingSortField("rank", order="ascending"), title=None),
            color=alt.Color("column:N", scale=column_scale(columns), legend=None),
            tooltip=["column:N", "rank:Q", "token:N", alt.Tooltip("prob:Q", format=".3f")],
        )
        .properties(width=190, height=max(60, 18 * int(kf["rank"].max() + 1) if len(kf) else 60))
        .facet(column=alt.Column("column:N", title=None, sort=columns))
        .resolve_scale(y="independent")
    )


def cosine_interval_chart(cf: pd.DataFrame) -> alt.LayerChart:
    """cos(harmfulness, refusal) per layer with its bootstrap interval as a band (``svc.cosine_interval_frame``)."""
    base = alt.Chart(cf).encode(x=alt.X("layer:Q", axis=layer_axis()))
    band = base.mark_area(opacity=0.25, color=role("cosine")).encode(
        y=alt.Y("low:Q", title="cos(harmfulness, refusal)", scale=alt.Scale(domain=[-1, 1])), y2="high:Q"
    )
    line = base.mark_line(point=True, color=role("cosine")).encode(
        y="cosine:Q",
        tooltip=[
            "layer:Q",
            alt.Tooltip("cosine:Q", format="+.3f"),
            alt.Tooltip("low:Q", format="+.3f", title="95% low"),
            alt.Tooltip("high:Q", format="+.3f", title="95% high"),
        ],
    )
    return zero_rule() + band + line


# ------------------------------------------------------------------------------------------- Latent Guard methods
def guard_method_scale(series: Sequence[str]) -> alt.Scale:
    """Colours of guard methods (the paper's centroid guard in the Latent Guard colour, the others from the
    palette's series) and of the model's refusal point."""
    others = iter(list(svc.palette()["series"]) * 4)
    rng = []
    for name in series:
        if name.startswith("centroid"):
            rng.append(role("latent"))
        elif name.startswith("model refusal"):
            rng.append(role("own_refusal"))
        else:
            c = next(others)
            while c == role("latent"):
                c = next(others)
            rng.append(c)
    return alt.Scale(domain=list(series), range=rng)


def guard_roc_chart(roc: pd.DataFrame, points: pd.DataFrame, aucs: dict[str, float]) -> alt.LayerChart:
    """ROC curves of every guard method on one chart (``svc.roc_frames``), the chance diagonal, each method's
    operating point at its threshold (``svc.method_points``) and the model's refusal as a point."""
    curves = roc[roc["method"] != ""]
    refusal = roc[roc["method"] == ""]
    series = list(dict.fromkeys(list(curves["series"]) + list(refusal["series"])))
    scale = guard_method_scale(series)
    label = {svc.method_label(m): f"{svc.method_label(m)} (AUC {a:.3f})" for m, a in aucs.items()}
    x = alt.X("fpr:Q", title="false positive rate (harmless flagged)", scale=alt.Scale(domain=[0, 1]))
    y = alt.Y("tpr:Q", title="true positive rate (harmful caught)", scale=alt.Scale(domain=[0, 1]))
    color = alt.Color(
        "series:N",
        scale=scale,
        legend=alt.Legend(**_BOTTOM_LEGEND, columns=2, labelExpr=_label_expr(label), labelLimit=320),
    )
    lines = (
        alt.Chart(curves)
        .mark_line(interpolate="step-after")
        .encode(
            x=x,
            y=y,
            color=color,
            tooltip=[
                "series:N",
                alt.Tooltip("threshold:Q", format="+.4f"),
                alt.Tooltip("fpr:Q", format=".2f"),
                alt.Tooltip("tpr:Q", format=".2f"),
            ],
        )
    )
    diag = (
        alt.Chart(pd.DataFrame({"a": [0.0, 1.0]}))
        .mark_line(color=role("guide_light"), strokeDash=[4, 4])
        .encode(x="a:Q", y="a:Q")
    )
    pts = pd.concat([points.assign(kind="threshold"), refusal.assign(what=refusal["series"], kind="refusal")])
    dots = (
        alt.Chart(pts)
        .mark_point(size=140, filled=True, stroke=role("outline"))
        .encode(
            x="fpr:Q",
            y="tpr:Q",
            color=alt.Color("series:N", scale=scale, legend=None),
            shape=alt.Shape("kind:N", legend=None),
            tooltip=["what:N", alt.Tooltip("fpr:Q", format=".2f"), alt.Tooltip("tpr:Q", format=".2f")],
        )
    )
    return (diag + lines + dots).properties(title="ROC of every guard method (dots: each at its threshold)")


def _label_expr(mapping: dict[str, str]) -> str:
    """A Vega label expression that renames legend entries (unknown ones stay as they are)."""
    parts = [f"datum.label == {_js(k)} ? {_js(v)}" for k, v in mapping.items()]
    return " : ".join([*parts, "datum.label"])


def _js(text: str) -> str:
    import json

    return json.dumps(text)
