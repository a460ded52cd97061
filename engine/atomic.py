"""Writing cache and output files safely, and reading caches tolerantly.

Contract:
- ``write_bytes(path, data)``, ``write_text(path, text)``, ``write_json(path, obj)`` write through a temporary file
  in the same folder (flushed and fsynced) and ``os.replace`` it over ``path``: a reader sees the old file or the
  new one, never a torn one, whatever kills the writer. The folder is created; files get mode 0644.
- ``read_json_cache(path, validate=...)`` reads a cache file written by ``write_json``. A missing file gives
  ``None``. A file that cannot be read, is not valid UTF-8/JSON, or that ``validate`` rejects (returns False or
  raises ``ValueError``/``TypeError``/``KeyError``) is **set aside** as ``<name>.corrupt-<timestamp>`` (never
  deleted), reported once with a :class:`CacheWarning`, and ``None`` is returned so the caller recomputes it.
  ``read_json_cache`` is for caches only: a file that the user gave must fail with an error instead.
- ``set_aside(path, reason)`` is that move-aside-and-warn step on its own (for other cache formats).
- ``read_regular_file(path, max_bytes)`` reads a file a user named: only a regular file (a FIFO, socket or device
  such as ``/dev/zero`` is refused at once, never waited on or read without end), at most ``max_bytes``; every
  problem is a ``ValueError`` of one line naming the path.
- Output paths: ``safe_stem(name)`` checks a file stem given by a user (no folder parts, no ``..``, no control
  characters); ``check_writable_dir(path)`` checks, **without creating anything**, that ``path`` is a folder or can
  be created as one and is writable (so a long run can refuse a bad ``--out`` before it starts);
  ``check_file_target(path)`` refuses a folder (or a path ending in a separator) where a file is expected.
  All three raise ``ValueError`` with one line that says what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
import unicodedata
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_STEM_CHARS",
    "CacheWarning",
    "check_file_target",
    "check_writable_dir",
    "read_json_cache",
    "read_regular_file",
    "safe_stem",
    "set_aside",
    "write_bytes",
    "write_json",
    "write_text",
]

MAX_STEM_CHARS = 120


class CacheWarning(UserWarning):
    """A cache file was unreadable or malformed; it was set aside and will be recomputed."""


# ------------------------------------------------------------------------------------------------ atomic writes
def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``). Returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            with contextlib.suppress(OSError):  # some file systems do not support fsync; the rename still helps
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are shareable caches and outputs
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8, atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1, ensure_ascii: bool = False) -> Path:
    """Write ``obj`` as JSON (UTF-8; non-JSON values through ``str``), atomically."""
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, default=str))


# ------------------------------------------------------------------------------------------------ reading user files
def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n} bytes"


def read_regular_file(path: str | os.PathLike[str], max_bytes: int, *, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see the module docstring); ValueError otherwise."""
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)  # O_NONBLOCK: opening a FIFO does not wait for a writer
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {p}") from None
    except IsADirectoryError:
        raise ValueError(f"{p}: is a directory, expected a {what}") from None
    except OSError as exc:
        raise ValueError(f"{p}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"{p}: is a directory, expected a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{p}: not a regular file (a pipe, socket or device); give a {what} saved on disk")
        if st.st_size > max_bytes:
            raise ValueError(f"{p}: the {what} is {_size(st.st_size)}; the limit is {_size(max_bytes)}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise ValueError(f"{p}: cannot read the {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while we read it
        raise ValueError(f"{p}: the {what} is over the limit of {_size(max_bytes)}")
    return data


# ------------------------------------------------------------------------------------------------ tolerant reads
def set_aside(path: str | os.PathLike[str], reason: str) -> Path | None:
    """Move a damaged cache file to ``<name>.corrupt-<timestamp>`` and warn once. Returns the new path (None when the
    file could not be moved; it is then left where it is and the warning says so)."""
    p = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = p.with_name(f"{p.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = p.with_name(f"{p.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        os.replace(p, target)
    except OSError as exc:
        warnings.warn(f"{p}: {reason}; could not set it aside ({exc.strerror}); it is ignored", CacheWarning, 2)
        return None
    warnings.warn(f"{p}: {reason}; set aside as {target.name} and recomputed", CacheWarning, 2)
    return target


def read_json_cache(
    path: str | os.PathLike[str],
    validate: Callable[[Any], bool] | None = None,
    *,
    what: str = "cache file",
) -> Any | None:
    """A cache file's JSON, or None when it is missing or damaged (then set aside; see the module docstring)."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        if not p.is_file():
            raise ValueError("not a regular file")
        doc = json.loads(p.read_bytes().decode("utf-8"))
        if validate is not None and validate(doc) is False:
            raise ValueError("unexpected structure")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        # json.JSONDecodeError is a ValueError
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        set_aside(p, f"damaged {what} ({type(exc).__name__}: {detail})")
        return None
    return doc


# ------------------------------------------------------------------------------------------------ output paths
def safe_stem(name: Any, *, what: str = "--name") -> str:
    """``name`` if it is a plain file stem (no folder parts, no ``.``/``..``, no control characters, at most
    ``MAX_STEM_CHARS`` characters); else ValueError."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty file name")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"{what} {name!r} must be a file name without folders; put the folder in --out")
    if name in (".", "..") or name.startswith("."):
        raise ValueError(f"{what} {name!r} must not start with '.'; give a plain file name such as 'mymodel'")
    if len(name) > MAX_STEM_CHARS:
        raise ValueError(f"{what} has {len(name)} characters; the limit is {MAX_STEM_CHARS}")
    for i, ch in enumerate(name):
        if unicodedata.category(ch) in ("Cc", "Cs", "Cf", "Zl", "Zp"):
            raise ValueError(f"{what} has a control or invalid character (U+{ord(ch):04X}) at position {i}")
    return name


def check_writable_dir(path: str | os.PathLike[str], *, what: str = "--out", _for: Path | None = None) -> Path:
    """``path`` as a Path if it is a writable folder or can be created as one; creates nothing."""
    p = Path(path)
    shown = f"{what} {_for if _for is not None else p}"
    probe = p
    while not probe.exists():
        if probe.is_symlink():
            raise ValueError(f"{shown}: {probe} is a broken symbolic link; give another folder")
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        if probe == p and _for is None:
            raise ValueError(f"{shown} is a file, not a folder; give a folder")
        if probe == p:
            raise ValueError(f"{shown}: {probe} is a file, not a folder; give a path in a folder")
        raise ValueError(f"{shown}: {probe} is a file, so the folder cannot be created; give another folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{shown}: no permission to write in {probe}; give a folder you can write to")
    return p


def check_file_target(path: str | os.PathLike[str], *, what: str = "--out", example: str = "name.safetensors") -> Path:
    """``path`` as a Path if it can name a file (not an existing folder, not ending in a separator, its folder
    writable or creatable); creates nothing."""
    text = os.fspath(path)
    p = Path(text)
    if text.endswith(("/", os.sep)) or p.is_dir():
        raise ValueError(f"{what} {text} is a folder; give a file name in it, e.g. {p / example}")
    check_writable_dir(p.parent, what=what, _for=p)
    return p
