"""Constants and small rules shared by the service's page modules (no model code, no Streamlit, no colours).

Contract:
- ``POSITIONS`` = ("t_inst", "t_post_inst"): the two token positions the app captures, in this order on axis 1 of
  every ``(n, 2, L+1, d)`` array the service returns.
- ``USER_ERRORS`` is the tuple of exceptions a page catches and shows with ``st.error`` (input and engine errors whose
  message says what to do); anything else is a bug and is shown with its traceback collapsed.
- Cluster names come from :mod:`engine.clusters` (the one definition): ``CLUSTER_LABELS`` maps a cluster name to its
  display text; ``YOUR_PROMPTS`` is the display text of the user's own points in maps; ``CLUSTER_KEYS`` maps every
  display text a map can show back to its name in ``engine.clusters`` and in the palette's ``clusters`` group.
  ``cluster_counts_text(counts)`` writes a {cluster name: count} dict as one line of display text.
- ``default_layer(n_layers)`` is the layer every page starts on (the middle block, L // 2).
"""

from __future__ import annotations

from collections.abc import Mapping

from .. import datasets as ds
from ..clusters import CLUSTERS, cluster_label
from ..models import ModelError
from ..storage import StorageError

__all__ = [
    "CLUSTER_KEYS",
    "CLUSTER_LABELS",
    "POSITIONS",
    "USER_ERRORS",
    "YOUR_PROMPTS",
    "cluster_counts_text",
    "default_layer",
]

POSITIONS: tuple[str, str] = ("t_inst", "t_post_inst")
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, ModelError, StorageError, ds.DatasetError, KeyError)

CLUSTER_LABELS: dict[str, str] = {c: cluster_label(c) for c in CLUSTERS}
YOUR_PROMPTS = "your prompts"
CLUSTER_KEYS: dict[str, str] = {**{label: c for c, label in CLUSTER_LABELS.items()}, YOUR_PROMPTS: "your_prompts"}


def default_layer(n_layers: int) -> int:
    """The middle of the network, L // 2 (a steerable block index)."""
    return max(0, min(n_layers - 1, n_layers // 2))


def cluster_counts_text(counts: Mapping[str, int]) -> str:
    """``{"refused_harmful": 3, ...}`` as "refused harmful 3, ..." (names outside the clusters pass through)."""
    return ", ".join(f"{CLUSTER_LABELS.get(k, k)} {v}" for k, v in counts.items())
