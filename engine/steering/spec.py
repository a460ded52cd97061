"""What one batch row is steered with: :class:`SteeringSpec` (operation, vectors, layers, positions), checked once.

Contract:
- ``operation="add"``: ``h <- h + c * v`` at the **input** of each hooked block l (activation addition, the paper's
  steering). ``operation="ablate"``: ``h <- h - c * (h . r_hat) r_hat`` with ``r_hat = v / |v|`` (directional
  ablation, Arditi et al.; ``c = 1``, the default, removes the component along ``r_hat`` entirely; ``c = 0`` is a
  no-op). Row specs of one batch may mix ``add``, ``ablate`` and ``None`` (baseline).
- Which vector at which block: ``v = vectors[l]`` at block l's input (``direction_row=None``: each layer its own
  row, as the paper steers), or ``v = vectors[direction_row]`` at every hooked block (one fixed direction at all
  layers: the Arditi convention for ablation, which picks one row and ablates it everywhere).
- ``layers``: a tuple of steerable blocks (0..L-1) or ``"all"`` (every block, resolved against the model by
  :meth:`SteeringSpec.layer_set`).
- ``positions``: ``prompt`` (every prompt token, prefill only), ``context`` (the prompt's context span only),
  ``all`` (prompt and every generated token).
- Values are checked when the spec is built (coefficient finite, positions, operation, finite (L+1, d) vectors, a
  fixed row in range); :meth:`SteeringSpec.validate` checks it against a model once (shape, layer range, and for
  ``ablate`` a non-zero vector at every hooked block: ablating along a zero vector is undefined and is an error
  that says which row to avoid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..capture import check_rows
from ..models import ModelHandle

__all__ = ["ALL_LAYERS", "OPERATIONS", "POSITION_MODES", "SteeringSpec", "check_vectors"]

POSITION_MODES = ("prompt", "context", "all")
OPERATIONS = ("add", "ablate")
ALL_LAYERS = "all"


@dataclass(frozen=True)
class SteeringSpec:
    """One row's steering: ``operation`` with ``coeff`` and ``vectors`` at ``layers`` and ``positions``.

    ``vectors``: (L+1, d) array, row l = the direction at block l's input (a DirectionSet's ``vectors``).
    ``direction_row``: None = block l uses row l; an integer = every hooked block uses that one row.
    """

    vectors: Any
    layers: tuple[int, ...] | str
    coeff: float = 1.0
    positions: str = "prompt"
    operation: str = "add"
    direction_row: int | None = None

    def __post_init__(self) -> None:
        c = self.coeff
        if isinstance(c, bool) or not isinstance(c, (int, float, np.floating, np.integer)):
            raise ValueError(f"coefficient must be a number, not {c!r}")
        if not math.isfinite(float(c)):
            raise ValueError(f"coefficient must be finite, got {c}")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, not {self.positions!r}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, not {self.operation!r}")
        if isinstance(self.layers, str):
            if self.layers != ALL_LAYERS:
                raise ValueError(f"layers must be a list of block numbers or {ALL_LAYERS!r}, not {self.layers!r}")
        else:
            object.__setattr__(self, "layers", tuple(self.layers))
            if not self.layers:
                raise ValueError("choose at least one layer to steer")
        v = np.asarray(self.vectors)
        if v.ndim != 2:
            raise ValueError(f"steering vectors must be (n_layers + 1, hidden) shaped, got {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError("steering vectors contain NaN or inf")
        r = self.direction_row
        if r is not None:
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= int(r) < v.shape[0]:
                raise ValueError(f"direction_row must be a row of the direction, 0..{v.shape[0] - 1}, not {r!r}")
            object.__setattr__(self, "direction_row", int(r))

    def layer_set(self, handle: ModelHandle) -> tuple[int, ...]:
        """The hooked blocks on this model (``"all"`` = 0..L-1), checked, sorted, without duplicates."""
        if isinstance(self.layers, str):
            return tuple(range(handle.n_layers))
        return tuple(check_rows(handle, self.layers, steerable=True))

    def vector_at(self, layer: int) -> np.ndarray:
        """The (d,) float32 vector this spec uses at block ``layer``'s input (row ``layer`` or ``direction_row``)."""
        row = layer if self.direction_row is None else self.direction_row
        return np.asarray(self.vectors[row], dtype=np.float32)

    def validate(self, handle: ModelHandle) -> None:
        """Check the spec against a model: vector shape (L+1, d), steerable layers, non-zero ablation vectors."""
        _check_shape(handle, np.asarray(self.vectors))
        layers = self.layer_set(handle)
        if self.operation == "ablate":
            rows = sorted({layer if self.direction_row is None else self.direction_row for layer in layers})
            zero = [r for r in rows if not float(np.linalg.norm(np.asarray(self.vectors[r], dtype=np.float64))) > 0]
            if zero:
                raise ValueError(
                    f"cannot ablate along a zero vector: row(s) {zero} of this direction are all zeros (e.g. row 0 "
                    "of a t_post_inst direction: the last prompt token's embedding is the same for every prompt); "
                    "ablate at other layers, or use one fixed non-zero row at every layer (direction_row)"
                )


def _check_shape(handle: ModelHandle, v: np.ndarray) -> None:
    if v.shape != (handle.n_rows, handle.hidden_size):
        raise ValueError(
            f"direction shape {tuple(v.shape)} does not match this model ({handle.n_rows} rows x {handle.hidden_size}); "
            "these directions were computed for another model: recompute them with `python -m engine precompute`"
        )


def check_vectors(handle: ModelHandle, v: np.ndarray) -> None:
    """Check one (L+1, d) array against the model (the grid checks each named vector once through this)."""
    _check_shape(handle, v)


def validate_specs(handle: ModelHandle, specs: Sequence[SteeringSpec | None]) -> None:
    """Check each distinct spec once (rows of one sweep cell share their spec)."""
    seen: set[int] = set()
    for s in specs:
        if s is not None and id(s) not in seen:
            seen.add(id(s))
            s.validate(handle)
