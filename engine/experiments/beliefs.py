"""Belief experiments: where the model encodes harmfulness (t_inst) and refusal (t_post_inst).

Contract (each function takes the run context and its options, returns ``(rows, notes)``):
- ``belief_curves`` (Fig. 2): per layer, the mean and std of the belief score
  ``s_l = cos(h, mu_refused_harmful) - cos(h, mu_accepted_harmless)`` per cluster, at t_inst with the harmfulness
  direction's centroids and at t_post_inst with the refusal direction's (train split); with ``post_positions``
  also at every post-instruction token ``post_k``. Rows ``{layer, position, group, mean, std, n}``.
- ``belief_scatter`` (Fig. 3): one row per test prompt ``{id, cluster, delta_harmful, delta_refuse[, instruction]}``
  (Delta = mean of s_l over all L+1 rows, as the paper's code); prompts read from files carry their id only.
- ``jailbreak_plane`` (Fig. 6): successful template jailbreaks next to refused harmful prompts on the same plane; rows
  ``{kind, template_id, prompt_id, delta_harmful, delta_refuse}``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..capture import capture
from ..directions import belief_scores
from ..models import ModelHandle
from ..positions import locate
from .context import GROUPS, Record, RunContext
from .results import num, rate

__all__ = ["belief_curves", "belief_scatter", "jailbreak_plane"]

Rows = list[dict[str, Any]]


def _cluster_masks(recs: Sequence[Record]) -> dict[str, np.ndarray]:
    cl = [r["cluster"] for r in recs]
    return {g: np.array([c == g for c in cl], dtype=bool) for g in GROUPS}


def _stats_rows(scores: np.ndarray, masks: dict[str, np.ndarray], position: str) -> Rows:
    rows = []
    for g in GROUPS:
        m = masks[g]
        n = int(m.sum())
        for layer in range(scores.shape[1]):
            col = scores[m, layer]
            rows.append(
                {
                    "layer": layer,
                    "position": position,
                    "group": g,
                    "mean": num(col.mean()) if n else None,
                    "std": num(col.std()) if n else None,
                    "n": n,
                }
            )
    return rows


def _post_inst_count(handle: ModelHandle, recs: Sequence[Record]) -> int:
    ks: Counter[int] = Counter()
    for r in recs[:64]:
        p = locate(handle.tokenizer, r["instruction"])
        ks[p.t_post_inst - p.t_inst] += 1
    return ks.most_common(1)[0][0] if ks else 0


def _ranges(xs: Sequence[int]) -> str:
    if not xs:
        return "[]"
    out, start, prev = [], xs[0], xs[0]
    for x in [*xs[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return "[" + ",".join(out) + "]"


def _flip_summary(rows: Rows, position: str) -> str:
    by = {(r["group"], r["layer"]): r["mean"] for r in rows if r["position"] == position}
    layers = sorted({r["layer"] for r in rows if r["position"] == position})
    ah = [by.get(("accepted_harmful", layer)) for layer in layers]
    rh = [by.get(("refused_harmless", layer)) for layer in layers]
    if any(v is None for v in ah + rh):
        return f"{position}: accepted_harmful or refused_harmless is empty; no sign comparison"
    pairs = [
        (layer, float(a), float(b))
        for layer, a, b in zip(layers, ah, rh, strict=True)
        if a is not None and b is not None
    ]
    harm = [layer for layer, a, b in pairs if a > 0 > b]
    beh = [layer for layer, a, b in pairs if a < 0 < b]
    return (
        f"{position}: grouped by harmfulness (accepted_harmful > 0 > refused_harmless) at {len(harm)}/{len(layers)} layers "
        f"{_ranges(harm)}; grouped by behaviour (accepted_harmful < 0 < refused_harmless) at {len(beh)}/{len(layers)} {_ranges(beh)}"
    )


def belief_curves(ctx: RunContext, *, post_positions: bool) -> tuple[Rows, list[str]]:
    recs = ctx.test_records(ctx.cap(None))
    if not recs:
        raise ValueError("no test prompts")
    ctx.label(recs, stage="labelling test prompts")
    insts = [r["instruction"] for r in recs]
    K = _post_inst_count(ctx.handle, recs) if post_positions else 0
    pos = [-(K - k + 1) for k in range(1, K + 1)]  # post_k = k-th post-instruction token (counted from the end)
    te_acts = None
    if K >= 1:  # one pass for t_inst and every post-instruction token (post_K = the last token = t_post_inst)
        both = capture(ctx.handle, insts, ("t_inst", *pos), progress=ctx.stage("capturing test prompts")).acts
        te_acts = both[:, 1:]
        ctx.remember_acts(insts, both[:, [0, K]])
    acts = ctx.acts(insts, stage="capturing test prompts")
    masks = _cluster_masks(recs)
    h, rf = ctx.bundle.harmfulness, ctx.bundle.refusal
    s_inst = h.beliefs(acts[:, 0])
    s_post = rf.beliefs(acts[:, 1])
    rows = _stats_rows(s_inst, masks, "t_inst") + _stats_rows(s_post, masks, "t_post_inst")
    notes = [
        "s_l = cos(h, mu_refused_harmful) - cos(h, mu_accepted_harmless) per layer (Eq. 2); t_inst uses the harmfulness "
        "direction's centroids, t_post_inst the refusal direction's (both from the train split)",
        "test clusters: " + ", ".join(f"{g} {int(m.sum())}" for g, m in masks.items()),
        _flip_summary(rows, "t_inst"),
        _flip_summary(rows, "t_post_inst"),
    ]
    if te_acts is not None:
        train = ctx.train_records()
        ctx.label(train, stage="labelling train prompts")
        tr_acts = capture(
            ctx.handle,
            [r["instruction"] for r in train],
            pos,
            progress=ctx.stage("capturing train post-inst tokens"),
        ).acts
        rh = np.array([r["harmful"] and r["refused"] for r in train], dtype=bool)
        ah = np.array([(not r["harmful"]) and (not r["refused"]) for r in train], dtype=bool)
        if not rh.any():
            rh = np.array([r["harmful"] for r in train], dtype=bool)
            notes.append(
                "post_k: no refused-harmful train prompt; the harmful centroid uses every harmful train prompt"
            )
        if not ah.any():
            ah = np.array([not r["harmful"] for r in train], dtype=bool)
            notes.append(
                "post_k: no accepted-harmless train prompt; the harmless centroid uses every harmless train prompt"
            )
        for j in range(K):
            mu_p, mu_n = tr_acts[rh, j].mean(0), tr_acts[ah, j].mean(0)
            s = belief_scores(te_acts[:, j], mu_p, mu_n)
            name = f"post_{j + 1}"
            rows += _stats_rows(s, masks, name)
            notes.append(_flip_summary(rows, name))
        toks = locate(ctx.handle.tokenizer, recs[0]["instruction"]).tokens[-K:]
        notes.insert(
            2,
            f"post_k rows: the k-th of the {K} post-instruction tokens {list(toks)} (post_{K} = t_post_inst), centroids "
            "(refused harmful vs accepted harmless, train split) taken at that same token",
        )
    notes.append("paper (Fig. 2): at t_inst accepted harmful > 0 > refused harmless; at t_post_inst the signs flip")
    return rows, notes


def _deltas(ctx: RunContext, acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, rf = ctx.bundle.harmfulness, ctx.bundle.refusal
    return h.beliefs(acts[:, 0]).mean(axis=1), rf.beliefs(acts[:, 1]).mean(axis=1)


def belief_scatter(ctx: RunContext) -> tuple[Rows, list[str]]:
    recs = ctx.test_records(ctx.cap(None))
    if not recs:
        raise ValueError("no test prompts")
    ctx.label(recs, stage="labelling")
    acts = ctx.acts([r["instruction"] for r in recs], stage="capturing")
    dh, dr = _deltas(ctx, acts)
    # prompts read from files (public benchmarks, a user's data) are referred to by id only, so that result files can
    # be shared or committed without copying the data set's rows; the built-in sets are the project's own text
    keep_text = ctx.data.source != "files"
    rows = [
        {"id": r["id"], "cluster": r["cluster"], "delta_harmful": num(a), "delta_refuse": num(b)}
        | ({"instruction": r["instruction"]} if keep_text else {})
        for r, a, b in zip(recs, dh, dr, strict=True)
    ]
    notes = [
        "Delta_harmful: mean over all L+1 rows of s_l at t_inst (harmfulness centroids); Delta_refuse: same at t_post_inst (refusal centroids); as the paper's code"
    ]
    if not keep_text:
        notes.append("prompts read from files are listed by id only ('<file>-<row>'), not by their text")
    for g in GROUPS:
        m = np.array([r["cluster"] == g for r in recs], dtype=bool)
        if m.any():
            notes.append(
                f"{g} (n={int(m.sum())}): mean Delta_harmful {num(dh[m].mean(), 4)}, mean Delta_refuse {num(dr[m].mean(), 4)}, "
                f"share Delta_harmful >= 0: {num((dh[m] >= 0).mean(), 3)}, share Delta_refuse >= 0: {num((dr[m] >= 0).mean(), 3)}"
            )
        else:
            notes.append(f"{g}: no test prompt in this cluster")
    return rows, notes


def jailbreak_plane(ctx: RunContext, *, n_jailbreak_prompts: int, n_templates: int) -> tuple[Rows, list[str]]:
    jb = ctx.template_jailbreaks(ctx.cap(n_jailbreak_prompts), ctx.cap(n_templates))
    if not jb:
        raise ValueError("no jailbreak templates in the data")
    success = [r for r in jb if not r["refused"]]
    harmful = ctx.records(ctx.data.harmful_test, "harmful", ctx.cap(None))
    ctx.label(harmful, stage="labelling harmful test prompts")
    refused = [r for r in harmful if r["refused"]]
    pool = success + refused
    acts = ctx.acts([r["instruction"] for r in pool], stage="capturing")
    dh, dr = _deltas(ctx, acts) if pool else (np.zeros(0), np.zeros(0))
    rows = []
    for r, a, b in zip(pool, dh, dr, strict=True):
        jail = r["kind"] == "jailbreak"
        rows.append(
            {
                "kind": "jailbreak" if jail else "refused_harmful",
                "template_id": r["set"] if jail else None,
                "prompt_id": r["id"].split("|")[1] if jail else r["id"],
                "delta_harmful": num(a),
                "delta_refuse": num(b),
            }
        )
    notes = [
        f"{len({r['set'] for r in jb})} templates filled with harmful test prompts: {len(jb)} prompts, {len(success)} "
        f"successful (not refused, success rate {rate([not r['refused'] for r in jb])}); against {len(refused)} refused harmful test prompts",
        "for the jailbreaks t_inst is the last token of the whole filled template text (the user turn); Delta_harmful "
        "uses the harmfulness centroids there, Delta_refuse the refusal centroids at t_post_inst (all L+1 rows)",
    ]
    for kind in ("jailbreak", "refused_harmful"):
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            a = np.array([r["delta_harmful"] for r in sel], dtype=float)
            b = np.array([r["delta_refuse"] for r in sel], dtype=float)
            notes.append(
                f"{kind} (n={len(sel)}): mean Delta_harmful {num(a.mean(), 4)}, mean Delta_refuse {num(b.mean(), 4)}, "
                f"share Delta_harmful >= 0: {num((a >= 0).mean(), 3)}, share Delta_refuse < 0: {num((b < 0).mean(), 3)}"
            )
        else:
            notes.append(f"{kind}: none")
    per_t = Counter(r["set"] for r in success)
    if per_t:
        notes.append("successes per template: " + ", ".join(f"{t} {n}" for t, n in sorted(per_t.items())))
    return rows, notes
