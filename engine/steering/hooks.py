"""The steering hooks: per-row addition and ablation at block inputs, inside one context manager.

Contract:
- ``steer(handle, row_specs, prompts, pads, rows=None)`` registers one forward pre-hook per hooked block for a
  left-padded batch (one :class:`~.spec.SteeringSpec` or None per row) and removes every hook on exit, also when the
  body raises (ExitStack). It holds ``handle.lock`` (re-entrant) for its whole body and checks each distinct spec
  once.
- In the hook, per batch row and block l: ``add`` rows get ``h + c * v`` and ``ablate`` rows
  ``h - c * (h . r_hat) r_hat`` (the projection in float32), at the row's positions only; rows without a spec and
  positions outside the row's span are left bit for bit as they were.
- Positions are absolute in the padded sequence; the chunk offset comes from the KV cache's length
  (``engine.decoding.past_length``), so prefill-only steering is identical with the cache on or off.
- ``RowSelection`` tells the hooks which rows of the batch are still computed, for decoders that drop finished rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..decoding import past_length
from ..models import ModelHandle
from ..positions import PromptPositions
from .spec import SteeringSpec, validate_specs

__all__ = ["RowSelection", "steer"]

_INF = 1 << 62


class RowSelection:
    """Which rows of a steered batch are still computed (None = all), shared with the steering hooks."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None


@contextlib.contextmanager
def steer(
    handle: ModelHandle,
    row_specs: Sequence[SteeringSpec | None],
    prompts: Sequence[PromptPositions],
    pads: Sequence[int],
    rows: RowSelection | None = None,
) -> Iterator[None]:
    """Register per-row steering pre-hooks for one padded batch; removed on exit (also on error).

    ``rows`` (optional) says which of the batch's rows are still being computed, for decoders that drop finished
    rows; the hooks then apply each remaining row's own steering. Takes ``handle.lock`` (re-entrant). Each distinct
    spec is checked against the model once.
    """
    if not (len(row_specs) == len(prompts) == len(pads)):
        raise ValueError("row_specs, prompts and pads must have one entry per batch row")
    validate_specs(handle, row_specs)
    with hooks(handle, row_specs, prompts, pads, rows):
        yield


def _spans(
    row_specs: Sequence[SteeringSpec | None], prompts: Sequence[PromptPositions], pads: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the [start, end) positions it is steered at, absolute in the padded sequence."""
    b = len(row_specs)
    starts = torch.zeros(b, dtype=torch.long)
    ends = torch.zeros(b, dtype=torch.long)
    for i, (s, p, k) in enumerate(zip(row_specs, prompts, pads, strict=True)):
        if s is None:
            continue
        if s.positions == "prompt":
            starts[i], ends[i] = k, k + p.n_tokens
        elif s.positions == "context":
            starts[i], ends[i] = k + p.context_start, k + p.context_end
        else:
            starts[i], ends[i] = k, _INF
    return starts, ends


@contextlib.contextmanager
def hooks(
    handle: ModelHandle,
    row_specs: Sequence[SteeringSpec | None],
    prompts: Sequence[PromptPositions],
    pads: Sequence[int],
    rows: RowSelection | None,
) -> Iterator[None]:
    """``steer`` without the checks (the callers inside this package checked the specs already)."""
    b = len(row_specs)
    d = handle.hidden_size
    by_spec: dict[int, set[int]] = {}  # each distinct spec's layers, resolved once (rows of a cell share a spec)
    for s in row_specs:
        if s is not None and id(s) not in by_spec:
            by_spec[id(s)] = set(s.layer_set(handle))
    layer_sets = [set() if s is None else by_spec[id(s)] for s in row_specs]
    wanted = sorted(set().union(*layer_sets)) if layer_sets else []
    starts, ends = _spans(row_specs, prompts, pads)
    with handle.lock, contextlib.ExitStack() as stack:
        for layer in wanted:
            block = handle.layers[layer]
            param = next(block.parameters())
            add = torch.zeros((b, d), dtype=torch.float32)
            unit = torch.zeros((b, d), dtype=torch.float32)
            abl = torch.zeros(b, dtype=torch.float32)
            for i, s in enumerate(row_specs):
                if s is None or layer not in layer_sets[i] or float(s.coeff) == 0.0:
                    continue
                v = s.vector_at(layer)
                if s.operation == "add":
                    add[i] = float(s.coeff) * torch.as_tensor(v)
                else:
                    unit[i] = torch.as_tensor(v / np.float32(np.linalg.norm(v.astype(np.float64))))
                    abl[i] = float(s.coeff)
            add_d = add.to(device=param.device, dtype=param.dtype)[:, None, :] if bool(add.any()) else None
            unit_d = unit.to(param.device)[:, None, :] if bool(abl.any()) else None
            abl_d = abl.to(param.device)[:, None, None]
            st, en = starts.to(param.device), ends.to(param.device)
            if add_d is None and unit_d is None:
                continue

            def pre(
                _m: Any,
                args: tuple,
                kwargs: dict,
                layer: int = layer,
                add_d: torch.Tensor | None = add_d,
                unit_d: torch.Tensor | None = unit_d,
                abl_d: torch.Tensor = abl_d,
                st: torch.Tensor = st,
                en: torch.Tensor = en,
            ) -> Any:
                h = args[0] if args else kwargs["hidden_states"]
                if rows is not None and rows.index is not None:
                    idx = rows.index.to(st.device)
                    st, en, abl_d = st[idx], en[idx], abl_d[idx]
                    add_d = None if add_d is None else add_d[idx]
                    unit_d = None if unit_d is None else unit_d[idx]
                if h.shape[0] != st.shape[0]:
                    raise RuntimeError(f"steering was set up for a batch of {st.shape[0]} rows, got {h.shape[0]}")
                past = past_length(kwargs, layer)
                offset = 0 if past is None else past
                pos = torch.arange(offset, offset + h.shape[1], device=h.device)
                inside = (pos[None, :] >= st[:, None]) & (pos[None, :] < en[:, None])
                if not bool(inside.any()):
                    return None
                m = inside.to(h.dtype)[..., None]
                h2 = h
                if add_d is not None:
                    h2 = h2 + m * add_d
                if unit_d is not None:
                    hf = h2.float()
                    proj = (hf * unit_d).sum(-1, keepdim=True)  # (b, seq, 1): h . r_hat per position
                    h2 = (hf - (inside.float()[..., None] * abl_d) * proj * unit_d).to(h.dtype)
                if args:
                    return (h2, *args[1:]), kwargs
                kwargs = dict(kwargs)
                kwargs["hidden_states"] = h2
                return args, kwargs

            stack.callback(block.register_forward_pre_hook(pre, with_kwargs=True).remove)
        yield
