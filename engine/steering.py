"""Activation steering, (batched, streamed) generation, and the one steering grid.

Contract:
- Activation addition ``h <- h + c * v[l]`` at the **input** of block l (row l of a direction set), for one or
  several layers, per batch row: every row carries its own :class:`SteeringSpec` (or none = baseline), so a
  baseline and a steered row, or a whole sweep, run in one batched ``generate``.
- Positions: ``prompt`` (every prompt token, prefill only: generated tokens are not steered), ``context`` (the
  prompt tokens of the context span only, e.g. "User wants to ..." in reply inversion), ``all`` (prompt and every
  generated token). Positions are absolute in the padded sequence; the chunk offset comes from the KV cache's
  length, so prefill-only steering is identical with the cache on or off.
- ``grid(handle, blocks, cfg)`` is the one primitive for every sweep: each :class:`GridBlock` is prompts x (an
  optional baseline + named vectors x layers x coefficients), each cell a batch row with its own spec, all blocks in
  ONE batched ``generate``; it returns one :class:`GridRecord` per row (see ``grid``).
- Validation happens once: a spec checks its own values when built (coefficient, positions, finite (L+1, d)
  vectors); ``generate`` and ``steer`` check each *distinct* spec against the model once (shape, layer range), not
  once per row; ``grid`` checks each named vector and its layer list once and builds one spec per cell.
- Hooks exist only inside ``steer(...)`` (an ExitStack context manager); they are removed even when the body
  raises. Every steered or generating run holds ``handle.lock``.
- Greedy decoding by default; sampling with an explicit seed (settings and the next-token rule: ``engine.decoding``;
  ``GenerationConfig`` is re-exported here).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch

from .capture import check_rows
from .decoding import GenerationConfig, cache_kw, eos_ids, next_tokens, past_length
from .models import ModelHandle
from .positions import PromptPositions, pad_batch, position_ids_for, prepare
from .progress import Progress, report
from .refusal import is_refusal

__all__ = [
    "POSITION_MODES",
    "GenerationConfig",
    "GridBlock",
    "GridRecord",
    "SteeringSpec",
    "generate",
    "grid",
    "side_by_side",
    "steer",
]

POSITION_MODES = ("prompt", "context", "all")


@dataclass(frozen=True)
class SteeringSpec:
    """Add ``coeff * vectors[l]`` at the input of each block l in ``layers``.

    ``vectors``: (L+1, d) array, row l = the direction at block l's input (a DirectionSet's ``vectors``).
    """

    vectors: Any
    layers: tuple[int, ...]
    coeff: float
    positions: str = "prompt"

    def __post_init__(self) -> None:
        c = self.coeff
        if isinstance(c, bool) or not isinstance(c, (int, float, np.floating, np.integer)):
            raise ValueError(f"coefficient must be a number, not {c!r}")
        if not math.isfinite(float(c)):
            raise ValueError(f"coefficient must be finite, got {c}")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, not {self.positions!r}")
        if not self.layers:
            raise ValueError("choose at least one layer to steer")
        v = np.asarray(self.vectors)
        if v.ndim != 2:
            raise ValueError(f"steering vectors must be (n_layers + 1, hidden) shaped, got {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError("steering vectors contain NaN or inf")

    def validate(self, handle: ModelHandle) -> None:
        """Check the spec against a model: vector shape (L+1, d) and steerable layers (0..L-1)."""
        _check_shape(handle, np.asarray(self.vectors))
        check_rows(handle, self.layers, steerable=True)


def _check_shape(handle: ModelHandle, v: np.ndarray) -> None:
    if v.shape != (handle.n_rows, handle.hidden_size):
        raise ValueError(
            f"direction shape {tuple(v.shape)} does not match this model ({handle.n_rows} rows x {handle.hidden_size}); "
            "these directions were computed for another model: recompute them with `python -m engine precompute`"
        )


def _validate_specs(handle: ModelHandle, specs: Sequence[SteeringSpec | None]) -> None:
    """Check each distinct spec once (rows of one sweep cell share their spec)."""
    seen: set[int] = set()
    for s in specs:
        if s is not None and id(s) not in seen:
            seen.add(id(s))
            s.validate(handle)


class RowSelection:
    """Which rows of a steered batch are still computed (None = all), shared with the steering hooks."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None


@contextlib.contextmanager
def steer(
    handle: ModelHandle,
    row_specs: Sequence[SteeringSpec | None],
    prompts: Sequence[PromptPositions],
    pads: Sequence[int],
    rows: RowSelection | None = None,
) -> Iterator[None]:
    """Register per-row steering pre-hooks for one padded batch; removed on exit (also on error).

    ``rows`` (optional) says which of the batch's rows are still being computed, for decoders that drop finished
    rows; the hooks then apply each remaining row's own steering. Takes ``handle.lock`` (re-entrant). Each distinct
    spec is checked against the model once.
    """
    if not (len(row_specs) == len(prompts) == len(pads)):
        raise ValueError("row_specs, prompts and pads must have one entry per batch row")
    _validate_specs(handle, row_specs)
    with _hooks(handle, row_specs, prompts, pads, rows):
        yield


@contextlib.contextmanager
def _hooks(
    handle: ModelHandle,
    row_specs: Sequence[SteeringSpec | None],
    prompts: Sequence[PromptPositions],
    pads: Sequence[int],
    rows: RowSelection | None,
) -> Iterator[None]:
    """``steer`` without the checks (the callers inside this module checked the specs already)."""
    b = len(row_specs)
    layers = handle.layers
    wanted = sorted({layer for s in row_specs if s is not None for layer in s.layers})
    inf = 1 << 62
    starts = torch.zeros(b, dtype=torch.long)
    ends = torch.zeros(b, dtype=torch.long)
    for i, (s, p, k) in enumerate(zip(row_specs, prompts, pads, strict=True)):
        if s is None:
            continue
        if s.positions == "prompt":
            starts[i], ends[i] = k, k + p.n_tokens
        elif s.positions == "context":
            starts[i], ends[i] = k + p.context_start, k + p.context_end
        else:
            starts[i], ends[i] = k, inf
    with handle.lock, contextlib.ExitStack() as stack:
        for layer in wanted:
            block = layers[layer]
            param = next(block.parameters())
            add = torch.zeros((b, handle.hidden_size), dtype=torch.float32)
            for i, s in enumerate(row_specs):
                if s is not None and layer in s.layers and float(s.coeff) != 0.0:
                    add[i] = float(s.coeff) * torch.as_tensor(np.asarray(s.vectors[layer], dtype=np.float32))
            add_d = add.to(device=param.device, dtype=param.dtype)[:, None, :]
            st, en = starts.to(param.device), ends.to(param.device)

            def pre(
                _m: Any,
                args: tuple,
                kwargs: dict,
                layer: int = layer,
                add_d: torch.Tensor = add_d,
                st: torch.Tensor = st,
                en: torch.Tensor = en,
            ) -> Any:
                h = args[0] if args else kwargs["hidden_states"]
                if rows is not None and rows.index is not None:
                    idx = rows.index.to(add_d.device)
                    add_d, st, en = add_d[idx], st[idx], en[idx]
                if h.shape[0] != add_d.shape[0]:
                    raise RuntimeError(f"steering was set up for a batch of {add_d.shape[0]} rows, got {h.shape[0]}")
                past = past_length(kwargs, layer)
                offset = 0 if past is None else past
                pos = torch.arange(offset, offset + h.shape[1], device=h.device)
                m = ((pos[None, :] >= st[:, None]) & (pos[None, :] < en[:, None])).to(h.dtype)[..., None]
                if not bool(m.any()):
                    return None
                h2 = h + m * add_d
                if args:
                    return (h2, *args[1:]), kwargs
                kwargs = dict(kwargs)
                kwargs["hidden_states"] = h2
                return args, kwargs

            stack.callback(block.register_forward_pre_hook(pre, with_kwargs=True).remove)
        yield


@torch.no_grad()
def _generate_batch(
    handle: ModelHandle,
    prompts: Sequence[PromptPositions],
    specs: Sequence[SteeringSpec | None],
    cfg: GenerationConfig,
    on_text: Callable[[list[str]], None] | None,
    stop_fn: Callable[[str], bool] | None,
) -> list[str]:
    """Greedy (or seeded sampling) decoding of one padded batch with per-row steering.

    Rows that finish (end-of-turn token, ``stop_fn``) leave the batch at once: their KV-cache rows are dropped and
    the steering hooks follow the remaining rows (``RowSelection``), so early-stopped rows cost nothing more.
    With ``cfg.use_cache=False`` every step recomputes the whole sequence (a check of the cached path).
    """
    model, tok = handle.model, handle.tokenizer
    ids, mask, pads = pad_batch(handle, prompts)
    b = ids.shape[0]
    eos = eos_ids(handle)
    eos_t = torch.tensor(sorted(eos) or [-1], device=ids.device)
    out_tokens: list[list[int]] = [[] for _ in range(b)]
    texts = [""] * b
    rows = RowSelection()
    active = torch.arange(b, device=ids.device)
    gen = torch.Generator().manual_seed(int(cfg.seed)) if cfg.do_sample else None
    cache_arg = cache_kw(model)
    with handle.lock, _hooks(handle, specs, prompts, pads, rows):
        cur_mask = mask
        full = ids
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_for(mask),
            use_cache=cfg.use_cache,
            logits_to_keep=1,
        )
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        next_pos = position_ids_for(mask)[:, -1] + 1
        for step in range(cfg.max_new_tokens):
            nxt = next_tokens(out.logits[:, -1], cfg, gen)
            is_eos = torch.isin(nxt, eos_t)
            finished = is_eos.clone()
            for j, r in enumerate(active.tolist()):
                if not bool(is_eos[j]):
                    out_tokens[r].append(int(nxt[j]))
                    if stop_fn is not None or on_text is not None:
                        texts[r] = tok.decode(out_tokens[r], skip_special_tokens=True)
                    if stop_fn is not None and stop_fn(texts[r]):
                        finished[j] = True
            if on_text is not None:
                on_text(list(texts))
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
                    logits_to_keep=1,
                )
            next_pos = next_pos + 1
    return [tok.decode(t, skip_special_tokens=True) for t in out_tokens]


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
) -> list[str]:
    """Generate for each item with its own steering spec (None = baseline). Returns the generated texts.

    Rows are processed in batches of ``cfg.batch_size`` (grouped by length to limit padding). ``on_text`` gets the
    texts of all rows of the current batch after each step (only when everything fits in one batch).
    """
    cfg = cfg or GenerationConfig()
    if not items:
        raise ValueError("no instructions given")
    if specs is None or isinstance(specs, SteeringSpec):
        specs = [specs] * len(items)
    if len(specs) != len(items):
        raise ValueError("one steering spec per instruction")
    _validate_specs(handle, specs)
    prompts = prepare(handle, items, post_inst=post_inst)
    return _generate_rows(handle, prompts, specs, cfg, on_text=on_text, stop_fn=stop_fn, progress=progress)


def _generate_rows(
    handle: ModelHandle,
    prompts: Sequence[PromptPositions],
    specs: Sequence[SteeringSpec | None],
    cfg: GenerationConfig,
    *,
    on_text: Callable[[list[str]], None] | None = None,
    stop_fn: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """``generate`` on prepared prompts whose specs were already checked: length-sorted batches, progress."""
    if on_text is not None and len(prompts) > cfg.batch_size:
        raise ValueError("streaming needs all rows in one batch; raise batch_size or drop on_text")
    order = sorted(range(len(prompts)), key=lambda i: prompts[i].n_tokens)
    if on_text is not None:
        order = list(range(len(prompts)))
    texts: list[str] = [""] * len(prompts)
    done = 0
    for b0 in range(0, len(order), cfg.batch_size):
        idx = order[b0 : b0 + cfg.batch_size]
        outs = _generate_batch(handle, [prompts[i] for i in idx], [specs[i] for i in idx], cfg, on_text, stop_fn)
        for i, t in zip(idx, outs, strict=True):
            texts[i] = t
        done += len(idx)
        report(progress, "generating", done, len(prompts))
    return texts


def side_by_side(
    handle: ModelHandle,
    instructions: Sequence[str],
    spec: SteeringSpec,
    cfg: GenerationConfig | None = None,
    *,
    on_text: Callable[[list[str], list[str]], None] | None = None,
) -> list[dict[str, Any]]:
    """Baseline and steered generation for each instruction in one batched call (rows interleaved).

    ``on_text(baselines, steereds)`` streams partial texts. Returns records with both texts and refusal marks.
    """
    if not instructions:
        raise ValueError("no instructions given")
    items: list[str] = []
    specs: list[SteeringSpec | None] = []
    for inst in instructions:
        items += [inst, inst]
        specs += [None, spec]
    cfg = cfg or GenerationConfig()
    if on_text is not None and len(items) > cfg.batch_size:
        cfg = GenerationConfig(**{**cfg.__dict__, "batch_size": len(items)})
    cb = None
    if on_text is not None:

        def cb(texts: list[str]) -> None:
            on_text(texts[0::2], texts[1::2])

    texts = generate(handle, items, specs, cfg, on_text=cb)
    out = []
    for k, inst in enumerate(instructions):
        b, s = texts[2 * k], texts[2 * k + 1]
        out.append(
            {
                "instruction": inst,
                "baseline": b,
                "steered": s,
                "baseline_refused": is_refusal(b),
                "steered_refused": is_refusal(s),
            }
        )
    return out


class GridRecord(TypedDict):
    """One row of a :func:`grid`: which cell it is, which prompt, and what the model wrote.

    ``block``: the block's label; ``direction``: the vector's name, ``"none"`` for a baseline row; ``layer``: the
    steered block input (None for a baseline row); ``coeff``: the coefficient (0.0 for a baseline row);
    ``positions``: the positions mode (None for a baseline row); ``index``: the prompt's index in its block;
    ``instruction``: the prompt's instruction; ``text``: the generated text; ``refused``: the paper's substring
    rule on ``text`` (:func:`engine.refusal.is_refusal`).
    """

    block: str
    direction: str
    layer: int | None
    coeff: float
    positions: str | None
    index: int
    instruction: str
    text: str
    refused: bool


@dataclass(frozen=True)
class GridBlock:
    """One block of a steering grid: every prompt x (a baseline row, if ``baseline``, + every name x layer x coeff).

    ``prompts``: instructions, or prepared :class:`~engine.positions.PromptPositions` (e.g. a reply-inversion user
    turn with its context span). ``vectors``: name -> (L+1, d) array; the name is what the records carry as
    ``direction`` (``"none"`` is reserved for the baseline). ``layers``: steered block inputs (checked against the
    model, sorted, duplicates dropped). ``coeffs``: coefficients, each applied to the raw vector. ``positions``: one
    mode for every name, or a mapping name -> mode (``prompt`` | ``context`` | ``all``, see :class:`SteeringSpec`).
    ``label``: the block's name in the records (e.g. which prompt set it is).
    """

    prompts: Sequence[str | PromptPositions]
    vectors: Mapping[str, Any]
    layers: Sequence[int]
    coeffs: Sequence[float]
    positions: str | Mapping[str, str] = "prompt"
    baseline: bool = True
    label: str = ""

    def __post_init__(self) -> None:
        for name in ("prompts", "layers", "coeffs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "vectors", dict(self.vectors))
        if not self.prompts:
            raise ValueError("no instructions given")
        if not self.vectors:
            raise ValueError("choose at least one direction to steer with")
        if "none" in self.vectors:
            raise ValueError('"none" names the baseline rows; give that direction another name')
        if not self.layers:
            raise ValueError("choose at least one layer to steer")
        if not self.coeffs:
            raise ValueError("choose at least one coefficient")
        if not isinstance(self.positions, str):
            modes = dict(self.positions)
            missing, extra = sorted(set(self.vectors) - set(modes)), sorted(set(modes) - set(self.vectors))
            if missing or extra:
                raise ValueError(f"positions must give one mode per direction name: missing {missing}, unknown {extra}")
            object.__setattr__(self, "positions", modes)
        for name in self.vectors:
            if self.mode(name) not in POSITION_MODES:
                raise ValueError(f"positions must be one of {POSITION_MODES}, not {self.mode(name)!r}")

    def mode(self, name: str) -> str:
        """The positions mode of the vector called ``name``."""
        return self.positions if isinstance(self.positions, str) else self.positions[name]


def grid(
    handle: ModelHandle,
    blocks: GridBlock | Sequence[GridBlock],
    cfg: GenerationConfig | None = None,
    *,
    stop_fn: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
) -> list[GridRecord]:
    """Every cell of every block as one batch row with its own :class:`SteeringSpec`, in ONE batched ``generate``.

    Returns one :class:`GridRecord` per (block, cell, prompt), in this order: blocks as given; in a block the
    baseline rows first (``direction="none"``, ``layer=None``, ``coeff=0.0``, ``positions=None``), then
    ``for name in vectors: for layer in sorted layers: for coeff in coeffs: for prompt in prompts``. Rows stop early
    when ``stop_fn(text)`` says their answer is decided. Each named vector and each block's layers are checked
    against the model once; the rows of one cell share one spec.
    """
    cfg = cfg or GenerationConfig()
    blocks = [blocks] if isinstance(blocks, GridBlock) else list(blocks)
    if not blocks:
        raise ValueError("the grid has no blocks")
    prompts: list[PromptPositions] = []
    specs: list[SteeringSpec | None] = []
    meta: list[tuple[str, str, int | None, float, str | None, int, str]] = []
    for b in blocks:
        layers = check_rows(handle, b.layers, steerable=True)
        block_prompts = prepare(handle, b.prompts)
        cells: list[tuple[str, SteeringSpec | None]] = [("none", None)] if b.baseline else []
        for name, v in b.vectors.items():
            arr = np.asarray(v, dtype=np.float32)
            _check_shape(handle, arr)
            cells += [(name, SteeringSpec(arr, (layer,), c, b.mode(name))) for layer in layers for c in b.coeffs]
        for name, spec in cells:
            cell = (None, 0.0, None) if spec is None else (spec.layers[0], float(spec.coeff), spec.positions)
            for k, p in enumerate(block_prompts):
                prompts.append(p)
                specs.append(spec)
                meta.append((b.label, name, *cell, k, p.instruction))
    texts = _generate_rows(handle, prompts, specs, cfg, stop_fn=stop_fn, progress=progress)
    return [
        GridRecord(
            block=label,
            direction=name,
            layer=layer,
            coeff=coeff,
            positions=mode,
            index=k,
            instruction=inst,
            text=t,
            refused=is_refusal(t),
        )
        for (label, name, layer, coeff, mode, k, inst), t in zip(meta, texts, strict=True)
    ]
