"""Activation steering and directional ablation, (batched, streamed, traced) generation, and the one steering grid.

The face of a package with one module per concern; ``from engine.steering import NAME`` works for every name below:

- ``spec``       :class:`SteeringSpec` (``add`` | ``ablate``, layers or ``"all"``, positions, fixed direction row)
- ``hooks``      ``steer(...)``: the per-row steering pre-hooks, inside one context manager
- ``traces``     :class:`TraceSpec` (per-token projections on directions), :class:`RowOutput`, the trace hooks
- ``generation`` ``generate`` (texts), ``generate_rows`` (tokens, traces, top-k, KL), ``side_by_side`` (baseline,
  steered and a system-prompt column)
- ``grid``       :class:`GridBlock`, :class:`GridRecord`, ``grid``: every sweep as rows of one batch

Contract (kept from the single module this package replaces):
- Activation addition ``h <- h + c * v[l]`` at the **input** of block l (row l of a direction set), or directional
  ablation ``h <- h - c (h . r_hat) r_hat``, for one or several layers, per batch row: every row carries its own
  :class:`SteeringSpec` (or none = baseline), so baseline, added and ablated rows, or a whole sweep, run in one
  batched ``generate``.
- Positions: ``prompt`` (every prompt token, prefill only: generated tokens are not steered), ``context`` (the
  prompt tokens of the context span only, e.g. "User wants to ..." in reply inversion), ``all`` (prompt and every
  generated token). Positions are absolute in the padded sequence; the chunk offset comes from the KV cache's
  length, so prefill-only steering is identical with the cache on or off.
- Validation happens once: a spec checks its own values when built; ``generate`` and ``steer`` check each *distinct*
  spec against the model once, not once per row; ``grid`` checks each named vector and its layer list once.
- Hooks exist only inside context managers (``steer``, the trace hooks), registered through an ExitStack and
  removed even when the body raises. Every steered or generating run holds ``handle.lock``.
- Greedy decoding by default; sampling with an explicit seed (settings and the next-token rule: ``engine.decoding``;
  ``GenerationConfig`` is re-exported here).
"""

from __future__ import annotations

from ..decoding import GenerationConfig
from .generation import COLUMNS, generate, generate_rows, prompt_pass, side_by_side
from .grid import LAYER_MODES, GridBlock, GridRecord, grid
from .hooks import RowSelection, steer
from .spec import ALL_LAYERS, OPERATIONS, POSITION_MODES, SteeringSpec
from .traces import RowOutput, TraceSpec

__all__ = [
    "ALL_LAYERS",
    "COLUMNS",
    "LAYER_MODES",
    "OPERATIONS",
    "POSITION_MODES",
    "GenerationConfig",
    "GridBlock",
    "GridRecord",
    "RowOutput",
    "RowSelection",
    "SteeringSpec",
    "TraceSpec",
    "generate",
    "generate_rows",
    "grid",
    "prompt_pass",
    "side_by_side",
    "steer",
]
