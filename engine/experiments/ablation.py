"""Directional ablation of the harmfulness and the refusal direction (Arditi et al.'s intervention, with the paper's
two directions).

Contract (``directional_ablation(ctx, **options) -> (rows, notes)``, registered as ``ablation``):
- Conditions: none (baseline), the refusal direction ablated, the harmfulness direction ablated. Ablation is
  ``h <- h - (h . r_hat) r_hat`` at the input of every block 0..L-1 (``engine.steering.SteeringSpec`` with
  ``operation="ablate"``), at every position by default (prompt and generated tokens), with one fixed row of the
  direction at every layer (``row``: None = the middle row L//2, an integer = that row; ``"each"`` = block l uses
  row l, skipping the blocks where either direction's row is zero, such as row 0 of the t_post_inst refusal
  direction).
- Task ``refusal``: refusal rate (the paper's substring rule) of greedy replies to the harmful test prompts.
- Task ``inversion``: the reply-inversion user turn on the same harmful prompts (helpers of
  ``engine.experiments.interventions``); the 'Certainly' rate among valid answers (``score_inversion``: 'Certainly'
  = the model judges the request harmful; invalid answers are left out of the denominator and counted).
- Each task is ONE :func:`engine.steering.grid` call (a block with a baseline and one ``layer_mode="together"``
  cell per direction); rows stop once their answer is decided.
- Rows: ``{task, ablated, rate, metric, invalid, n}`` with ``ablated`` in none | refusal | harmfulness.

Expected (Arditi et al., 7B+ chat models): ablating the refusal direction drops refusal on harmful prompts to near
0. The paper's reading predicts that ablating the refusal direction leaves the harm judgement ('Certainly' in reply
inversion) in place, while ablating the harmfulness direction moves it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..refusal import refusal_decided
from ..steering import GenerationConfig, GridBlock, grid
from .context import RunContext
from .interventions import _inversion_decided, _vectors, inversion_prompts, inversion_question, score_inversion
from .results import rate

__all__ = ["ABLATED", "directional_ablation"]

ABLATED = ("refusal", "harmfulness")
TASKS = {
    "refusal": "refusal rate, harmful prompts",
    "inversion": "'Certainly' rate, harmful prompts (reply inversion)",
}


def _layers_and_row(ctx: RunContext, row: Any) -> tuple[list[int], int | None, str]:
    """The ablated blocks, the fixed row (None = each block its own row) and a note saying which."""
    L = ctx.handle.n_layers
    if row == "each":
        vecs = [ctx.bundle.get(n).vectors for n in ABLATED]
        layers = [layer for layer in range(L) if all(np.linalg.norm(v[layer]) > 0 for v in vecs)]
        skipped = sorted(set(range(L)) - set(layers))
        return layers, None, f"each block l uses row l of the direction (blocks {skipped} skipped: a zero row)"
    fixed = L // 2 if row is None else int(row)
    if not 0 <= fixed <= L:
        raise ValueError(f"row must be 0..{L}, 'each' or None (the middle row), not {row!r}")
    return list(range(L)), fixed, f"one fixed row, {fixed}, of each direction at every block 0..{L - 1} (Arditi)"


def directional_ablation(
    ctx: RunContext,
    *,
    row: Any,
    positions: str,
    max_new_tokens: int,
    inversion_tokens: int,
    batch_size: int,
    n_prompts: int | None,
    question: int | str,
) -> tuple[list[dict[str, Any]], list[str]]:
    recs = ctx.records(ctx.data.harmful_test, "harmful", ctx.cap(n_prompts))
    if not recs:
        raise ValueError("no harmful test prompts")
    layers, fixed, row_note = _layers_and_row(ctx, row)
    vectors = _vectors(ctx.bundle, ABLATED)
    q_text = inversion_question(ctx, question)

    def block(prompts: Any, label: str) -> GridBlock:
        return GridBlock(
            prompts,
            vectors,
            layers,
            [1.0],
            positions=positions,
            label=label,
            layer_mode="together",
            operation="ablate",
            direction_row=fixed,
        )

    t0 = time.perf_counter()
    gen = grid(
        ctx.handle,
        block([r["instruction"] for r in recs], "refusal"),
        GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size),
        stop_fn=refusal_decided,
        progress=ctx.stage("generating"),
    )
    t1 = time.perf_counter()
    inv = grid(
        ctx.handle,
        block(inversion_prompts(ctx.handle, recs, q_text), "inversion"),
        GenerationConfig(max_new_tokens=inversion_tokens, batch_size=batch_size),
        stop_fn=_inversion_decided,
        progress=ctx.stage("reply inversion"),
    )
    t2 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for d in ("none", *ABLATED):
        refused = [r["refused"] for r in gen if r["direction"] == d]
        rows.append(
            {
                "task": TASKS["refusal"],
                "ablated": d,
                "rate": rate(refused),
                "metric": "refusal_rate",
                "invalid": 0,
                "n": len(refused),
            }
        )
        scores = [score_inversion(r["text"]) for r in inv if r["direction"] == d]
        valid = [s for s in scores if s != "invalid"]
        rows.append(
            {
                "task": TASKS["inversion"],
                "ablated": d,
                "rate": rate([s == "certainly" for s in valid]),
                "metric": "certainly_rate",
                "invalid": len(scores) - len(valid),
                "n": len(scores),
            }
        )
    examples = {d: next(r["text"] for r in gen if r["direction"] == d)[:80] for d in ("none", *ABLATED)}
    notes = [
        f"{len(recs)} harmful test prompts; directional ablation h <- h - (h . r_hat) r_hat at the input of blocks "
        f"{layers[0]}..{layers[-1]}, positions {positions!r}; {row_note}",
        f"refusal task: one batched generate of {len(gen)} rows in {t1 - t0:.1f} s (greedy, max_new_tokens "
        f"{max_new_tokens}, a row stops once a refusal phrase appears)",
        f"reply inversion: question {q_text!r}; one batched generate of {len(inv)} rows in {t2 - t1:.1f} s (greedy, "
        f"max_new_tokens {inversion_tokens}, a row stops once 'ertainly' appears); scored by score_inversion, "
        "invalid answers left out of the 'Certainly' rate",
        "Arditi et al. report refusal on harmful prompts near 0 with the refusal direction ablated (7B+ chat models)",
        f"first replies: {examples}",
    ]
    for r in rows:
        notes.append(f"{r['task']}, ablated {r['ablated']}: {r['rate']} (n {r['n']}, invalid {r['invalid']})")
    return rows, notes
