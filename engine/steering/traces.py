"""What a generation can report besides its text: per-token traces on directions, next-token top-k, KL.

Contract:
- :class:`TraceSpec`: named (L+1, d) direction arrays and the captured rows to read (0..L, the layer convention of
  ``engine.capture``: row l < L = input of block l, after any steering hook at that block; row L = the last block's
  output before the final norm). For every generated token it records, per row and direction, the projection
  ``h . v_hat`` on the unit direction (``v_hat = v[row] / |v[row]|``; 0 for a zero row) and the cosine
  ``cos(h, v[row])``.
- Which hidden state belongs to generated token k: the state at the position whose logits chose token k, i.e. the
  last position of the forward that produced it (token 0: the last prompt token, t_post_inst; token k > 0: the
  position of token k-1). That is the state the model "decided" token k from, and it costs nothing extra: the
  hooks gather only the last position of each forward and do one (b, d) x (d, n_directions) matmul per row.
- :class:`RowOutput`: one batch row's result: ``text``, ``token_ids`` and ``tokens`` (each generated token decoded
  alone; an end-of-turn token is not included), and, when asked, per token ``projection`` / ``cosine`` arrays
  (n_tokens, n_rows, n_directions), ``topk`` (per token, k (token, probability) pairs of the unsteered softmax at
  temperature 1, whatever the sampling settings), and for a row compared with a baseline row ``kl`` (per step,
  KL(baseline || this row) of the next-token distributions at the same step, while the two generated texts are
  still the same) with ``diverged_at`` (the step at which the chosen tokens first differ; comparison stops after
  it) and ``compare_end`` (why comparison stopped: "diverged", "ended" or "max_new_tokens").
- ``trace_hooks`` registers the trace hooks in a context manager (ExitStack; removed on exit, also on error) and
  holds ``handle.lock``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..capture import _hidden, check_rows
from ..models import ModelHandle

__all__ = ["RowOutput", "TraceSpec", "trace_hooks"]


@dataclass(frozen=True)
class TraceSpec:
    """Directions (name -> (L+1, d)) and captured rows (0..L) to trace every generated token on."""

    vectors: Mapping[str, Any]
    rows: tuple[int, ...]

    def __post_init__(self) -> None:
        vecs = {str(k): np.asarray(v, dtype=np.float32) for k, v in dict(self.vectors).items()}
        if not vecs:
            raise ValueError("choose at least one direction to trace")
        shapes = {v.shape for v in vecs.values()}
        if len(shapes) != 1 or next(iter(shapes)).__len__() != 2:
            raise ValueError(f"trace directions must all be (n_layers + 1, hidden) shaped, got {sorted(shapes)}")
        if not all(np.isfinite(v).all() for v in vecs.values()):
            raise ValueError("trace directions contain NaN or inf")
        object.__setattr__(self, "vectors", vecs)
        rows = tuple(sorted({int(r) for r in self.rows}))
        if not rows:
            raise ValueError("choose at least one layer to trace")
        object.__setattr__(self, "rows", rows)

    @property
    def names(self) -> list[str]:
        return list(self.vectors)

    def validate(self, handle: ModelHandle) -> None:
        """Check the directions' shape and the rows (0..L) against a model."""
        for name, v in self.vectors.items():
            if v.shape != (handle.n_rows, handle.hidden_size):
                raise ValueError(
                    f"trace direction {name!r} is {v.shape[0]} x {v.shape[1]}; this model needs {handle.n_rows} x "
                    f"{handle.hidden_size}: recompute the directions for this model"
                )
        check_rows(handle, self.rows)

    def units(self, row: int) -> np.ndarray:
        """(d, n_directions) float32 unit vectors of every direction at one row (zero columns for zero rows)."""
        m = np.stack([v[row] for v in self.vectors.values()], axis=1).astype(np.float64)
        n = np.linalg.norm(m, axis=0)
        return (m / np.where(n > 0, n, 1.0)).astype(np.float32)


@dataclass
class RowOutput:
    """One generated row (see the module docstring for every field)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    projection: list[np.ndarray] = field(default_factory=list)  # per token: (n_rows, n_directions)
    cosine: list[np.ndarray] = field(default_factory=list)  # per token: (n_rows, n_directions)
    topk: list[list[tuple[str, float]]] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    compared_with: int | None = None
    diverged_at: int | None = None
    compare_end: str | None = None
    failed: str | None = None  # why the decoder stopped this row on an error (then ``text`` is a FailedGeneration)

    def trace_frame_rows(self, trace: TraceSpec) -> list[dict[str, Any]]:
        """The trace in long format: one dict per (token, row, direction): step, token, row, direction,
        projection, cosine."""
        out = []
        for k, (p, c) in enumerate(zip(self.projection, self.cosine, strict=True)):
            tok = self.tokens[k] if k < len(self.tokens) else ""
            for i, row in enumerate(trace.rows):
                for j, name in enumerate(trace.names):
                    out.append(
                        {
                            "step": k,
                            "token": tok,
                            "row": row,
                            "direction": name,
                            "projection": float(p[i, j]),
                            "cosine": float(c[i, j]),
                        }
                    )
        return out


class TraceBuffer:
    """What the trace hooks saw in the latest forward: per traced row, (projection (b, k), norm (b,))."""

    def __init__(self, rows: tuple[int, ...]) -> None:
        self.rows = rows
        self.latest: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """(projection, cosine), each (b, n_rows, n_directions) float32 on the CPU, of the latest forward."""
        missing = [r for r in self.rows if r not in self.latest]
        if missing:
            raise RuntimeError(f"trace hooks did not fire at rows {missing}")
        proj = torch.stack([self.latest[r][0] for r in self.rows], dim=1).cpu()
        norm = torch.stack([self.latest[r][1] for r in self.rows], dim=1).cpu()
        self.latest = {}
        cos = proj / torch.where(norm > 0, norm, torch.ones_like(norm))[..., None]
        return proj.numpy(), cos.clamp(-1.0, 1.0).numpy()


@contextlib.contextmanager
def trace_hooks(handle: ModelHandle, trace: TraceSpec) -> Iterator[TraceBuffer]:
    """Hooks that record, at every forward, the last position's projections on the trace directions.

    Register them after any steering hooks (pre-hooks run in registration order), so row l reads the stream that
    block l actually receives. Holds ``handle.lock``; removed on exit, also on error.
    """
    buf = TraceBuffer(trace.rows)
    L = handle.n_layers
    layers = handle.layers
    with handle.lock, contextlib.ExitStack() as stack:
        for r in trace.rows:
            block = layers[r] if r < L else layers[L - 1]
            param = next(block.parameters())
            units = torch.as_tensor(trace.units(r), device=param.device)

            def read(h: torch.Tensor, r: int = r, units: torch.Tensor = units) -> None:
                last = h[:, -1, :].detach().float()
                buf.latest[r] = (last @ units, last.norm(dim=-1))

            if r < L:

                def pre(_m: Any, args: tuple, kwargs: dict, read: Any = read) -> None:
                    read(args[0] if args else kwargs["hidden_states"])

                stack.callback(block.register_forward_pre_hook(pre, with_kwargs=True).remove)
            else:

                def post(_m: Any, _args: tuple, output: Any, read: Any = read) -> None:
                    read(_hidden(output))

                stack.callback(block.register_forward_hook(post).remove)
        yield buf
