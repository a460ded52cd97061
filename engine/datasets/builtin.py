"""The built-in instruction sets in the assets folder, and the spec dispatcher (builtin:, hf:, file paths)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from . import hub
from .core import _DEFAULT_ASSETS_DIR, ASSETS_ENV, BUILTIN, SPLITS, DatasetError, PromptSet
from .files import load_file, load_templates


def assets_dir() -> Path:
    """The assets folder: ``$STEERING_EXPLORER_ASSETS`` if set, else the repository's assets/."""
    env = os.environ.get(ASSETS_ENV)
    return Path(env) if env else _DEFAULT_ASSETS_DIR


def load_builtin(name: str, split: str | None = None, *, normalize: bool = False) -> PromptSet:
    """Load a built-in set by name, optionally only its ``train`` or ``test`` split.

    ``normalize`` is ignored for ``jailbreak_templates`` (templates are never
    normalised). The returned set's ``source`` is ``builtin:NAME``; with a split
    its ``name`` is ``NAME:SPLIT``.
    """
    if name not in BUILTIN:
        raise DatasetError(f"unknown built-in set {name!r}; known: {', '.join(BUILTIN)}")
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {list(SPLITS)} or None")
    filename, kind = BUILTIN[name]
    path = assets_dir() / filename
    if not path.exists():
        raise DatasetError(
            f"built-in set {name!r} not found: file not found: {path} (set {ASSETS_ENV} to the assets folder)"
        )
    if kind == "jailbreak_template":
        ps = load_templates(path, fmt="jsonl", name=name)
    else:
        ps = load_file(path, fmt="jsonl", name=name, kind=kind, normalize=normalize)
    ps.source = f"builtin:{name}"
    if split is not None:
        ps = ps.filter(split=split)
        ps.name = f"{name}:{split}"
    return ps


def list_builtin() -> list[dict[str, Any]]:
    """Summary of every built-in set; missing or broken files are reported, not raised."""
    out: list[dict[str, Any]] = []
    for name, (filename, kind) in BUILTIN.items():
        path = assets_dir() / filename
        entry: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "n": 0,
            "n_train": 0,
            "n_test": 0,
            "categories": {},
            "skipped": 0,
            "available": path.exists(),
            "path": str(path),
        }
        if path.exists():
            try:
                ps = load_builtin(name)
            except DatasetError as e:
                entry["error"] = str(e)
            else:
                cats = Counter(it.category or "uncategorized" for it in ps.items)
                entry.update(
                    n=len(ps),
                    n_train=sum(it.split == "train" for it in ps.items),
                    n_test=sum(it.split == "test" for it in ps.items),
                    categories=dict(sorted(cats.items())),
                    skipped=len(ps.skipped),
                )
        out.append(entry)
    return out


def load_any(spec: str | os.PathLike[str], **kw: Any) -> PromptSet:
    """Load from a spec: ``builtin:NAME[:SPLIT]``, ``hf:ID[:SPLIT]`` or a file path.

    Keyword arguments go to the underlying loader; ``limit`` and ``seed`` also
    work for built-in sets.
    """
    if isinstance(spec, os.PathLike):
        return load_file(spec, **kw)
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"empty or invalid data set spec: {spec!r}")
    if spec.startswith("builtin:"):
        parts = spec[len("builtin:") :].split(":")
        if len(parts) > 2 or not parts[0]:
            raise DatasetError(f"bad spec {spec!r}; expected builtin:NAME or builtin:NAME:SPLIT")
        limit = kw.pop("limit", None)
        seed = kw.pop("seed", 0)
        ps = load_builtin(parts[0], parts[1] if len(parts) == 2 else None, **kw)
        return ps.sample(limit, seed) if limit is not None else ps
    if spec.startswith("hf:"):
        rest = spec[len("hf:") :]
        if ":" in rest:
            dataset_id, split = rest.rsplit(":", 1)
            kw["split"] = split
        else:
            dataset_id = rest
        if not dataset_id:
            raise DatasetError(f"bad spec {spec!r}; expected hf:ID or hf:ID:SPLIT")
        return hub.load_hf(dataset_id, **kw)
    path = Path(spec.removeprefix("file:"))
    if not path.exists() and spec in BUILTIN:
        raise DatasetError(f"file not found: {spec} (did you mean builtin:{spec}?)")
    return load_file(path, **kw)
