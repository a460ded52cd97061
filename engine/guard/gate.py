"""Guard-gated steering: the Latent Guard decides, per prompt, whether the steering is applied.

Contract:
- The guard reads each prompt's t_inst states (one capture pass, normalised like the bundle's prompts) and flags it
  iff its score >= the threshold (:mod:`.methods`). ``mode="flagged"`` (default) steers the rows the guard flags and
  leaves the others unsteered (e.g. +refusal only on what the guard calls harmful); ``mode="unflagged"`` is the
  reverse, for demos (steer only what the guard calls harmless).
- ``gate_specs(flags, spec, mode)`` is the per-row list of :class:`~engine.steering.SteeringSpec` (``None`` = no
  steering) that ``engine.steering.generate`` takes; every steered row shares the one ``spec``.
- ``gated_generate`` runs all rows in ONE batched ``generate`` with those specs: an unsteered row computes exactly
  what an unsteered run computes (its steering addition is zero or absent), so it matches the unsteered run of the
  same batch. Rows: instruction, score, flagged, steered, text, refused.
- ``gated_side_by_side`` gives per row the baseline and the gated text in ONE batched ``generate``: a baseline row
  for every prompt plus a steered row for the prompts the gate steers; an unsteered prompt's gated text is its
  baseline text. Rows: instruction, score, flagged, steered, baseline, gated, baseline_refused, gated_refused.
  ``on_text(baselines, gateds)`` streams partial text when every row fits in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..directions import DirectionBundle
from ..models import ModelHandle
from ..progress import Progress, staged
from ..refusal import is_refusal
from ..steering import GenerationConfig, SteeringSpec, generate
from .methods import DEFAULT_METHOD, guard_method, t_inst_states

__all__ = ["GATE_MODES", "gate_specs", "gated_generate", "gated_side_by_side", "guard_gate"]

GATE_MODES = ("flagged", "unflagged")


def _check_mode(mode: str) -> str:
    if mode not in GATE_MODES:
        raise ValueError(f"gate mode must be one of {GATE_MODES} (steer what the guard flags, or the reverse)")
    return mode


def gate_specs(
    flags: Sequence[bool] | np.ndarray, spec: SteeringSpec, mode: str = "flagged"
) -> list[SteeringSpec | None]:
    """``spec`` for each row the gate steers, ``None`` for the others."""
    want = _check_mode(mode) == "flagged"
    return [spec if bool(f) == want else None for f in flags]


def guard_gate(
    handle: ModelHandle,
    bundle: DirectionBundle,
    instructions: Sequence[str],
    *,
    method: str = DEFAULT_METHOD,
    threshold: float | str = 0.0,
    normalize: bool | None = None,
    acts: np.ndarray | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(scores, flags, threshold value) of the guard on ``instructions`` (``acts``: their t_inst states, if known)."""
    if not instructions:
        raise ValueError("no instructions given")
    g = guard_method(bundle, method, handle=handle, progress=progress)
    t = g.threshold(threshold)
    if acts is None:
        acts = t_inst_states(
            handle, bundle, instructions, normalize=normalize, progress=staged(progress, "guard: capturing")
        )
    scores = g.score(acts)
    return scores, scores >= t, t


def gated_generate(
    handle: ModelHandle,
    bundle: DirectionBundle,
    instructions: Sequence[str],
    spec: SteeringSpec,
    cfg: GenerationConfig | None = None,
    *,
    method: str = DEFAULT_METHOD,
    threshold: float | str = 0.0,
    mode: str = "flagged",
    normalize: bool | None = None,
    acts: np.ndarray | None = None,
    stop_fn: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Guard, then ONE batched generate with the gated specs (see the module docstring)."""
    _check_mode(mode)
    scores, flags, _ = guard_gate(
        handle,
        bundle,
        instructions,
        method=method,
        threshold=threshold,
        normalize=normalize,
        acts=acts,
        progress=progress,
    )
    specs = gate_specs(flags, spec, mode)
    texts = generate(handle, list(instructions), specs, cfg, stop_fn=stop_fn, progress=progress)
    return [
        {
            "instruction": inst,
            "score": float(s),
            "flagged": bool(f),
            "steered": sp is not None,
            "text": t,
            "refused": is_refusal(t),
        }
        for inst, s, f, sp, t in zip(instructions, scores, flags, specs, texts, strict=True)
    ]


def gated_side_by_side(
    handle: ModelHandle,
    bundle: DirectionBundle,
    instructions: Sequence[str],
    spec: SteeringSpec,
    cfg: GenerationConfig | None = None,
    *,
    method: str = DEFAULT_METHOD,
    threshold: float | str = 0.0,
    mode: str = "flagged",
    normalize: bool | None = None,
    on_text: Callable[[list[str], list[str]], None] | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Baseline and gated generation per instruction, in ONE batched generate (see the module docstring)."""
    _check_mode(mode)
    insts = list(instructions)
    scores, flags, t = guard_gate(
        handle, bundle, insts, method=method, threshold=threshold, normalize=normalize, progress=progress
    )
    specs = gate_specs(flags, spec, mode)
    steered = [k for k, sp in enumerate(specs) if sp is not None]
    items = insts + [insts[k] for k in steered]
    row_specs: list[SteeringSpec | None] = [None] * len(insts) + [spec] * len(steered)
    cfg = cfg or GenerationConfig()
    if on_text is not None and len(items) > cfg.batch_size:
        cfg = GenerationConfig(**{**cfg.__dict__, "batch_size": len(items)})
    n = len(insts)

    def split(texts: list[str]) -> tuple[list[str], list[str]]:
        base = texts[:n]
        gated = list(base)
        for j, k in enumerate(steered):
            gated[k] = texts[n + j]
        return base, gated

    cb = None
    if on_text is not None:

        def cb(texts: list[str]) -> None:
            on_text(*split(texts))

    texts = generate(handle, items, row_specs, cfg, on_text=cb, progress=progress)
    base, gated = split(texts)
    return [
        {
            "instruction": inst,
            "score": float(s),
            "threshold": float(t),
            "flagged": bool(f),
            "steered": sp is not None,
            "baseline": b,
            "gated": g,
            "baseline_refused": is_refusal(b),
            "gated_refused": is_refusal(g),
        }
        for inst, s, f, sp, b, g in zip(insts, scores, flags, specs, base, gated, strict=True)
    ]
