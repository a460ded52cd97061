"""The four clusters of the paper and the one builder of labelled prompt records.

Contract:
- ``CLUSTERS`` names the clusters (refused/accepted x harmful/harmless), written here and only here;
  ``cluster_of(harmful, refused)`` gives a record's cluster and ``cluster_label`` its display text.
- ``prompt_records(harmful_sets, harmless_sets, normalize=...)`` turns prompt sets into records
  ``{"id", "set", "raw", "instruction", "harmful", "category", "split"}`` (instruction normalised when asked: trailing
  punctuation stripped, see ``engine.datasets.normalize_instruction``).
- ``label_records(handle, records, ...)`` adds ``"refused"``, ``"response"`` and ``"cluster"`` from
  :func:`engine.labels.label_refusals` (full chat template; cached on disk). Records keep their order. A prompt
  whose generation failed (non-finite logits) raises :class:`engine.labels.LabelError` by default; with
  ``errors="mark"`` its record gets ``refused=None``, ``cluster=None`` and ``"error"`` (the reason), and
  ``labelled_only(records)`` drops such records (returning how many) before anything counts clusters.
- ``valid_saved_records(doc)`` is the schema check of a saved ``<name>.labels.json`` (a list of objects with
  ``id``/``set``/``instruction`` strings, ``harmful``/``refused`` booleans, ``cluster`` one of ``CLUSTERS``, ...),
  the ``validate`` for :func:`engine.atomic.read_json_cache`: a wrong-shaped file is set aside and recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import datasets as ds
from .capture import PrefillStates
from .labels import DEFAULT_LABEL_TOKENS, label_refusals
from .models import ModelHandle
from .progress import Progress, staged

__all__ = [
    "CLUSTERS",
    "cluster_label",
    "cluster_of",
    "label_records",
    "labelled_only",
    "normalized",
    "prompt_records",
    "valid_saved_records",
]

CLUSTERS: tuple[str, str, str, str] = ("refused_harmful", "accepted_harmful", "refused_harmless", "accepted_harmless")


def cluster_of(harmful: bool, refused: bool) -> str:
    """The cluster name of a prompt: ``{refused|accepted}_{harmful|harmless}``."""
    return f"{'refused' if refused else 'accepted'}_{'harmful' if harmful else 'harmless'}"


def cluster_label(name: str) -> str:
    """Display text of a cluster name ("refused_harmful" -> "refused harmful"); other names pass through."""
    return name.replace("_", " ") if name in CLUSTERS else name


def normalized(text: str, normalize: bool = True) -> str:
    """``text`` normalised as direction building does (kept as is when normalising would empty it)."""
    if not normalize:
        return text
    return ds.normalize_instruction(text) or text


def prompt_records(
    harmful: Sequence[ds.PromptSet], harmless: Sequence[ds.PromptSet], *, normalize: bool = True
) -> list[dict[str, Any]]:
    """One unlabelled record per prompt, harmful sets first (see module docstring)."""
    records: list[dict[str, Any]] = []
    for harm, sets in ((True, harmful), (False, harmless)):
        for ps in sets:
            for it in ps.items:
                records.append(
                    {
                        "id": it.id,
                        "set": ps.name,
                        "raw": it.instruction,
                        "instruction": normalized(it.instruction, normalize),
                        "harmful": harm,
                        "category": it.category,
                        "split": it.split,
                    }
                )
    return records


def label_records(
    handle: ModelHandle,
    records: list[dict[str, Any]],
    *,
    labeller: str = "substring",
    label_tokens: int = DEFAULT_LABEL_TOKENS,
    batch_size: int = 64,
    progress: Progress | None = None,
    errors: str = "raise",
    prefill: PrefillStates | None = None,
) -> list[dict[str, Any]]:
    """Label ``records`` in place (refused, response, cluster; ``error`` for failed ones) and return them;
    ``prefill`` collects the states of the prompts labelled by generation now (``labels.label_refusals``)."""
    labels = label_refusals(
        handle,
        [r["instruction"] for r in records],
        labeller=labeller,
        max_new_tokens=label_tokens,
        batch_size=batch_size,
        progress=staged(progress, "labelling"),
        errors=errors,
        prefill=prefill,
    )
    for r, lab in zip(records, labels, strict=True):
        r["refused"] = lab.refused
        r["response"] = lab.text
        r["cluster"] = None if lab.refused is None else cluster_of(r["harmful"], lab.refused)
        if lab.error is not None:
            r["error"] = lab.error
    return records


def labelled_only(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The records that have a label (``refused`` is True or False), and how many were dropped (failed ones)."""
    kept = [r for r in records if isinstance(r.get("refused"), bool)]
    return kept, len(records) - len(kept)


_SAVED_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "set": (str,),
    "instruction": (str,),
    "harmful": (bool,),
    "refused": (bool,),
    "category": (str, type(None)),
    "split": (str, type(None)),
    "response": (str,),
}


def valid_saved_records(doc: Any) -> bool:
    """True if ``doc`` is a list of labelled records as ``precompute`` saves them (see the module docstring)."""
    if not isinstance(doc, list):
        return False
    for r in doc:
        if not isinstance(r, dict) or r.get("cluster") not in CLUSTERS:
            return False
        for k, types in _SAVED_TYPES.items():
            if k in r and not isinstance(r[k], types):
                return False
        if not all(isinstance(r.get(k), bool) for k in ("harmful", "refused")):
            return False
        if r["cluster"] != cluster_of(r["harmful"], r["refused"]):
            return False
    return True
