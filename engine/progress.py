"""The one progress-callback type of the engine.

Contract: a long-running function takes ``progress: Progress | None`` and calls ``progress(stage, done, total)``
with a short stage name ("capturing", "labelling", "generating", ...), ``0 <= done <= total``. A caller that
runs several steps renames their stages with :func:`staged`.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "report", "staged"]

Progress = Callable[[str, int, int], None]


def report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(stage, int(done), int(total))


def staged(progress: Progress | None, stage: str) -> Progress | None:
    """A callback that reports every call of the inner step under ``stage`` (None stays None)."""
    if progress is None:
        return None
    outer = progress

    def inner(_stage: str, done: int, total: int) -> None:
        outer(stage, done, total)

    return inner
