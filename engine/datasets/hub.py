"""Hugging Face data sets through the optional ``datasets`` package, with a short reachability probe."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from urllib.parse import urlparse

from .core import FORMATS, MAX_CHARS, DatasetError, PromptSet
from .files import _build, _check_common, _schema_for_records


def _hub_reachable(timeout: float) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def load_hf(
    dataset_id: str,
    split: str = "train",
    column: str | None = None,
    timeout: float = 10.0,
    *,
    config: str | None = None,
    fmt: str = "auto",
    label: str | None = None,
    name: str | None = None,
    kind: str = "unknown",
    normalize: bool = False,
    limit: int | None = None,
    seed: int = 0,
    max_chars: int = MAX_CHARS,
    strict: bool = False,
) -> PromptSet:
    """Load a data set from the Hugging Face hub with the optional ``datasets`` package.

    The hub is probed with a ``timeout``-second socket connection first (skipped
    when ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set, so cached data sets
    load offline); hub request timeouts are set to ``timeout`` too. Rows are
    read with the same schemas as :func:`load_file`. ``sha256`` is computed
    over the kept raw instructions joined by newlines.
    """
    if fmt not in FORMATS or fmt == "txt":
        raise DatasetError(f"unknown format {fmt!r} for a Hugging Face data set")
    _check_common(kind, max_chars, limit)
    source = f"hf:{dataset_id}" + (f":{split}" if split else "")
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")
    for var in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        os.environ.setdefault(var, str(max(1, int(timeout))))
    try:
        import datasets as hf_datasets  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise DatasetError(
            f"loading {source} needs the Hugging Face 'datasets' package: pip install datasets"
        ) from None
    unreachable = f"could not reach the Hugging Face hub (offline?) for ID: {dataset_id}"
    if not offline and not _hub_reachable(timeout):
        raise DatasetError(f"{unreachable} (set HF_HUB_OFFLINE=1 to use the local cache)")
    try:
        ds = hf_datasets.load_dataset(dataset_id, config, split=split)
        rows = [dict(r) if isinstance(r, Mapping) else r for r in ds]
    except Exception as e:  # the hub raises many unrelated exception types
        network = isinstance(e, (ConnectionError, TimeoutError)) or any(
            s in type(e).__name__ for s in ("Connection", "Timeout", "Offline", "HTTP")
        )
        if offline or network:
            raise DatasetError(f"{unreachable}: {type(e).__name__}: {e}") from e
        raise DatasetError(f"could not load {source}: {type(e).__name__}: {e}") from e
    records = [(i, r) for i, r in enumerate(rows, start=1)]
    if not records:
        raise DatasetError(f"{source}: data set split is empty")
    schema = _schema_for_records(fmt, "json", records, where=source, column=column)
    ps = _build(
        records,
        schema,
        where=source,
        name=name or dataset_id.rsplit("/", 1)[-1],
        kind=kind,
        source=source,
        sha256=None,
        normalize=normalize,
        max_chars=max_chars,
        strict=strict,
        label=label,
    )
    return ps.sample(limit, seed) if limit is not None else ps
