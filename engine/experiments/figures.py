"""The experiment figures as PNG, drawn with matplotlib from the result's :class:`~.charts.ChartSpec`.

Contract: ``render(result, out)`` writes one PNG (a path or a binary buffer) for any result: one panel per facet
value, drawn by the spec's kind (lines, bars, scatter), colours from the project's palette. A result without a spec
or without rows gives a figure with the title only. Uses the Agg canvas directly (no pyplot state, thread-safe).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .charts import ChartSpec

if TYPE_CHECKING:
    from .results import ExperimentResult

__all__ = ["render"]


def _get(row: dict[str, Any], key: str | None) -> Any:
    return row.get(key) if key is not None else None


def _values(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)


def _lines(ax: Any, spec: ChartSpec, rows: list[dict[str, Any]], colors: dict[str, str]) -> None:
    for name in colors or [None]:
        rr = [r for r in rows if not spec.is_baseline(r) and (name is None or str(_get(r, spec.color)) == name)]
        if not rr:
            continue
        x, y = _values(rr, spec.x), _values(rr, spec.y)
        c = colors.get(name, spec.mark_color) if name is not None else spec.mark_color
        ax.plot(x, y, marker="o", ms=2.5, lw=1.2, label=name, color=c)
        if spec.band:
            s = np.nan_to_num(_values(rr, spec.band))
            ax.fill_between(x, y - s, y + s, color=c, alpha=0.15, lw=0)
    base = [r[spec.y] for r in rows if spec.is_baseline(r) and r.get(spec.y) is not None]
    for i, v in enumerate(base):
        ax.axhline(v, color=spec.baseline_color, ls="--", lw=1, label="baseline" if i == 0 else None)


def _bars(ax: Any, spec: ChartSpec, rows: list[dict[str, Any]], colors: dict[str, str]) -> None:
    cats = list(dict.fromkeys(str(r.get(spec.x)) for r in rows))
    groups: list[str | None] = list(colors) or [None]
    width = 0.8 / len(groups)
    x = np.arange(len(cats))
    for j, g in enumerate(groups):
        vals = [
            next(
                (
                    r.get(spec.y)
                    for r in rows
                    if str(r.get(spec.x)) == c and (g is None or str(_get(r, spec.color)) == g)
                ),
                None,
            )
            for c in cats
        ]
        ax.bar(
            x + (j - (len(groups) - 1) / 2) * width,
            [0.0 if v is None else float(v) for v in vals],
            width=width,
            label=g,
            color=colors[g] if g is not None else spec.mark_color,
        )
    ax.set_xticks(x)
    long = sum(len(c) for c in cats) > 40
    ax.set_xticklabels(cats, rotation=30 if long else 0, ha="right" if long else "center", fontsize=7)


def _scatter(ax: Any, spec: ChartSpec, rows: list[dict[str, Any]], colors: dict[str, str]) -> None:
    for name in colors or [None]:
        rr = [
            r
            for r in rows
            if (name is None or str(_get(r, spec.color)) == name)
            and r.get(spec.x) is not None
            and r.get(spec.y) is not None
        ]
        c = colors.get(name, spec.mark_color) if name is not None else spec.mark_color
        label = None if name is None else f"{name} ({len(rr)})"
        ax.scatter(_values(rr, spec.x), _values(rr, spec.y), s=10, alpha=0.7, label=label, color=c)


_DRAW: dict[str, Callable[[Any, ChartSpec, list[dict[str, Any]], dict[str, str]], None]] = {
    "lines": _lines,
    "bars": _bars,
    "scatter": _scatter,
}


def _panel(ax: Any, spec: ChartSpec, rows: list[dict[str, Any]], colors: dict[str, str], first: bool) -> None:
    from matplotlib.ticker import MaxNLocator

    _DRAW[spec.kind](ax, spec, rows, colors)
    for axis in spec.zero:
        (ax.axhline if axis == "y" else ax.axvline)(0, color=spec.rule_color, lw=0.6)
    if spec.y_domain is not None:
        lo, hi = spec.y_domain
        pad = 0.0 if spec.kind == "bars" else 0.02 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
    xs = [v for r in rows if (v := r.get(spec.x)) is not None]
    if spec.kind != "bars" and xs and all(isinstance(v, (int, np.integer)) for v in xs):  # layers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    if spec.kind != "bars" or spec.x_title:
        ax.set_xlabel(spec.x_title or spec.x)
    if first:
        ax.set_ylabel(spec.y_title or spec.y)


def render(result: ExperimentResult, out: Path | io.BytesIO) -> None:
    """Draw ``result`` with its chart spec and save it as PNG to ``out``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=80)
    FigureCanvasAgg(fig)
    spec = result.chart
    if spec is not None and result.rows:
        rows = spec.rows(result.rows)
        panels = spec.panels(rows)
        colors = spec.colors(spec.series(rows))
        legends: list[list[str]] = []
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            prows = [r for r in rows if panel is None or _get(r, spec.facet) == panel]
            _panel(ax, spec, prows, colors, first=i == 0)
            if panel is not None:
                ax.set_title(str(panel), fontsize=9)
            labels = ax.get_legend_handles_labels()[1]
            if labels and (i == 0 or labels != legends[0]):
                ax.legend(fontsize=6)
            legends.append(labels)
    fig.suptitle(f"{result.title} ({result.model})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, format="png")
