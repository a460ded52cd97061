"""Residual-stream capture.

Contract:
- Layer convention (written once, here): for a model with L decoder blocks there are L+1 captured rows.
  Row l (0 <= l < L) is the residual stream at the **input** of decoder block l (row 0 = the embeddings), which
  equals Hugging Face ``hidden_states[l]``; row L is the **output of the last block before the final norm**
  (unlike HF ``hidden_states[L]``, which is after the norm). This is the paper's convention.
- Hooks are registered only inside context managers (``record``), through an ExitStack, and are removed even
  when the body raises. Every hooked run holds ``handle.lock``.
- Outputs are CPU float32 numpy arrays. Batches are left padded; explicit ``position_ids`` make a padded row
  compute what it computes alone (equal to one-at-a-time capture up to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .models import ModelHandle
from .positions import PromptPositions, pad_batch, position_ids_for, prepare
from .progress import Progress, report

__all__ = [
    "LAYER_CONVENTION",
    "ActivationSet",
    "PrefillStates",
    "capture",
    "capture_tokens",
    "check_rows",
    "record",
    "recording_positions",
]

LAYER_CONVENTION = (
    "L+1 rows: row l < L = input of decoder block l (row 0 = embeddings, = HF hidden_states[l]); "
    "row L = output of the last block before the final norm"
)
POSITION_NAMES = ("t_inst", "t_post_inst")


def _hidden(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a block's output (a bare tensor in new transformers, a tuple in old)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected decoder block output type {type(output).__name__}")


def check_rows(handle: ModelHandle, rows: Sequence[int] | None, *, steerable: bool = False) -> list[int]:
    """Validate row indices (0..L, or 0..L-1 for steering, where row L has no block input to add to)."""
    top = handle.n_layers - 1 if steerable else handle.n_layers
    if rows is None:
        return list(range(top + 1))
    out = []
    for r in rows:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise ValueError(f"layer {r!r} is not an integer")
        if not 0 <= int(r) <= top:
            what = "steer" if steerable else "capture"
            raise ValueError(
                f"layer {r} is out of range: this model has {handle.n_layers} blocks, so {what} layers are 0..{top}"
            )
        out.append(int(r))
    if not out:
        raise ValueError("no layers chosen")
    return sorted(set(out))


@contextlib.contextmanager
def record(
    handle: ModelHandle,
    rows: Sequence[int] | None = None,
    *,
    select: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Record the residual stream at ``rows`` (see LAYER_CONVENTION) for every forward call in the body.

    Yields ``{row: [tensor per forward call]}``; each tensor is ``select(hidden)`` (default: the whole
    ``(batch, seq, d)`` hidden state), detached. Holds the handle's lock; hooks are gone on exit, even on error.
    """
    rows = check_rows(handle, rows)
    store: dict[int, list[torch.Tensor]] = {r: [] for r in rows}
    sel = select or (lambda h: h)
    layers = handle.layers
    L = handle.n_layers
    with handle.lock, contextlib.ExitStack() as stack:
        for r in rows:
            if r < L:

                def pre(_m: Any, args: tuple, kwargs: dict, r: int = r) -> None:
                    h = args[0] if args else kwargs["hidden_states"]
                    store[r].append(sel(h.detach()))

                stack.callback(layers[r].register_forward_pre_hook(pre, with_kwargs=True).remove)
            else:

                def post(_m: Any, _args: tuple, output: Any, r: int = r) -> None:
                    store[r].append(sel(_hidden(output).detach()))

                stack.callback(layers[L - 1].register_forward_hook(post).remove)
        yield store


def _backbone(handle: ModelHandle) -> Any:
    """The decoder without the LM head: capture needs no logits (they are (batch, seq, vocab), the largest tensor)."""
    base = getattr(handle.model, "base_model", None)
    return base if base is not None and base is not handle.model else handle.model


@dataclass
class ActivationSet:
    """Hidden states at named positions: ``acts`` (n_prompts, n_positions, L+1, d), CPU float32."""

    acts: np.ndarray
    positions: tuple[str, ...]
    prompts: list[PromptPositions] = field(repr=False)

    def at(self, position: str) -> np.ndarray:
        """(n_prompts, L+1, d) at one named position."""
        if position not in self.positions:
            raise ValueError(f"position {position!r} was not captured; have {self.positions}")
        return self.acts[:, self.positions.index(position)]

    @property
    def instructions(self) -> list[str]:
        return [p.instruction for p in self.prompts]


def _index_for(p: PromptPositions, pos: str | int) -> int:
    if pos == "t_inst":
        return p.t_inst
    if pos == "t_post_inst":
        return p.t_post_inst
    if isinstance(pos, (int, np.integer)):
        i = int(pos)
        i = i if i >= 0 else p.n_tokens + i
        if not 0 <= i < p.n_tokens:
            raise ValueError(f"explicit position {pos} is outside a {p.n_tokens}-token prompt")
        return i
    raise ValueError(f"unknown position {pos!r}; use 't_inst', 't_post_inst' or an integer token index")


@torch.no_grad()
def capture(
    handle: ModelHandle,
    items: Sequence[str | PromptPositions],
    positions: Sequence[str | int] = POSITION_NAMES,
    *,
    batch_size: int = 16,
    post_inst: bool = True,
    progress: Progress | None = None,
) -> ActivationSet:
    """Capture all L+1 rows at the given positions for many prompts (batched, left padded)."""
    if not items:
        raise ValueError("no prompts to capture")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    prompts = prepare(handle, items, post_inst=post_inst)
    P, R = len(positions), handle.n_rows
    out = np.zeros((len(prompts), P, R, handle.hidden_size), dtype=np.float32)
    order = sorted(range(len(prompts)), key=lambda i: prompts[i].n_tokens)  # less padding
    done = 0
    for b0 in range(0, len(order), batch_size):
        idx = order[b0 : b0 + batch_size]
        batch = [prompts[i] for i in idx]
        ids, mask, pads = pad_batch(handle, batch)
        with recording_positions(handle, batch, pads, positions) as collect:
            _backbone(handle)(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), use_cache=False)
        out[idx] = collect()
        done += len(idx)
        report(progress, "capturing", done, len(prompts))
    return ActivationSet(acts=out, positions=tuple(str(p) for p in positions), prompts=prompts)


@contextlib.contextmanager
def recording_positions(
    handle: ModelHandle, batch: Sequence[PromptPositions], pads: Sequence[int], positions: Sequence[str | int]
) -> Iterator[Callable[[], np.ndarray]]:
    """``record`` every row (see LAYER_CONVENTION) at ``positions`` of each prompt of a left-padded batch (``pads``
    from ``pad_batch``) during the body's one forward pass over the whole prompts; yields ``collect()``, which after
    that pass returns (b, P, L+1, d) CPU float32. ``capture`` and generation's prompt pass (``PrefillStates``) both
    use it, so they store the same thing."""
    gather = torch.tensor([[pads[j] + _index_for(p, pos) for pos in positions] for j, p in enumerate(batch)])

    def select(h: torch.Tensor) -> torch.Tensor:
        g = gather.to(h.device)
        return h[torch.arange(h.shape[0], device=h.device)[:, None], g].float().cpu()  # (b, P, d)

    with record(handle, None, select=select) as rec:

        def collect() -> np.ndarray:
            if any(len(rec[r]) != 1 for r in range(handle.n_rows)):
                raise RuntimeError("recording_positions expects exactly one forward pass over the prompts")
            return torch.stack([rec[r][0] for r in range(handle.n_rows)], dim=2).numpy()  # (b, P, R, d)

        yield collect


@dataclass
class PrefillStates:
    """Hidden states recorded by generation's prompt pass (``generate(..., prefill=...)``): for each generated
    prompt, ``states[instruction]`` is (P, L+1, d) CPU float32 at ``positions``, the same rows and convention as
    ``capture``. That pass runs the eager model (no packed weights) and no steering, so these are the states
    ``capture`` computes, up to the float rounding that batch composition brings. Labelling by generation fills it,
    so precompute need not run the same prompts through the model a second time."""

    positions: tuple[str | int, ...] = ("t_inst", "t_post_inst")
    states: dict[str, np.ndarray] = field(default_factory=dict)


@torch.no_grad()
def capture_tokens(
    handle: ModelHandle, item: str | PromptPositions, *, post_inst: bool = True
) -> tuple[PromptPositions, np.ndarray]:
    """Every token of one prompt: (positions, acts (n_tokens, L+1, d) CPU float32)."""
    p = prepare(handle, [item], post_inst=post_inst)[0]
    ids, mask, _ = pad_batch(handle, [p])
    with record(handle, None, select=lambda h: h[0].float().cpu()) as rec:
        _backbone(handle)(input_ids=ids, attention_mask=mask, use_cache=False)
    acts = torch.stack([rec[r][0] for r in range(handle.n_rows)], dim=1).numpy()
    return p, acts
