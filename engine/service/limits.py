"""Bounded work in the app: the one place for row caps on uploads and the time budget of long runs.

The app serves one model to every browser session; its hooked runs take the model's lock (``handle.lock``) one batch
at a time. These limits keep one session from holding it for hours:

- ``max_rows()``: at most this many prompts from uploads per run (``STEERING_EXPLORER_MAX_ROWS``, default
  ``DEFAULT_MAX_ROWS`` = 2,000). ``cap_rows(items, what)`` keeps the first ``max_rows()`` and says how many it
  dropped; ``check_rows(n, what)`` refuses (``ValueError``) a run over the cap, naming the count and the variable.
- ``max_run_s()``: a long run (Directions recompute, Guard evaluation, the Steer page's sweep) stops after this many
  seconds (``STEERING_EXPLORER_MAX_RUN_S``, default ``DEFAULT_MAX_RUN_S`` = 600). ``Budget`` is one run's clock;
  ``run_chunked(items, fn, budget)`` calls ``fn`` on chunks of ``CHUNK`` items, pauses briefly between chunks so a
  waiting session can take the model's lock, and stops (keeping the finished chunks) once the budget is spent;
  ``budget.guard(progress)`` wraps an engine progress callback so a run without chunks of its own (precompute)
  stops at its next progress report with :class:`RunBudgetExceeded` (a ``ValueError``: one ``st.error`` line).

Both variables are read on every call (so a test or an admin can change them without a restart); a value that is not
a positive number is ignored with the default used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..progress import Progress

__all__ = [
    "CHUNK",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_MAX_RUN_S",
    "MAX_ROWS_ENV",
    "MAX_RUN_S_ENV",
    "Budget",
    "Chunked",
    "RunBudgetExceeded",
    "cap_rows",
    "check_rows",
    "max_rows",
    "max_run_s",
    "run_chunked",
]

MAX_ROWS_ENV = "STEERING_EXPLORER_MAX_ROWS"
MAX_RUN_S_ENV = "STEERING_EXPLORER_MAX_RUN_S"
DEFAULT_MAX_ROWS = 2000
DEFAULT_MAX_RUN_S = 600.0
CHUNK = 32
_PAUSE_S = 0.005  # between chunks: long enough for a thread waiting on the model's lock to take it

T = TypeVar("T")
R = TypeVar("R")


def _positive(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    try:
        v = float(raw) if raw else default
    except ValueError:
        return default
    return v if v > 0 and v == v and v != float("inf") else default


def max_rows() -> int:
    """The row cap on uploads (``STEERING_EXPLORER_MAX_ROWS``)."""
    return max(int(_positive(MAX_ROWS_ENV, DEFAULT_MAX_ROWS)), 1)


def max_run_s() -> float:
    """The time budget of one long run in seconds (``STEERING_EXPLORER_MAX_RUN_S``)."""
    return _positive(MAX_RUN_S_ENV, DEFAULT_MAX_RUN_S)


def cap_rows(items: Sequence[T], what: str) -> tuple[list[T], str | None]:
    """The first ``max_rows()`` items, and a message saying how many were dropped (None when none were)."""
    cap = max_rows()
    if len(items) <= cap:
        return list(items), None
    dropped = len(items) - cap
    return list(items[:cap]), (
        f"{what}: {len(items):,} rows; only the first {cap:,} are used, {dropped:,} dropped "
        f"(the app's limit per run, {MAX_ROWS_ENV})"
    )


def check_rows(n: int, what: str) -> None:
    """``ValueError`` when a run would take ``n`` rows, over ``max_rows()``."""
    cap = max_rows()
    if n > cap:
        raise ValueError(
            f"{what}: {n:,} prompts; the app runs at most {cap:,} per run ({MAX_ROWS_ENV}). Use fewer rows, or "
            "`python -m engine` on the command line for big files"
        )


class RunBudgetExceeded(ValueError):
    """A long run stopped at its time budget (``STEERING_EXPLORER_MAX_RUN_S``)."""


@dataclass
class Budget:
    """One run's clock: ``seconds`` from creation (default ``max_run_s()``)."""

    seconds: float = field(default_factory=max_run_s)
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def exceeded(self) -> bool:
        return self.elapsed() >= self.seconds

    def message(self, what: str, done: int | None = None, total: int | None = None) -> str:
        part = f" after {done:,} of {total:,}" if done is not None and total is not None else ""
        return f"{what} stopped{part}: the app's time budget of {self.seconds:g} s per run is spent ({MAX_RUN_S_ENV})"

    def guard(self, progress: Progress | None, what: str) -> Progress:
        """``progress`` that raises :class:`RunBudgetExceeded` at its first call after the budget is spent."""

        def cb(stage: str, done: int, total: int) -> None:
            if progress is not None:
                progress(stage, done, total)
            if self.exceeded():
                raise RunBudgetExceeded(self.message(what))

        return cb


@dataclass
class Chunked:
    """What :func:`run_chunked` did: one result per finished chunk, items done, and whether the budget stopped it."""

    results: list = field(default_factory=list)
    done: int = 0
    total: int = 0
    stopped: bool = False


def run_chunked(
    items: Sequence[T],
    fn: Callable[[list[T]], R],
    budget: Budget | None = None,
    *,
    chunk: int = CHUNK,
    progress: Progress | None = None,
    stage: str = "chunks",
) -> Chunked:
    """``fn`` over ``items`` in chunks of ``chunk`` (each chunk takes and releases the model's lock inside ``fn``),
    pausing briefly between chunks; stops before a chunk once ``budget`` is spent (the finished chunks are kept)."""
    if chunk < 1:
        raise ValueError(f"chunk size must be at least 1, got {chunk}")
    budget = budget or Budget()
    out = Chunked(total=len(items))
    for i in range(0, len(items), chunk):
        if i and budget.exceeded():
            out.stopped = True
            break
        part = list(items[i : i + chunk])
        out.results.append(fn(part))
        out.done += len(part)
        if progress is not None:
            progress(stage, out.done, out.total)
        if out.done < out.total:
            time.sleep(_PAUSE_S)
    return out
