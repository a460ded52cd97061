"""Slow reference implementations, kept out of the engine: the benchmarks time them and the tests compare the
engine's batched grid with them.

``steer_refusal_per_layer_loop`` is the paper's way of running the steer-refusal sweep: one ``generate`` call per
(direction, layer), all prompts batched (``batch_size=1`` is the paper's one prompt at a time). It returns the same
records as :func:`engine.experiments.steer_refusal_sweep` (the baseline first, then direction x layer x prompt),
in the same order.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.directions import DirectionBundle  # noqa: E402
from engine.models import ModelHandle  # noqa: E402
from engine.positions import PromptPositions  # noqa: E402
from engine.progress import Progress, report  # noqa: E402
from engine.refusal import is_refusal, refusal_decided  # noqa: E402
from engine.steering import GenerationConfig, SteeringSpec, generate  # noqa: E402

__all__ = ["steer_refusal_per_layer_loop"]


def steer_refusal_per_layer_loop(
    handle: ModelHandle,
    bundle: DirectionBundle,
    instructions: Sequence[str | PromptPositions],
    *,
    layers: Sequence[int] | None = None,
    coeff: float = 1.0,
    directions: Sequence[str] = ("harmfulness", "refusal"),
    max_new_tokens: int = 32,
    batch_size: int = 64,
    early_stop: bool = True,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """One ``generate`` call per (direction, layer); records ``{direction, layer, coeff, index, instruction, text,
    refused}`` like the grid's (baseline: ``direction="none"``, ``layer=None``, ``coeff=0.0``)."""
    layers = list(range(handle.n_layers)) if layers is None else list(layers)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    stop = refusal_decided if early_stop else None
    insts = list(instructions)

    def records(direction: str, layer: int | None, c: float, texts: list[str]) -> list[dict[str, Any]]:
        return [
            {
                "direction": direction,
                "layer": layer,
                "coeff": c,
                "index": k,
                "instruction": inst if isinstance(inst, str) else inst.instruction,
                "text": t,
                "refused": is_refusal(t),
            }
            for k, (inst, t) in enumerate(zip(insts, texts, strict=True))
        ]

    total = 1 + len(directions) * len(layers)
    out = records("none", None, 0.0, generate(handle, insts, None, cfg, stop_fn=stop))
    done = 1
    report(progress, "generating", done, total)
    for d in directions:
        vec = bundle.get(d.lstrip("-")).vectors
        for layer in layers:
            spec = SteeringSpec(vec, (layer,), float(coeff), "prompt")
            out += records(d, layer, float(coeff), generate(handle, insts, spec, cfg, stop_fn=stop))
            done += 1
            report(progress, "generating", done, total)
    return out
