"""Behaviour experiments: what the refusal depends on, and the Latent Guard against the model's own refusal.

Contract (each function takes the run context and its options, returns ``(rows, notes)``):
- ``refusal_template`` (Table 1): refusal rate of the harmful test prompts with the full chat template and with
  the prompt cut right after the instruction (no post-instruction tokens); always the substring labeller (it needs
  generated text). Rows ``{template, refusal_rate, n}``.
- ``latent_guard`` (Table 3): accuracy of the Latent Guard (harmful iff Delta_harmful at t_inst >= ``threshold``,
  :func:`engine.guard.guard_scores`) and of the model's own refusal used as a guard, on refused-harmless,
  accepted-harmful, successful template jailbreaks and the whole test sets. Rows ``{set, guard, accuracy, n}``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..guard import guard_scores
from .context import Record, RunContext
from .results import rate

__all__ = ["latent_guard", "refusal_template"]

Rows = list[dict[str, Any]]


def refusal_template(ctx: RunContext) -> tuple[Rows, list[str]]:
    recs = ctx.records(ctx.data.harmful_test, "harmful", ctx.cap(None))
    if not recs:
        raise ValueError("no harmful test prompts")
    full = ctx.label(recs, post_inst=True, labeller="substring", stage="full template")
    bare = ctx.label(recs, post_inst=False, labeller="substring", stage="without post-inst tokens")
    rows = [
        {"template": "full", "refusal_rate": rate(full), "n": len(recs)},
        {"template": "no_post_inst", "refusal_rate": rate(bare), "n": len(recs)},
    ]
    notes = [
        f"harmful test prompts: {len(recs)} ({', '.join(sorted({r['set'] for r in recs}))})",
        "refusal = the paper's substring rule on a greedy generation (labels cached; "
        "max_new_tokens 48, the paper's script uses 128); always the substring labeller here (needs generated text)",
        "no_post_inst: the prompt is cut right after the instruction (no end-of-turn / assistant header tokens)",
        f"refusal rate with the full template {rows[0]['refusal_rate']}, without post-inst tokens {rows[1]['refusal_rate']}",
    ]
    by_set = Counter(r["set"] for r in recs)
    if len(by_set) > 1:
        for s in by_set:
            idx = [i for i, r in enumerate(recs) if r["set"] == s]
            notes.append(
                f"{s}: full {rate([full[i] for i in idx])}, no_post_inst {rate([bare[i] for i in idx])} (n={len(idx)})"
            )
    return rows, notes


def latent_guard(
    ctx: RunContext, *, threshold: float, n_jailbreak_prompts: int, n_templates: int
) -> tuple[Rows, list[str]]:
    recs = ctx.test_records(ctx.cap(None))
    if not recs:
        raise ValueError("no test prompts")
    ctx.label(recs, stage="labelling test prompts")
    jb = ctx.template_jailbreaks(ctx.cap(n_jailbreak_prompts), ctx.cap(n_templates))
    success = [r for r in jb if not r["refused"]]
    pool = recs + success
    acts = ctx.acts([r["instruction"] for r in pool], stage="capturing")
    scores = guard_scores(ctx.handle, ctx.bundle, [r["instruction"] for r in pool], acts=acts[:, 0])
    latent = {r["instruction"]: bool(s >= threshold) for r, s in zip(pool, scores, strict=True)}
    sets: list[tuple[str, list[Record]]] = [
        ("refused_harmless", [r for r in recs if not r["harmful"] and r["refused"]]),
        ("accepted_harmful", [r for r in recs if r["harmful"] and not r["refused"]]),
        ("template_jailbreaks", success),
        ("harmful_test", [r for r in recs if r["kind"] == "harmful"]),
        ("harmless_test", [r for r in recs if r["kind"] == "harmless"]),
        ("xstest_like_test", [r for r in recs if r["kind"] == "xstest_like"]),
    ]
    rows = []
    for name, rs in sets:
        truth = [r["harmful"] for r in rs]
        rows.append(
            {
                "set": name,
                "guard": "latent",
                "accuracy": rate([latent[r["instruction"]] == t for r, t in zip(rs, truth, strict=True)]),
                "n": len(rs),
            }
        )
        rows.append(
            {
                "set": name,
                "guard": "own_refusal",
                "accuracy": rate([bool(r["refused"]) == t for r, t in zip(rs, truth, strict=True)]),
                "n": len(rs),
            }
        )
    n_t = len({r["set"] for r in jb})
    notes = [
        f"Latent Guard: harmful iff Delta_harmful (t_inst, all L+1 rows, train centroids) >= {threshold}; no tuning",
        "own_refusal: the model's own refusal (full template) used as the guard; it is 0 on refused_harmless, "
        "accepted_harmful and template_jailbreaks by construction (those sets are defined by its behaviour)",
        f"template jailbreaks: {n_t} templates x {len({r['id'].split('|')[1] for r in jb})} harmful test prompts = {len(jb)} "
        f"filled prompts, {len(success)} not refused (kept); t_inst = last token of the whole filled template",
        "truth: harmful for harmful test prompts and jailbreaks, harmless for harmless and harmless-sounding-harmful prompts",
    ]
    return rows, notes
