"""Per-category harmfulness directions (the authors' LessWrong reply): how far they agree with each other and with
the general harmfulness direction.

Contract: ``category_directions(ctx, source=...)`` returns ``(rows, notes)`` with one row per layer and pair of
directions ``{layer, a, b, cosine}`` ("general" = the bundle's harmfulness direction). ``source``: ``bundle`` (the
bundle's ``category:*`` directions, train split), ``data`` (mean of each category's prompts at t_inst minus the
accepted-harmless centroid, from ``data.categories``), ``auto`` (the data's categories when the caller gave some,
i.e. any data but the built-in sets, else the bundle's).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..directions import DirectionSet, layer_cosines
from .context import RunContext
from .results import num

__all__ = ["category_directions"]

Rows = list[dict[str, Any]]
SOURCES = ("auto", "bundle", "data")


def _category_dirs(ctx: RunContext, source: str) -> tuple[dict[str, DirectionSet], str]:
    have = {n.split(":", 1)[1]: ctx.bundle.get(n) for n in ctx.bundle.categories()}
    given = ctx.data.source != "builtin" and any(len(s) for s in ctx.data.categories)
    if source == "bundle" or (source == "auto" and len(have) >= 2 and not given):
        return have, "category directions from the bundle (train split)"
    recs = ctx.records(ctx.data.categories, "harmful", None, held_out=False)
    by: dict[str, list[str]] = {}
    for r in recs:
        if r["category"]:
            by.setdefault(r["category"], []).append(r["instruction"])
    by = {c: v for c, v in by.items() if len(v) >= 2}
    if not by:
        return have, "category directions from the bundle (data.categories has no category with 2 or more prompts)"
    neg = ctx.bundle.harmfulness.neg_centroid
    if neg is None:
        raise ValueError("the harmfulness direction has no accepted-harmless centroid")
    all_insts = [i for v in by.values() for i in v]
    acts = ctx.acts(all_insts, stage="capturing")[:, 0]
    out, k = {}, 0
    for c, v in sorted(by.items()):
        mu = acts[k : k + len(v)].mean(0)
        k += len(v)
        out[c] = DirectionSet(
            name=f"category:{c}", vectors=mu - neg, position="t_inst", pos_centroid=mu, neg_centroid=neg, n_pos=len(v)
        )
    return (
        out,
        "category directions computed from data.categories: mean(category prompts at t_inst) - accepted-harmless centroid (train)",
    )


def category_directions(ctx: RunContext, *, source: str) -> tuple[Rows, list[str]]:
    if source not in SOURCES:
        raise ValueError("source must be 'auto', 'bundle' or 'data'")
    cats, how = _category_dirs(ctx, source)
    if len(cats) < 1:
        raise ValueError("no category directions: the bundle has none and data.categories is empty")
    named = {"general": ctx.bundle.harmfulness, **dict(sorted(cats.items()))}
    names = list(named)
    cos = {(a, b): layer_cosines(named[a], named[b]) for i, a in enumerate(names) for b in names[i + 1 :]}
    n_rows = ctx.bundle.n_rows
    rows = [
        {"layer": layer, "a": a, "b": b, "cosine": num(v[layer])}
        for layer in range(n_rows)
        for (a, b), v in cos.items()
    ]
    notes = [how, f"{len(cats)} categories: {', '.join(sorted(cats))}; 'general' = the harmfulness direction"]
    third = max(n_rows // 3, 1)
    for lo, hi, label in ((0, third, "early"), (third, 2 * third, "middle"), (2 * third, n_rows, "late")):
        pair = [v[lo:hi].mean() for (a, b), v in cos.items() if a != "general" and b != "general"]
        gen = [v[lo:hi].mean() for (a, b), v in cos.items() if a == "general"]
        notes.append(
            f"layers {lo}-{hi - 1} ({label}): mean pairwise cosine between categories {num(np.mean(pair), 3) if pair else None}, "
            f"mean cosine with the general direction {num(np.mean(gen), 3) if gen else None}"
        )
    try:
        ref = layer_cosines(ctx.bundle.harmfulness, ctx.bundle.refusal)
        notes.append(f"cosine(harmfulness, refusal) per layer: mean {num(ref.mean(), 3)}, max {num(ref.max(), 3)}")
    except KeyError:
        pass
    return rows, notes
