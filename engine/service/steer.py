"""The Steer page: settings, baseline vs steered side by side, and the layers x coefficients sweep with its tables.

Contract:
- ``SteerSettings`` holds what the page asks for; ``coeff`` is a magnitude and ``reverse`` flips its sign
  (``signed_coeff``). ``operation="add"`` adds ``c * v[l]`` at the input of block l, so steerable layers are
  0..L-1; ``operation="ablate"`` removes the direction (``h - (h . r_hat) r_hat``, coefficient 1, no reverse) at
  the chosen layers or every layer (``all_layers``), with one fixed row of the direction at every layer
  (``direction_row``, the Arditi convention) or each layer's own row (``direction_row=None``).
  ``system_prompt`` adds the prompting column; ``trace_row`` (a captured row 0..L, None = off) traces every
  generated token on the given trace directions; ``topk`` (0 = off) gives the next-token top-k and the KL curves.
- ``steer_side_by_side`` returns one record per instruction (instruction, baseline, steered, *_refused; prompted
  with a system prompt; trace / topk / kl / diverged_at / compare_end when asked) from
  ``engine.steering.side_by_side``; ``on_text(baseline_texts, steered_texts)`` streams partial text and
  ``on_update(records)`` partial records.
- Frames of one record: ``trace_frame`` (step, token, column, direction, projection, cosine), ``topk_frame``
  (column, step, rank, token, prob), ``kl_frame`` (column, step, kl) and ``kl_note`` (where each comparison
  stopped, in words); ``text_rows`` strips a record to its texts and marks (for the report).
- ``steer_sweep`` runs ``engine.steering.grid`` over layers x coefficients (at most ``MAX_SWEEP_ROWS`` generations,
  ``ValueError`` beyond) and returns its records, baseline rows with ``layer`` None.
- ``sweep_table`` reduces them to (layer, coeff, refusal_rate, n, change) and the baseline refusal rate;
  ``sweep_cell`` gives one cell's generations next to the baseline; ``sweep_cell_label`` names a cell for a picker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..models import ModelHandle
from ..progress import Progress
from ..steering import COLUMNS, GenerationConfig, GridBlock, SteeringSpec, TraceSpec, grid, side_by_side
from .limits import Budget

__all__ = [
    "COLUMNS",
    "MAX_SWEEP_ROWS",
    "SteerSettings",
    "default_sweep_layers",
    "kl_frame",
    "kl_note",
    "steer_side_by_side",
    "steer_sweep",
    "sweep_cell",
    "sweep_cell_label",
    "sweep_table",
    "text_rows",
    "topk_frame",
    "trace_frame",
]

MAX_SWEEP_ROWS = 512


def default_sweep_layers(n_layers: int, k: int = 4) -> list[int]:
    """About ``k`` evenly spaced steerable layers around the middle of the network."""
    if n_layers <= k:
        return list(range(n_layers))
    lo, hi = max(1, n_layers // 5), min(n_layers - 1, (4 * n_layers) // 5)
    return sorted({round(float(x)) for x in np.linspace(lo, hi, k)})


@dataclass(frozen=True)
class SteerSettings:
    """What the Steer page asks for (``coeff`` is the magnitude; ``reverse`` flips its sign)."""

    direction: str = "harmfulness"
    layers: tuple[int, ...] = ()
    coeff: float = 1.0
    reverse: bool = False
    positions: str = "prompt"
    max_new_tokens: int = 48
    do_sample: bool = False
    seed: int = 0
    operation: str = "add"
    all_layers: bool = False
    direction_row: int | None = None
    system_prompt: str | None = None
    trace_row: int | None = None
    topk: int = 0

    @property
    def signed_coeff(self) -> float:
        if self.operation == "ablate":
            return 1.0
        return -float(self.coeff) if self.reverse else float(self.coeff)

    def spec(self, vectors: np.ndarray) -> SteeringSpec:
        """The steering spec these settings describe (``ValueError`` when no layer is chosen)."""
        if not self.layers and not self.all_layers:
            raise ValueError("choose at least one layer to steer")
        layers: tuple[int, ...] | str = "all" if self.all_layers else tuple(self.layers)
        return SteeringSpec(
            np.asarray(vectors, dtype=np.float32),
            layers,
            self.signed_coeff,
            self.positions,
            self.operation,
            self.direction_row,
        )

    def generation(self, batch_size: int = 16) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=int(self.max_new_tokens),
            do_sample=bool(self.do_sample),
            seed=int(self.seed),
            batch_size=batch_size,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "operation": self.operation,
            "layers": "all" if self.all_layers else list(self.layers),
            "direction_row": "each layer its own" if self.direction_row is None else self.direction_row,
            "coeff": self.signed_coeff,
            "positions": self.positions,
            "max_new_tokens": self.max_new_tokens,
            "sampling": self.do_sample,
            "seed": self.seed,
            "system_prompt": self.system_prompt,
            "trace_row": self.trace_row,
            "topk": self.topk,
        }


def steer_side_by_side(
    handle: ModelHandle,
    vectors: np.ndarray,
    instructions: Sequence[str],
    settings: SteerSettings,
    on_text: Callable[[list[str], list[str]], None] | None = None,
    *,
    trace_vectors: Mapping[str, np.ndarray] | None = None,
    on_update: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Baseline and steered generations (and the system-prompt column), one record per instruction (see
    ``engine.steering.side_by_side``); traces on ``trace_vectors`` (name -> (L+1, d)) at ``settings.trace_row``."""
    if not instructions:
        raise ValueError("type at least one instruction (one per line)")
    spec = settings.spec(vectors)
    trace = None
    if settings.trace_row is not None and trace_vectors:
        trace = TraceSpec(dict(trace_vectors), (int(settings.trace_row),))
    return side_by_side(
        handle,
        list(instructions),
        spec,
        settings.generation(),
        on_text=on_text,
        system_prompt=settings.system_prompt,
        trace=trace,
        topk=int(settings.topk),
        on_update=on_update,
    )


def text_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without their traces, top-k and KL (instruction, texts and refusal marks), for tables and reports."""
    keep = ("instruction", "system_prompt", *COLUMNS, *(f"{c}_refused" for c in COLUMNS))
    return [{k: r[k] for k in keep if k in r} for r in records]


def trace_frame(record: dict[str, Any]) -> pd.DataFrame:
    """One record's per-token trace, long format: step, token, column, direction, row, projection, cosine."""
    rows = [{**t, "column": col} for col, ts in (record.get("trace") or {}).items() for t in ts]
    cols = ["step", "token", "column", "direction", "row", "projection", "cosine"]
    return pd.DataFrame(rows, columns=cols)


def topk_frame(record: dict[str, Any], step: int | None = None) -> pd.DataFrame:
    """One record's next-token top-k, long format: column, step, rank, token, prob (one step, or every step)."""
    rows = []
    for col, steps in (record.get("topk") or {}).items():
        for s, pairs in enumerate(steps):
            if step is not None and s != step:
                continue
            for rank, (tok, p) in enumerate(pairs):
                rows.append({"column": col, "step": s, "rank": rank, "token": tok, "prob": float(p)})
    return pd.DataFrame(rows, columns=["column", "step", "rank", "token", "prob"])


def kl_frame(record: dict[str, Any]) -> pd.DataFrame:
    """KL(baseline || column) per step while the two texts were the same: column, step, kl."""
    rows = [
        {"column": col, "step": s, "kl": float(k)}
        for col, ks in (record.get("kl") or {}).items()
        for s, k in enumerate(ks)
    ]
    return pd.DataFrame(rows, columns=["column", "step", "kl"])


def kl_note(record: dict[str, Any]) -> str:
    """Where each comparison with the baseline stopped, in words."""
    parts = []
    for col, end in (record.get("compare_end") or {}).items():
        if end == "diverged":
            parts.append(f"{col}: the texts diverge at step {record['diverged_at'][col]}; compared up to there")
        elif end == "ended":
            parts.append(f"{col}: the same text until a reply ended; compared up to there")
        elif end == "max_new_tokens":
            parts.append(f"{col}: the same text for every generated step")
        else:
            parts.append(f"{col}: still the same text so far")
    return "; ".join(parts)


def steer_sweep(
    handle: ModelHandle,
    vectors: np.ndarray,
    instructions: Sequence[str],
    layers: Sequence[int],
    coeffs: Sequence[float],
    settings: SteerSettings,
    progress: Progress | None = None,
    budget: Budget | None = None,
) -> list[dict[str, Any]]:
    """Layers x coefficients grid (``reverse`` flips every coefficient), plus baseline rows (layer None).

    With ``budget`` (the app passes ``Budget()``), the sweep stops at its next batch once the budget is spent, with
    :class:`~.limits.RunBudgetExceeded` (one error line on the page)."""
    if not instructions:
        raise ValueError("type at least one instruction (one per line)")
    if not layers:
        raise ValueError("choose at least one layer for the sweep")
    if not coeffs:
        raise ValueError("choose at least one coefficient for the sweep")
    n = len(instructions) * (len(layers) * len(coeffs) + 1)
    if n > MAX_SWEEP_ROWS:
        raise ValueError(
            f"this sweep needs {n} generations (instructions x (layers x coefficients + 1)); the limit is "
            f"{MAX_SWEEP_ROWS}: use fewer layers, coefficients or instructions"
        )
    sign = -1.0 if settings.reverse else 1.0
    signed = [sign * float(c) for c in coeffs]
    block = GridBlock(
        list(instructions),
        {"direction": np.asarray(vectors, dtype=np.float32)},
        list(layers),
        signed,
        positions=settings.positions,
    )
    if budget is not None:
        progress = budget.guard(progress, "the sweep")
    return [dict(r) for r in grid(handle, block, settings.generation(), progress=progress)]


def sweep_table(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, float]:
    """(refusal rate per (layer, coeff) cell: layer, coeff, refusal_rate, n, errors; the baseline refusal rate).

    Rows the decoder stopped on an error (``refused`` None: non-finite logits) are left out of the rate and counted in
    ``errors``: an overflow is not a refusal."""
    df = pd.DataFrame(list(records))
    if df.empty:
        raise ValueError("the sweep produced no generations")
    df["failed"] = df["refused"].isna()
    df["refused_f"] = df["refused"].map(lambda v: float(v) if v is not None and v == v else float("nan"))
    base = df[df["layer"].isna()]
    base_rate = float(base["refused_f"].mean()) if len(base) else float("nan")
    cells = df[df["layer"].notna()].copy()
    cells["layer"] = cells["layer"].astype(int)
    grid = cells.groupby(["layer", "coeff"], as_index=False).agg(
        refusal_rate=("refused_f", "mean"), n=("refused_f", "size"), errors=("failed", "sum")
    )
    grid["refusal_rate"] = grid["refusal_rate"].astype(float)
    grid["errors"] = grid["errors"].astype(int)
    grid["change"] = grid["refusal_rate"] - base_rate
    return grid, base_rate


def sweep_cell_label(layer: int, coeff: float) -> str:
    """The name of one sweep cell, e.g. "layer 2 · coeff +0.5" (the Steer page's cell picker)."""
    return f"layer {int(layer)} · coeff {float(coeff):+g}"


def sweep_cell(records: Sequence[dict[str, Any]], layer: int, coeff: float) -> pd.DataFrame:
    """The generations of one cell next to the baseline: instruction, baseline, steered, *_refused."""
    base = {r["index"]: r for r in records if r["layer"] is None}
    rows = []
    for r in records:
        if r["layer"] is not None and int(r["layer"]) == int(layer) and math.isclose(float(r["coeff"]), float(coeff)):
            b = base.get(r["index"], {})
            rows.append(
                {
                    "instruction": r["instruction"],
                    "baseline": b.get("text", ""),
                    "baseline_refused": bool(b.get("refused", False)),
                    "steered": r["text"],
                    "steered_refused": bool(r["refused"]),
                }
            )
    if not rows:
        raise ValueError(f"no sweep cell at layer {layer}, coefficient {coeff}")
    return pd.DataFrame(rows)
