"""The Steer page: settings, baseline vs steered side by side, and the layers x coefficients sweep with its tables.

Contract:
- ``SteerSettings`` holds what the page asks for; ``coeff`` is a magnitude and ``reverse`` flips its sign
  (``signed_coeff``). Steering adds ``c * v[l]`` at the input of block l, so steerable layers are 0..L-1.
- ``steer_side_by_side`` returns one record per instruction (instruction, baseline, steered, *_refused) from
  ``engine.steering.side_by_side``; ``on_text(baseline_texts, steered_texts)`` streams partial text.
- ``steer_sweep`` runs ``engine.steering.grid`` over layers x coefficients (at most ``MAX_SWEEP_ROWS`` generations,
  ``ValueError`` beyond) and returns its records, baseline rows with ``layer`` None.
- ``sweep_table`` reduces them to (layer, coeff, refusal_rate, n, change) and the baseline refusal rate;
  ``sweep_cell`` gives one cell's generations next to the baseline; ``sweep_cell_label`` names a cell for a picker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..models import ModelHandle
from ..progress import Progress
from ..steering import GenerationConfig, GridBlock, SteeringSpec, grid, side_by_side

__all__ = [
    "MAX_SWEEP_ROWS",
    "SteerSettings",
    "default_sweep_layers",
    "steer_side_by_side",
    "steer_sweep",
    "sweep_cell",
    "sweep_cell_label",
    "sweep_table",
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

    @property
    def signed_coeff(self) -> float:
        return -float(self.coeff) if self.reverse else float(self.coeff)

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
            "layers": list(self.layers),
            "coeff": self.signed_coeff,
            "positions": self.positions,
            "max_new_tokens": self.max_new_tokens,
            "sampling": self.do_sample,
            "seed": self.seed,
        }


def steer_side_by_side(
    handle: ModelHandle,
    vectors: np.ndarray,
    instructions: Sequence[str],
    settings: SteerSettings,
    on_text: Callable[[list[str], list[str]], None] | None = None,
) -> list[dict[str, Any]]:
    """Baseline and steered generations, one record per instruction (see ``engine.steering.side_by_side``)."""
    if not instructions:
        raise ValueError("type at least one instruction (one per line)")
    if not settings.layers:
        raise ValueError("choose at least one layer to steer")
    spec = SteeringSpec(
        np.asarray(vectors, dtype=np.float32), tuple(settings.layers), settings.signed_coeff, settings.positions
    )
    return side_by_side(handle, list(instructions), spec, settings.generation(), on_text=on_text)


def steer_sweep(
    handle: ModelHandle,
    vectors: np.ndarray,
    instructions: Sequence[str],
    layers: Sequence[int],
    coeffs: Sequence[float],
    settings: SteerSettings,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Layers x coefficients grid (``reverse`` flips every coefficient), plus baseline rows (layer None)."""
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
    return [dict(r) for r in grid(handle, block, settings.generation(), progress=progress)]


def sweep_table(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, float]:
    """(refusal rate per (layer, coeff) cell: layer, coeff, refusal_rate, n; the baseline refusal rate)."""
    df = pd.DataFrame(list(records))
    if df.empty:
        raise ValueError("the sweep produced no generations")
    base = df[df["layer"].isna()]
    base_rate = float(base["refused"].mean()) if len(base) else float("nan")
    cells = df[df["layer"].notna()].copy()
    cells["layer"] = cells["layer"].astype(int)
    grid = cells.groupby(["layer", "coeff"], as_index=False).agg(
        refusal_rate=("refused", "mean"), n=("refused", "size")
    )
    grid["refusal_rate"] = grid["refusal_rate"].astype(float)
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
