"""The one steering grid: every sweep (layers x coefficients, ablations, reply inversion) as rows of one batch.

Contract:
- ``grid(handle, blocks, cfg)`` is the one primitive for every sweep: each :class:`GridBlock` is prompts x (an
  optional baseline + named vectors x cells), each cell a batch row with its own
  :class:`~engine.steering.spec.SteeringSpec`, all blocks in ONE batched ``generate``; it returns one
  :class:`GridRecord` per row (see ``grid``).
- A block's cells: with ``layer_mode="each"`` (default) one cell per (name, layer, coefficient), each steering one
  layer; with ``layer_mode="together"`` one cell per (name, coefficient) steering all the block's ``layers`` at
  once (e.g. ablation at every layer). ``operation`` (``add`` | ``ablate``) and ``direction_row`` apply to every
  cell of the block (see ``SteeringSpec``).
- Each named vector and each block's layers are checked against the model once; the rows of one cell share one
  spec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

from ..capture import check_rows
from ..decoding import GenerationConfig
from ..models import ModelHandle
from ..positions import PromptPositions, prepare
from ..progress import Progress
from ..refusal import FailedGeneration, refusal_label
from . import generation as _generation
from . import spec as _spec
from .spec import ALL_LAYERS, OPERATIONS, POSITION_MODES, SteeringSpec

__all__ = ["LAYER_MODES", "GridBlock", "GridRecord", "grid"]

LAYER_MODES = ("each", "together")


class GridRecord(TypedDict):
    """One row of a :func:`grid`: which cell it is, which prompt, and what the model wrote.

    ``block``: the block's label; ``direction``: the vector's name, ``"none"`` for a baseline row; ``layer``: the
    steered block input of a one-layer cell (None for a baseline row, and for a cell that steers several layers at
    once: see ``layers``); ``layers``: every steered block input of the cell (None for a baseline row);
    ``operation``: ``add`` | ``ablate`` (None for a baseline row); ``coeff``: the coefficient (0.0 for a baseline
    row); ``positions``: the positions mode (None for a baseline row); ``index``: the prompt's index in its block;
    ``instruction``: the prompt's instruction; ``text``: the generated text; ``refused``: the paper's substring
    rule on ``text`` (:func:`engine.refusal.is_refusal`), None when the decoder stopped the row on an error
    (non-finite logits); ``error``: that reason, else None.
    """

    block: str
    direction: str
    layer: int | None
    layers: list[int] | None
    operation: str | None
    coeff: float
    positions: str | None
    index: int
    instruction: str
    text: str
    refused: bool | None
    error: str | None


@dataclass(frozen=True)
class GridBlock:
    """One block of a steering grid: every prompt x (a baseline row, if ``baseline``, + every name x cell).

    ``prompts``: instructions, or prepared :class:`~engine.positions.PromptPositions` (e.g. a reply-inversion user
    turn with its context span). ``vectors``: name -> (L+1, d) array; the name is what the records carry as
    ``direction`` (``"none"`` is reserved for the baseline). ``layers``: steered block inputs (checked against the
    model, sorted, duplicates dropped), or ``"all"``. ``coeffs``: coefficients, each applied to the raw vector (for
    ``ablate``, the share of the component removed: 1 = all). ``positions``: one mode for every name, or a mapping
    name -> mode (``prompt`` | ``context`` | ``all``, see :class:`SteeringSpec`). ``label``: the block's name in the
    records (e.g. which prompt set it is). ``layer_mode``, ``operation``, ``direction_row``: see the module docstring.
    """

    prompts: Sequence[str | PromptPositions]
    vectors: Mapping[str, Any]
    layers: Sequence[int] | str
    coeffs: Sequence[float]
    positions: str | Mapping[str, str] = "prompt"
    baseline: bool = True
    label: str = ""
    layer_mode: str = "each"
    operation: str = "add"
    direction_row: int | None = None

    def __post_init__(self) -> None:
        for name in ("prompts", "coeffs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.layers, str):
            if self.layers != ALL_LAYERS:
                raise ValueError(f"layers must be a list of block numbers or {ALL_LAYERS!r}, not {self.layers!r}")
        else:
            object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "vectors", dict(self.vectors))
        if not self.prompts:
            raise ValueError("no instructions given")
        if not self.vectors:
            raise ValueError("choose at least one direction to steer with")
        if "none" in self.vectors:
            raise ValueError('"none" names the baseline rows; give that direction another name')
        if not self.layers:
            raise ValueError("choose at least one layer to steer")
        if not self.coeffs:
            raise ValueError("choose at least one coefficient")
        if self.layer_mode not in LAYER_MODES:
            raise ValueError(f"layer_mode must be one of {LAYER_MODES}, not {self.layer_mode!r}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, not {self.operation!r}")
        if not isinstance(self.positions, str):
            modes = dict(self.positions)
            missing, extra = sorted(set(self.vectors) - set(modes)), sorted(set(modes) - set(self.vectors))
            if missing or extra:
                raise ValueError(f"positions must give one mode per direction name: missing {missing}, unknown {extra}")
            object.__setattr__(self, "positions", modes)
        for name in self.vectors:
            if self.mode(name) not in POSITION_MODES:
                raise ValueError(f"positions must be one of {POSITION_MODES}, not {self.mode(name)!r}")

    def mode(self, name: str) -> str:
        """The positions mode of the vector called ``name``."""
        return self.positions if isinstance(self.positions, str) else self.positions[name]

    def cells(self, handle: ModelHandle) -> list[tuple[str, SteeringSpec | None]]:
        """(name, spec) per cell in record order, baseline first; each vector and spec checked once."""
        if isinstance(self.layers, str):
            layers = list(range(handle.n_layers))
        else:
            layers = check_rows(handle, self.layers, steerable=True)
        out: list[tuple[str, SteeringSpec | None]] = [("none", None)] if self.baseline else []
        for name, v in self.vectors.items():
            arr = np.asarray(v, dtype=np.float32)
            _spec.check_vectors(handle, arr)
            groups = [(layer,) for layer in layers] if self.layer_mode == "each" else [tuple(layers)]
            for group in groups:
                for c in self.coeffs:
                    s = SteeringSpec(arr, group, c, self.mode(name), self.operation, self.direction_row)
                    if self.operation == "ablate":
                        s.validate(handle)
                    out.append((name, s))
        return out


def grid(
    handle: ModelHandle,
    blocks: GridBlock | Sequence[GridBlock],
    cfg: GenerationConfig | None = None,
    *,
    stop_fn: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
) -> list[GridRecord]:
    """Every cell of every block as one batch row with its own :class:`SteeringSpec`, in ONE batched ``generate``.

    Returns one :class:`GridRecord` per (block, cell, prompt), in this order: blocks as given; in a block the
    baseline rows first (``direction="none"``, ``layer=None``, ``coeff=0.0``, ``positions=None``), then
    ``for name in vectors: for layer in sorted layers (one group with layer_mode="together"): for coeff in coeffs:
    for prompt in prompts``. Rows stop early when ``stop_fn(text)`` says their answer is decided.
    """
    cfg = cfg or GenerationConfig()
    blocks = [blocks] if isinstance(blocks, GridBlock) else list(blocks)
    if not blocks:
        raise ValueError("the grid has no blocks")
    prompts: list[PromptPositions] = []
    specs: list[SteeringSpec | None] = []
    meta: list[tuple[Any, ...]] = []
    for b in blocks:
        block_prompts = prepare(handle, b.prompts)
        for name, spec in b.cells(handle):
            if spec is None:
                cell: tuple[Any, ...] = (None, None, None, 0.0, None)
            else:
                lay = list(spec.layer_set(handle))
                one = lay[0] if len(lay) == 1 else None
                cell = (one, lay, spec.operation, float(spec.coeff), spec.positions)
            for k, p in enumerate(block_prompts):
                prompts.append(p)
                specs.append(spec)
                meta.append((b.label, name, *cell, k, p.instruction))
    texts = _generation._generate_rows(handle, prompts, specs, cfg, stop_fn=stop_fn, progress=progress)
    return [
        GridRecord(
            block=label,
            direction=name,
            layer=layer,
            layers=layers,
            operation=op,
            coeff=coeff,
            positions=mode,
            index=k,
            instruction=inst,
            text=t,
            refused=refusal_label(t),
            error=t.reason if isinstance(t, FailedGeneration) else None,
        )
        for (label, name, layer, layers, op, coeff, mode, k, inst), t in zip(meta, texts, strict=True)
    ]
