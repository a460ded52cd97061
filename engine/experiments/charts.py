"""Chart specs: how an experiment's rows are drawn, as data that every renderer reads the same way.

Contract:
- A :class:`ChartSpec` names the columns of the result rows to draw and how: ``kind`` is ``lines`` (one line per
  colour value over a numeric x, e.g. the layer; an optional +-``band``; with ``baseline``, rows whose x is empty are
  the unsteered baseline, drawn as a dashed horizontal rule), ``bars`` (one bar per x category, side by side per
  colour value) or ``scatter`` (one point per row).
- ``facet`` splits the chart into panels (``facets`` picks and orders the panel values drawn); ``where`` keeps only
  the rows whose fields equal the given values; ``zero`` draws reference rules at 0 on the named axes;
  ``y_domain`` fixes the y range.
- Colours come from the project's one palette (``engine.palette``): colour values are looked up in the palette
  group ``palette`` (e.g. ``clusters``, ``directions``, ``roles``); names the group lacks, or ``palette=None``, get
  the palette's series colours by a stable hash of the name (moved to an unused series colour on a clash within
  one chart). ``mark_color``, ``baseline_color`` and ``rule_color``
  are the palette's roles for single-colour marks, baselines and reference rules.
- The experiment PNGs (``engine.experiments.figures``, matplotlib) and the Experiments page (Altair) both render
  these specs generically; no renderer knows an experiment by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import palette as pal

__all__ = ["CHART_KINDS", "ChartSpec"]

CHART_KINDS = ("lines", "bars", "scatter")


@dataclass(frozen=True)
class ChartSpec:
    """How to draw result rows (see the module docstring)."""

    kind: str
    x: str
    y: str
    x_title: str = ""
    y_title: str = ""
    color: str | None = None
    palette: str | None = None
    facet: str | None = None
    facets: tuple[str, ...] | None = None
    band: str | None = None
    baseline: bool = False
    y_domain: tuple[float, float] | None = None
    zero: tuple[str, ...] = ()
    where: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CHART_KINDS:
            raise ValueError(f"chart kind must be one of {CHART_KINDS}, not {self.kind!r}")
        if (self.band or self.baseline) and self.kind != "lines":
            raise ValueError("band and baseline belong to line charts")
        if set(self.zero) - {"x", "y"}:
            raise ValueError(f"zero rules go on axes 'x' and/or 'y', not {self.zero!r}")
        if self.y_domain is not None and not self.y_domain[0] < self.y_domain[1]:
            raise ValueError(f"y_domain must be (low, high), got {self.y_domain!r}")

    # -- which rows
    def rows(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows drawn: those matching ``where`` and, with ``facets``, in one of the chosen panels."""
        out = [r for r in rows if all(r.get(k) == v for k, v in self.where)]
        if self.facet and self.facets is not None:
            out = [r for r in out if r.get(self.facet) in self.facets]
        return out

    def is_baseline(self, row: dict[str, Any]) -> bool:
        """A baseline row of a line chart: its x value is empty (e.g. ``layer=None``, nothing steered)."""
        return self.baseline and row.get(self.x) is None

    def panels(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """Panel values in drawing order (``facets``, else first seen); ``[None]`` without a facet."""
        if not self.facet:
            return [None]
        seen = list(dict.fromkeys(r.get(self.facet) for r in rows))
        return [f for f in self.facets if f in seen] if self.facets is not None else seen

    def series(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """The colour values in first-seen order (baseline rows excluded); ``[]`` without a colour field."""
        if not self.color:
            return []
        return list(dict.fromkeys(str(r.get(self.color)) for r in rows if not self.is_baseline(r)))

    # -- colours (the project's palette)
    def colors(self, names: Sequence[str]) -> dict[str, str]:
        """name -> CSS hex colour: the palette group's colour, else the palette's series colour for the name, moved on
        to the next unused series colour when another name of this chart has it already (colours stay distinct)."""
        group = pal.palette().get(self.palette or "", {})
        out = {n: str(group[n]) for n in names if n in group}
        series = [str(c) for c in pal.palette()["series"]]
        for n in names:
            if n in out:
                continue
            c = pal.color(self.palette or "", n)
            free = [s for s in series if s not in out.values()]
            if c in out.values() and free:
                c = free[(series.index(c) if c in series else 0) % len(free)]
            out[n] = c
        return {n: out[n] for n in names}

    @property
    def mark_color(self) -> str:
        return pal.color("roles", "accent")

    @property
    def baseline_color(self) -> str:
        return pal.color("roles", "baseline")

    @property
    def rule_color(self) -> str:
        return pal.color("roles", "neutral")
