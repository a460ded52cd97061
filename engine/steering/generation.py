"""Batched, streamed generation with per-row steering, and the side-by-side comparison.

Contract:
- ``generate(handle, items, specs, cfg)`` returns the generated texts, one per item, each row with its own
  :class:`~.spec.SteeringSpec` (or None = baseline). ``generate_rows`` is the same with a :class:`~.traces.RowOutput`
  per item: tokens, and when asked per-token traces on directions (``trace``), the next-token top-k (``topk``) and,
  for the pairs in ``compare`` (baseline index, other index), KL(baseline || other) per step until their texts
  diverge (see ``engine.steering.traces``).
- Rows are processed in batches of ``cfg.batch_size``, grouped by length to limit padding; the rows of a compared
  pair always share a batch (a pair group larger than ``batch_size`` is an error). Streaming (``on_text``) needs
  every row in one batch: ``generate``'s ``on_text(texts)`` gets the texts after each step, ``generate_rows``'s
  ``on_text(outputs)`` the partial :class:`RowOutput` objects (text, tokens and traces so far).
- ``prefill=PrefillStates(positions)`` (baseline rows only) records every prompt's residual stream at those
  positions during the prompt pass, which then runs on the eager weights (the decode steps still use the packed
  ones): labelling by generation hands precompute the states it would otherwise capture in a second pass.
  ``prompt_pass(handle, items, prefill, batch_size=...)`` is that pass alone (same batches and forward call, no
  decoding): the same states, bit for bit.
- Rows that finish (end-of-turn token, ``stop_fn``) leave the batch at once: their KV-cache rows are dropped and the
  steering and trace hooks follow the remaining rows. ``cfg.use_cache=False`` recomputes the whole sequence every
  step (a check of the cached path). Everything runs under ``handle.lock``; hooks only inside context managers.
- ``side_by_side(handle, instructions, spec)``: baseline and steered rows per instruction in one batch, plus, with
  ``system_prompt``, a third "prompted" row (the same instruction under that system prompt, not steered: the
  prompting baseline); records carry the texts and refusal marks, and with ``trace`` / ``topk`` per-column traces,
  top-k, and KL of each column against the baseline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..capture import PrefillStates, recording_positions
from ..decoding import (
    GenerationConfig,
    cache_kw,
    eos_ids,
    kl_divergence,
    last_position,
    next_tokens,
    top_k,
)
from ..models import ModelHandle
from ..packing import packed_linears
from ..positions import PromptPositions, locate, pad_batch, position_ids_for, prepare
from ..progress import Progress, report
from ..refusal import NONFINITE, FailedGeneration, refusal_label
from .hooks import RowSelection, hooks
from .spec import SteeringSpec, validate_specs
from .traces import RowOutput, TraceSpec, trace_hooks

__all__ = ["COLUMNS", "generate", "generate_rows", "side_by_side"]

COLUMNS = ("baseline", "steered", "prompted")


@torch.no_grad()
def _generate_batch(
    handle: ModelHandle,
    prompts: Sequence[PromptPositions],
    specs: Sequence[SteeringSpec | None],
    cfg: GenerationConfig,
    *,
    trace: TraceSpec | None = None,
    topk: int = 0,
    compare: Sequence[tuple[int, int]] = (),
    on_text: Callable[[list[RowOutput]], None] | None = None,
    stop_fn: Callable[[str], bool] | None = None,
    prefill: PrefillStates | None = None,
) -> list[RowOutput]:
    """Greedy (or seeded sampling) decoding of one padded batch with per-row steering (see the module docstring)."""
    model, tok = handle.model, handle.tokenizer
    ids, mask, pads = pad_batch(handle, prompts)
    b = ids.shape[0]
    eos = eos_ids(handle)
    eos_t = torch.tensor(sorted(eos) or [-1], device=ids.device)
    outs = [RowOutput() for _ in range(b)]
    comparing: dict[int, int] = {}  # other row -> its baseline row, while their texts are still the same
    for i, j in compare:
        outs[j].compared_with = i
        comparing[j] = i
    pieces = trace is not None or topk > 0
    rows = RowSelection()
    active = torch.arange(b, device=ids.device)
    gen = torch.Generator().manual_seed(int(cfg.seed)) if cfg.do_sample else None
    cache_arg = cache_kw(model)
    with contextlib.ExitStack() as stack:
        stack.enter_context(handle.lock)
        if prefill is None:  # CPU: oneDNN-packed weights while generating (engine.packing)
            stack.enter_context(packed_linears(handle))
        stack.enter_context(hooks(handle, specs, prompts, pads, rows))
        buf = stack.enter_context(trace_hooks(handle, trace)) if trace is not None else None
        cur_mask = mask
        full = ids
        out = _prompt_forward(handle, prompts, ids, mask, pads, cfg.use_cache, prefill)
        if prefill is not None:  # the prompt pass ran eagerly; the decode steps use the packed weights
            stack.enter_context(packed_linears(handle))
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        next_pos = position_ids_for(mask)[:, -1] + 1
        for step in range(cfg.max_new_tokens):
            logits = out.logits[:, -1]
            bad = ~torch.isfinite(logits).all(dim=-1)  # overflow (huge coefficients, fp16): stop the row, say why
            if bool(bad.any()):
                logits = torch.where(bad[:, None], torch.zeros_like(logits), logits)
            nxt = next_tokens(logits, cfg, gen)
            is_eos = torch.isin(nxt, eos_t) | bad
            finished = is_eos.clone()
            act = active.tolist()
            for j in bad.nonzero().flatten().tolist():
                outs[act[j]].failed = NONFINITE
            proj = cos = None
            if buf is not None:
                proj, cos = buf.take()
            top: tuple[np.ndarray, np.ndarray] | None = None
            if topk:
                tp, ti = top_k(logits, topk)
                top = (tp.cpu().numpy(), ti.cpu().numpy())
            if comparing:
                _compare_step(outs, comparing, act, logits, nxt, is_eos, step)
            for j, r in enumerate(act):
                if bool(is_eos[j]):
                    continue
                t = int(nxt[j])
                o = outs[r]
                o.token_ids.append(t)
                if pieces:
                    o.tokens.append(tok.decode([t], skip_special_tokens=True))
                if proj is not None and cos is not None:
                    o.projection.append(proj[j])
                    o.cosine.append(cos[j])
                if top is not None:
                    o.topk.append([(tok.decode([int(i)]), float(p)) for p, i in zip(top[0][j], top[1][j], strict=True)])
                if stop_fn is not None or on_text is not None:
                    o.text = tok.decode(o.token_ids, skip_special_tokens=True)
                if stop_fn is not None and stop_fn(o.text):
                    finished[j] = True
            if on_text is not None:
                on_text(outs)
            if step == cfg.max_new_tokens - 1 or bool(finished.all()):
                break
            if bool(finished.any()):
                keep = (~finished).nonzero().squeeze(-1)
                active, nxt, cur_mask, next_pos, full = (
                    active[keep],
                    nxt[keep],
                    cur_mask[keep],
                    next_pos[keep],
                    full[keep],
                )
                if cfg.use_cache and cache is not None:
                    cache.batch_select_indices(keep)
            rows.index = active
            cur_mask = torch.cat([cur_mask, torch.ones_like(cur_mask[:, :1])], dim=1)
            if cfg.use_cache:
                out = model(
                    input_ids=nxt[:, None],
                    attention_mask=cur_mask,
                    position_ids=next_pos[:, None],
                    use_cache=True,
                    **{cache_arg: cache},
                )
                cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
            else:
                full = torch.cat([full, nxt[:, None]], dim=1)
                out = model(
                    input_ids=full,
                    attention_mask=cur_mask,
                    position_ids=position_ids_for(cur_mask),
                    use_cache=False,
                    logits_to_keep=last_position(full.shape[1], handle.dtype, full.device),
                )
            next_pos = next_pos + 1
    for j in comparing:
        outs[j].compare_end = "max_new_tokens"
    for o in outs:
        text = tok.decode(o.token_ids, skip_special_tokens=True)
        o.text = FailedGeneration(text, o.failed) if o.failed else text
    return outs


def _prompt_forward(
    handle: ModelHandle,
    prompts: Sequence[PromptPositions],
    ids: torch.Tensor,
    mask: torch.Tensor,
    pads: Sequence[int],
    use_cache: bool,
    prefill: PrefillStates | None,
) -> Any:
    """The prompt pass of one padded batch (logits of the last position only); with ``prefill``, the residual
    stream at its positions is recorded as capture records it (``capture.PrefillStates``)."""
    recording = (
        recording_positions(handle, prompts, pads, prefill.positions)
        if prefill is not None
        else contextlib.nullcontext(None)
    )
    with recording as collect:
        out = handle.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_for(mask),
            use_cache=use_cache,
            logits_to_keep=last_position(ids.shape[1], handle.dtype, ids.device),
        )
        if collect is not None and prefill is not None:
            for p, st in zip(prompts, collect(), strict=True):
                prefill.states[p.instruction] = st
    return out


@torch.no_grad()
def prompt_pass(
    handle: ModelHandle,
    items: Sequence[str | PromptPositions],
    prefill: PrefillStates,
    *,
    batch_size: int = 16,
    post_inst: bool = True,
) -> PrefillStates:
    """``generate(handle, items, None, GenerationConfig(batch_size=batch_size), prefill=prefill)`` without the
    decoding: the same batches, padding, hooks and forward call, so ``prefill`` receives the same states bit for
    bit, and no token is generated."""
    prompts = prepare(handle, items, post_inst=post_inst)
    for idx in _batches(prompts, [], batch_size, False):
        batch = [prompts[i] for i in idx]
        ids, mask, pads = pad_batch(handle, batch)
        with handle.lock, hooks(handle, [None] * len(batch), batch, pads, RowSelection()):
            _prompt_forward(handle, batch, ids, mask, pads, GenerationConfig().use_cache, prefill)
    return prefill


def _compare_step(
    outs: list[RowOutput],
    comparing: dict[int, int],
    act: list[int],
    logits: torch.Tensor,
    nxt: torch.Tensor,
    is_eos: torch.Tensor,
    step: int,
) -> None:
    """KL(baseline || other) at this step for every pair still compared; stop a pair once its tokens differ or a
    row has ended (the step where they differ is still compared: both distributions follow the same text)."""
    where = {r: j for j, r in enumerate(act)}
    live = [(o, i) for o, i in comparing.items() if o in where and i in where]
    for o in [o for o in comparing if o not in where or comparing[o] not in where]:
        outs[o].compare_end = "ended"
        del comparing[o]
    if not live:
        return
    jo = torch.tensor([where[o] for o, _ in live], device=logits.device)
    ji = torch.tensor([where[i] for _, i in live], device=logits.device)
    kl = kl_divergence(logits[ji], logits[jo]).cpu().tolist()
    for (o, i), k in zip(live, kl, strict=True):
        outs[o].kl.append(float(k))
        a, c = where[o], where[i]
        if int(nxt[a]) != int(nxt[c]):
            outs[o].diverged_at = step
            outs[o].compare_end = "diverged"
            del comparing[o]
        elif bool(is_eos[a]) or bool(is_eos[c]):
            outs[o].compare_end = "ended"
            del comparing[o]


def _batches(
    prompts: Sequence[PromptPositions], compare: Sequence[tuple[int, int]], batch_size: int, one_batch: bool
) -> list[list[int]]:
    """Row indices per batch: groups (a compared pair and its partners, else one row) sorted by length, packed."""
    n = len(prompts)
    if one_batch:
        return [list(range(n))]
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in compare:
        parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    ordered = sorted(groups.values(), key=lambda g: (max(prompts[i].n_tokens for i in g), g[0]))
    out: list[list[int]] = []
    for g in ordered:
        if len(g) > batch_size:
            raise ValueError(f"{len(g)} compared rows must share a batch; raise batch_size to at least {len(g)}")
        if not out or len(out[-1]) + len(g) > batch_size:
            out.append([])
        out[-1].extend(g)
    return out


def _check_compare(compare: Sequence[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    pairs = [(int(i), int(j)) for i, j in compare]
    seen: set[int] = set()
    for i, j in pairs:
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise ValueError(f"compare pair ({i}, {j}) must name two different rows in 0..{n - 1}")
        if j in seen:
            raise ValueError(f"row {j} is compared with two baselines; compare each row with one baseline")
        seen.add(j)
    return pairs


def _generate_outputs(
    handle: ModelHandle,
    prompts: Sequence[PromptPositions],
    specs: Sequence[SteeringSpec | None],
    cfg: GenerationConfig,
    *,
    trace: TraceSpec | None = None,
    topk: int = 0,
    compare: Sequence[tuple[int, int]] = (),
    on_text: Callable[[list[RowOutput]], None] | None = None,
    stop_fn: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
    prefill: PrefillStates | None = None,
) -> list[RowOutput]:
    """``generate_rows`` on prepared prompts whose specs were already checked: batches, progress."""
    if on_text is not None and len(prompts) > cfg.batch_size:
        raise ValueError("streaming needs all rows in one batch; raise batch_size or drop on_text")
    if prefill is not None and any(s is not None for s in specs):
        raise ValueError("prefill states are the unsteered model's: record them with baseline rows only (specs None)")
    pairs = _check_compare(compare, len(prompts))
    results: list[RowOutput | None] = [None] * len(prompts)
    done = 0
    for idx in _batches(prompts, pairs, cfg.batch_size, on_text is not None):
        local = {g: k for k, g in enumerate(idx)}
        sub = [(local[i], local[j]) for i, j in pairs if i in local]
        outs = _generate_batch(
            handle,
            [prompts[i] for i in idx],
            [specs[i] for i in idx],
            cfg,
            trace=trace,
            topk=topk,
            compare=sub,
            on_text=on_text,
            stop_fn=stop_fn,
            prefill=prefill,
        )
        for g, o in zip(idx, outs, strict=True):
            if o.compared_with is not None:
                o.compared_with = idx[o.compared_with]
            results[g] = o
        done += len(idx)
        report(progress, "generating", done, len(prompts))
    return [o for o in results if o is not None]


def _generate_rows(
    handle: ModelHandle,
    prompts: Sequence[PromptPositions],
    specs: Sequence[SteeringSpec | None],
    cfg: GenerationConfig,
    *,
    on_text: Callable[[list[str]], None] | None = None,
    stop_fn: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
    prefill: PrefillStates | None = None,
) -> list[str]:
    """``generate`` on prepared prompts whose specs were already checked (the grid's entry point)."""
    cb = None
    if on_text is not None:

        def cb(outs: list[RowOutput]) -> None:
            on_text([o.text for o in outs])

    outs = _generate_outputs(
        handle, prompts, specs, cfg, on_text=cb, stop_fn=stop_fn, progress=progress, prefill=prefill
    )
    return [o.text for o in outs]


def _specs_for(items: Sequence[Any], specs: Sequence[SteeringSpec | None] | SteeringSpec | None) -> list[Any]:
    if not items:
        raise ValueError("no instructions given")
    if specs is None or isinstance(specs, SteeringSpec):
        return [specs] * len(items)
    if len(specs) != len(items):
        raise ValueError("one steering spec per instruction")
    return list(specs)


def generate(
    handle: ModelHandle,
    items: Sequence[str | PromptPositions],
    specs: Sequence[SteeringSpec | None] | SteeringSpec | None = None,
    cfg: GenerationConfig | None = None,
    *,
    on_text: Callable[[list[str]], None] | None = None,
    stop_fn: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
    post_inst: bool = True,
    prefill: PrefillStates | None = None,
) -> list[str]:
    """Generate for each item with its own steering spec (None = baseline). Returns the generated texts.

    ``on_text`` gets the texts of all rows after each step (only when everything fits in one batch). ``prefill``
    (baseline rows only) collects each prompt's hidden states from the prompt pass (``capture.PrefillStates``).
    """
    cfg = cfg or GenerationConfig()
    row_specs = _specs_for(items, specs)
    validate_specs(handle, row_specs)
    prompts = prepare(handle, items, post_inst=post_inst)
    return _generate_rows(
        handle, prompts, row_specs, cfg, on_text=on_text, stop_fn=stop_fn, progress=progress, prefill=prefill
    )


def generate_rows(
    handle: ModelHandle,
    items: Sequence[str | PromptPositions],
    specs: Sequence[SteeringSpec | None] | SteeringSpec | None = None,
    cfg: GenerationConfig | None = None,
    *,
    trace: TraceSpec | None = None,
    topk: int = 0,
    compare: Sequence[tuple[int, int]] = (),
    on_text: Callable[[list[RowOutput]], None] | None = None,
    stop_fn: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
    post_inst: bool = True,
) -> list[RowOutput]:
    """``generate`` with a :class:`RowOutput` per item: tokens, optional traces, top-k and KL (module docstring)."""
    cfg = cfg or GenerationConfig()
    row_specs = _specs_for(items, specs)
    validate_specs(handle, row_specs)
    if trace is not None:
        trace.validate(handle)
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
        raise ValueError(f"top-k must be a non-negative integer (0 = off), got {topk!r}")
    prompts = prepare(handle, items, post_inst=post_inst)
    return _generate_outputs(
        handle,
        prompts,
        row_specs,
        cfg,
        trace=trace,
        topk=topk,
        compare=compare,
        on_text=on_text,
        stop_fn=stop_fn,
        progress=progress,
    )


def _column_record(inst: str, cols: dict[str, RowOutput], trace: TraceSpec | None, topk: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"instruction": inst}
    for name, o in cols.items():
        rec[name] = o.text
        rec[f"{name}_refused"] = refusal_label(o.text)  # None: the decoder stopped the row on an error
        if o.failed:
            rec[f"{name}_error"] = o.failed
    if trace is not None:
        rec["trace"] = {name: o.trace_frame_rows(trace) for name, o in cols.items()}
    if topk:
        rec["topk"] = {name: [list(map(list, step)) for step in o.topk] for name, o in cols.items()}
        others = {n: o for n, o in cols.items() if n != "baseline"}
        rec["kl"] = {n: list(o.kl) for n, o in others.items()}
        rec["diverged_at"] = {n: o.diverged_at for n, o in others.items()}
        rec["compare_end"] = {n: o.compare_end for n, o in others.items()}
    return rec


def side_by_side(
    handle: ModelHandle,
    instructions: Sequence[str],
    spec: SteeringSpec,
    cfg: GenerationConfig | None = None,
    *,
    on_text: Callable[[list[str], list[str]], None] | None = None,
    system_prompt: str | None = None,
    trace: TraceSpec | None = None,
    topk: int = 0,
    on_update: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Baseline and steered generation (and a system-prompt row) for each instruction, in one batched call.

    Records: ``instruction``, ``baseline``, ``steered`` and their ``*_refused`` marks; with ``system_prompt`` also
    ``prompted`` / ``prompted_refused`` and ``system_prompt``. With ``trace``: ``trace[column]`` in long format
    (:meth:`RowOutput.trace_frame_rows`); with ``topk``: ``topk[column]`` (per step, [token, probability] pairs),
    ``kl[column]``, ``diverged_at[column]`` and ``compare_end[column]`` for the columns other than the baseline.
    ``on_text(baselines, steereds)`` streams partial texts; ``on_update(records)`` streams partial records.
    """
    if not instructions:
        raise ValueError("no instructions given")
    if system_prompt is not None and not system_prompt.strip():
        raise ValueError("the system prompt is empty: type one, or leave the system-prompt column off")
    cols = ["baseline", "steered"] + (["prompted"] if system_prompt is not None else [])
    items: list[str | PromptPositions] = []
    specs: list[SteeringSpec | None] = []
    compare: list[tuple[int, int]] = []
    for inst in instructions:
        base = len(items)
        items += [inst, inst]
        specs += [None, spec]
        if system_prompt is not None:
            items.append(locate(handle.tokenizer, inst, system=system_prompt))
            specs.append(None)
        if topk:
            compare += [(base, base + k) for k in range(1, len(cols))]
    cfg = cfg or GenerationConfig()
    streaming = on_text is not None or on_update is not None
    if streaming and len(items) > cfg.batch_size:
        cfg = GenerationConfig(**{**cfg.__dict__, "batch_size": len(items)})
    n = len(cols)
    cb = None
    if streaming:

        def cb(outs: list[RowOutput]) -> None:
            if on_text is not None:
                on_text([o.text for o in outs[0::n]], [o.text for o in outs[1::n]])
            if on_update is not None:
                on_update(
                    [
                        _column_record(inst, dict(zip(cols, outs[n * k : n * k + n], strict=True)), trace, topk)
                        for k, inst in enumerate(instructions)
                    ]
                )

    outs = generate_rows(handle, items, specs, cfg, trace=trace, topk=topk, compare=compare, on_text=cb)
    records = []
    for k, inst in enumerate(instructions):
        rec = _column_record(inst, dict(zip(cols, outs[n * k : n * k + n], strict=True)), trace, topk)
        if system_prompt is not None:
            rec["system_prompt"] = system_prompt
        records.append(rec)
    return records
