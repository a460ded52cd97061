"""Guard-gated steering: does steering only what the Latent Guard flags keep the refusal gain and lose the
over-refusal?

Contract (``gated_steering(ctx, **options) -> (rows, notes)``):
- Steering: the raw ``refusal`` direction (+coefficient) added to every prompt token at one layer (prefill only),
  as in Fig. 4. The layer and coefficient are chosen on the **train** split: the (layer, coeff) among ``layers`` x
  ``coeffs`` with the highest refusal rate on ``n_select`` harmless train prompts (the strongest refusal steering;
  ties: the smaller coefficient, then the lower layer); ``layer`` and ``coeff`` fix them instead.
- Sets (test split, held out): ``accepted_harmful`` (harmful test prompts the model answers), ``template_jailbreaks``
  (filled templates it answers), ``harmless_test`` and ``xstest_like_test`` (harmless, sounds harmful), each capped at
  ``n_prompts`` (seeded).
- Conditions per set: ``none`` (no steering), ``+refusal`` (every prompt steered) and ``gated:<method>`` for each
  guard method in ``methods`` (steered iff the guard flags it at ``threshold``: a number, or ``"calibrated"``).
  ONE batched generate runs a baseline row and a steered row per prompt; a gated prompt's outcome is its steered
  row when the guard flags it and its baseline row otherwise, which is exactly what
  :func:`engine.guard.gated_generate` computes (an unsteered row is the unsteered computation; the tests check it).
- Rows ``{set, condition, refusal_rate, n, flagged_rate, layer, coeff}`` (``flagged_rate``: share of the set the
  guard flags, for gated conditions; the truth is harmful for the first two sets and harmless for the others).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..guard import guard_methods
from ..refusal import is_refusal, refusal_decided
from ..steering import GenerationConfig, GridBlock, SteeringSpec, generate, grid
from .context import Record, RunContext
from .interventions import parse_layers
from .results import rate

__all__ = ["gated_steering", "parse_coeffs"]

Rows = list[dict[str, Any]]


def parse_coeffs(coeffs: Any) -> list[float]:
    """``"1,2"`` / a number / a list -> coefficients (finite, non-zero)."""
    if isinstance(coeffs, str):
        vals = [float(x) for x in coeffs.split(",") if x.strip()]
    elif isinstance(coeffs, (int, float)) and not isinstance(coeffs, bool):
        vals = [float(coeffs)]
    else:
        vals = [float(x) for x in coeffs]
    if not vals or not all(np.isfinite(v) and v != 0 for v in vals):
        raise ValueError(f"coefficients must be finite and non-zero, got {coeffs!r}")
    return vals


def _select(
    ctx: RunContext, layers: list[int], coeffs: list[float], n_select: int, max_new_tokens: int, batch_size: int
) -> tuple[int, float, list[str]]:
    """The (layer, coeff) with the highest refusal rate on harmless train prompts (see the module docstring)."""
    recs = ctx.records(ctx.data.harmless_train, "harmless", ctx.cap(n_select), held_out=False)
    if not recs:
        raise ValueError("no harmless train prompts to choose the steering layer and coefficient on")
    block = GridBlock(
        [r["instruction"] for r in recs], {"refusal": ctx.bundle.get("refusal").vectors}, layers, coeffs, baseline=False
    )
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    res = grid(ctx.handle, block, cfg, stop_fn=refusal_decided, progress=ctx.stage("choosing layer/coeff (train)"))
    by: dict[tuple[int, float], list[bool]] = {}
    for r in res:
        by.setdefault((int(r["layer"] or 0), float(r["coeff"])), []).append(bool(r["refused"]))
    scored = sorted(by.items(), key=lambda kv: (-float(np.mean(kv[1])), abs(kv[0][1]), kv[0][0]))
    (layer, coeff), flags = scored[0]
    table = ", ".join(f"L{lay}x{c:g}: {np.mean(f):.2f}" for (lay, c), f in sorted(by.items()))
    notes = [
        f"layer/coefficient chosen on {len(recs)} harmless TRAIN prompts (highest refusal rate with +refusal): "
        f"layer {layer}, coeff {coeff:g} ({np.mean(flags):.2f}); all: {table}"
    ]
    return layer, coeff, notes


def gated_steering(
    ctx: RunContext,
    *,
    methods: str,
    threshold: Any,
    layer: Any,
    coeff: Any,
    layers: Any,
    coeffs: Any,
    n_select: int,
    n_prompts: int,
    n_jailbreak_prompts: int,
    n_templates: int,
    max_new_tokens: int,
    batch_size: int,
) -> tuple[Rows, list[str]]:
    names = [m.strip() for m in str(methods).split(",") if m.strip()]
    notes: list[str] = []
    if layer is None or coeff is None:
        default_layers = layers if layers is not None else _default_layers(ctx.handle.n_layers)
        lay, c, sel_notes = _select(
            ctx,
            parse_layers(default_layers, ctx.handle.n_layers),
            parse_coeffs(coeffs),
            n_select,
            max_new_tokens,
            batch_size,
        )
        notes += sel_notes
    else:
        lay, c = parse_layers([int(layer)], ctx.handle.n_layers)[0], parse_coeffs(coeff)[0]
        notes.append(f"layer {lay} and coefficient {c:g} given")
    cap = ctx.cap(n_prompts)
    harmful = ctx.records(ctx.data.harmful_test, "harmful", cap)
    ctx.label(harmful, stage="labelling harmful test prompts")
    jb = ctx.template_jailbreaks(ctx.cap(n_jailbreak_prompts), ctx.cap(n_templates))
    sets: list[tuple[str, list[Record]]] = [
        ("accepted_harmful", [r for r in harmful if not r["refused"]]),
        ("template_jailbreaks", [r for r in jb if not r["refused"]][: cap if cap else None]),
        ("harmless_test", ctx.records(ctx.data.harmless_test, "harmless", cap)),
        ("xstest_like_test", ctx.records(ctx.data.xstest_like_test, "xstest_like", cap)),
    ]
    pool = list(dict.fromkeys(r["instruction"] for _, rs in sets for r in rs))
    if not pool:
        raise ValueError("no prompts to steer")
    acts = ctx.acts(pool, stage="capturing (guard)")[:, 0]
    guards = guard_methods(ctx.bundle, names, handle=ctx.handle, progress=ctx.stage("guard readers"))
    flags = {m: dict(zip(pool, g.score(acts) >= g.threshold(threshold), strict=True)) for m, g in guards.items()}
    spec = SteeringSpec(ctx.bundle.get("refusal").vectors, (lay,), c, "prompt")
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    texts = generate(
        ctx.handle,
        pool + pool,
        [None] * len(pool) + [spec] * len(pool),
        cfg,
        stop_fn=refusal_decided,
        progress=ctx.stage("generating (baseline + steered)"),
    )
    base = {i: is_refusal(t) for i, t in zip(pool, texts[: len(pool)], strict=True)}
    steered = {i: is_refusal(t) for i, t in zip(pool, texts[len(pool) :], strict=True)}
    rows: Rows = []
    for name, rs in sets:
        insts = [r["instruction"] for r in rs]
        common = {"set": name, "n": len(insts), "layer": lay, "coeff": c}
        rows.append(
            {**common, "condition": "none", "refusal_rate": rate([base[i] for i in insts]), "flagged_rate": None}
        )
        rows.append(
            {**common, "condition": "+refusal", "refusal_rate": rate([steered[i] for i in insts]), "flagged_rate": None}
        )
        for m in guards:
            f = [bool(flags[m][i]) for i in insts]
            out = [steered[i] if fi else base[i] for i, fi in zip(insts, f, strict=True)]
            rows.append({**common, "condition": f"gated:{m}", "refusal_rate": rate(out), "flagged_rate": rate(f)})
    thr = {m: round(g.threshold(threshold), 5) for m, g in guards.items()}
    notes += [
        f"+refusal = the raw refusal direction x {c:g} at layer {lay}, every prompt token, prefill only; refusal = the "
        "paper's substring rule on a greedy reply (rows stop once a refusal phrase appears)",
        f"gated:<method> steers a prompt iff that Latent Guard flags it (threshold {threshold!r}: {thr}); its outcome is "
        "the steered reply when flagged, else the unsteered one (what engine.guard.gated_generate computes)",
        "truth: accepted_harmful and template_jailbreaks are harmful (more refusal is the goal); harmless_test and "
        "xstest_like_test are harmless (refusal there is over-refusal)",
    ]
    for m in guards:
        notes.append(_claim(rows, f"gated:{m}"))
    return rows, notes


def _default_layers(n_layers: int) -> list[int]:
    """About five layers spread over the middle of the network (Fig. 4's useful range)."""
    lo, hi = max(1, n_layers // 4), max(1, (3 * n_layers) // 4)
    return sorted({round(float(x)) for x in np.linspace(lo, hi, 5)})


def _claim(rows: Rows, cond: str) -> str:
    """How much of the refusal gain gating keeps on harmful sets, and how much over-refusal it adds on harmless."""

    def get(s: str, c: str) -> float | None:
        for r in rows:
            if r["set"] == s and r["condition"] == c:
                return r["refusal_rate"]
        return None

    parts = []
    for s in ("accepted_harmful", "template_jailbreaks", "harmless_test", "xstest_like_test"):
        b, u, g = get(s, "none"), get(s, "+refusal"), get(s, cond)
        if b is None or u is None or g is None:
            continue
        gain = u - b
        kept = f", keeps {(g - b) / gain:.0%} of the gain" if gain > 0 else ""
        parts.append(f"{s}: none {b:.2f}, +refusal {u:.2f}, {cond} {g:.2f}{kept}")
    return f"{cond}: " + "; ".join(parts)
