"""Access to the project's one palette, ``assets/palette.json`` (no colour is written in the engine's code).

Contract: ``palette()`` returns the parsed file (groups ``clusters``, ``directions``, ``positions``, ``roles`` map a
name to a CSS hex colour; ``series`` is a list for anything else), read once and cached. ``color(group, name)``
looks one up, falling back to the ``series`` colours by a stable hash of the name for names the file lacks.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from .resources import ASSETS_DIR

__all__ = ["PALETTE_PATH", "color", "palette"]

PALETTE_PATH = ASSETS_DIR / "palette.json"  # checkout, or the installed package data (engine/resources.py)


@functools.cache
def palette() -> dict[str, Any]:
    """The palette file, parsed (cached for the process)."""
    data = json.loads(PALETTE_PATH.read_text(encoding="utf-8"))
    data.pop("_comment", None)
    return data


def color(group: str, name: str) -> str:
    """The colour of ``name`` in ``group`` (e.g. ``color("clusters", "refused_harmful")``)."""
    pal = palette()
    found = pal.get(group, {}).get(name)
    if found:
        return str(found)
    series = pal["series"]
    return str(series[int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % len(series)])
