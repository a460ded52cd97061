"""Activation steering and (batched, streamed) generation.

Contract:
- Activation addition ``h <- h + c * v[l]`` at the **input** of block l (row l of a direction set), for one or
  several layers, per batch row: every row carries its own :class:`SteeringSpec` (or none = baseline), so a
  baseline and a steered row, or a whole layers x coefficients sweep, run in one batched ``generate``.
- Positions: ``prompt`` (every prompt token, prefill only: generated tokens are not steered), ``context`` (the
  prompt tokens of the context span only, e.g. "User wants to ..." in reply inversion), ``all`` (prompt and every
  generated token). Positions are absolute in the padded sequence; the chunk offset comes from the KV cache's
  length, so prefill-only steering is identical with the cache on or off.
- Hooks exist only inside ``steer(...)`` (an ExitStack context manager); they are removed even when the body
  raises. Every steered or generating run holds ``handle.lock``.
- Greedy decoding by default; sampling with an explicit seed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .capture import check_rows, pad_batch, prepare
from .models import ModelHandle
from .positions import PromptPositions
from .refusal import is_refusal

__all__ = [
    "GenerationConfig",
    "SteeringSpec",
    "generate",
    "side_by_side",
    "steer",
    "sweep",
]

POSITION_MODES = ("prompt", "context", "all")
MAX_NEW_TOKENS_LIMIT = 2048


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
        v = np.asarray(self.vectors)
        if v.shape != (handle.n_rows, handle.hidden_size):
            raise ValueError(
                f"direction shape {tuple(v.shape)} does not match this model ({handle.n_rows} rows x {handle.hidden_size}); "
                "these directions were computed for another model: recompute them with `python -m engine precompute`"
            )
        check_rows(handle, self.layers, steerable=True)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    do_sample: bool = False
    seed: int = 0
    temperature: float = 0.7
    top_p: float = 0.9
    use_cache: bool = True
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must be an integer in 1..{MAX_NEW_TOKENS_LIMIT}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError("sampling needs temperature > 0 and 0 < top_p <= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


def _past_length(kwargs: dict, layer_idx: int) -> int | None:
    """Tokens already in the KV cache for this layer (None when no cache is used: a full recompute)."""
    cache = None
    for key in ("cache", "past_key_values", "past_key_value"):
        if kwargs.get(key) is not None:
            cache = kwargs[key]
            break
    if cache is None or kwargs.get("use_cache") is False:
        return None
    layers = getattr(cache, "layers", None)
    if layers is not None:
        if layer_idx >= len(layers):
            return 0
        return int(layers[layer_idx].get_seq_length())
    try:
        return int(cache.get_seq_length(layer_idx))
    except TypeError:
        return int(cache.get_seq_length())


@contextlib.contextmanager
def steer(
    handle: ModelHandle,
    row_specs: Sequence[SteeringSpec | None],
    prompts: Sequence[PromptPositions],
    pads: Sequence[int],
) -> Iterator[None]:
    """Register per-row steering pre-hooks for one padded batch; removed on exit (also on error).

    Must be entered with ``handle.lock`` held (``generate`` does this) or it takes it itself.
    """
    if not (len(row_specs) == len(prompts) == len(pads)):
        raise ValueError("row_specs, prompts and pads must have one entry per batch row")
    for s in row_specs:
        if s is not None:
            s.validate(handle)
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
                if h.shape[0] != add_d.shape[0]:
                    raise RuntimeError(f"steering was set up for a batch of {add_d.shape[0]} rows, got {h.shape[0]}")
                past = _past_length(kwargs, layer)
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


class _RowStopper:
    """Per-row stopping: stop a row when ``stop_fn(text)`` says its answer is decided."""

    def __init__(self, handle: ModelHandle, prompt_len: int, stop_fn: Callable[[str], bool]):
        self.handle, self.prompt_len, self.stop_fn = handle, prompt_len, stop_fn

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.prompt_len :]
        texts = self.handle.tokenizer.batch_decode(new, skip_special_tokens=True)
        return torch.tensor([bool(self.stop_fn(t)) for t in texts], device=input_ids.device)


class _Streamer:
    """transformers streamer that reports the decoded text of every row after each step."""

    def __init__(self, handle: ModelHandle, on_text: Callable[[list[str]], None], n_rows: int):
        self.handle, self.on_text = handle, on_text
        self.tokens: list[list[int]] = [[] for _ in range(n_rows)]
        self.first = True

    def put(self, value: torch.Tensor) -> None:
        if self.first:  # the prompt
            self.first = False
            return
        v = value.reshape(-1).tolist()
        for i, t in enumerate(v):
            self.tokens[i].append(int(t))
        self.on_text(self.handle.tokenizer.batch_decode(self.tokens, skip_special_tokens=True))

    def end(self) -> None:
        pass


def _check_finite_vectors(specs: Sequence[SteeringSpec | None]) -> None:
    for s in specs:
        if s is not None and not np.isfinite(np.asarray(s.vectors)).all():
            raise ValueError("steering vectors contain NaN or inf")


@torch.no_grad()
def _generate_batch(
    handle: ModelHandle,
    prompts: Sequence[PromptPositions],
    specs: Sequence[SteeringSpec | None],
    cfg: GenerationConfig,
    on_text: Callable[[list[str]], None] | None,
    stop_fn: Callable[[str], bool] | None,
) -> list[str]:
    from transformers import StoppingCriteriaList

    ids, mask, pads = pad_batch(handle, prompts)
    tok = handle.tokenizer
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": mask,
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": cfg.do_sample,
        "use_cache": cfg.use_cache,
        "pad_token_id": tok.pad_token_id,
    }
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if stop_fn is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_RowStopper(handle, ids.shape[1], stop_fn)])
    if on_text is not None:
        kwargs["streamer"] = _Streamer(handle, on_text, len(prompts))
    with handle.lock, steer(handle, specs, prompts, pads), torch.random.fork_rng(devices=[]):
        if cfg.do_sample:
            torch.manual_seed(cfg.seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(cfg.seed)
        out = handle.model.generate(**kwargs)
    return tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


def generate(
    handle: ModelHandle,
    items: Sequence[str | PromptPositions],
    specs: Sequence[SteeringSpec | None] | SteeringSpec | None = None,
    cfg: GenerationConfig | None = None,
    *,
    on_text: Callable[[list[str]], None] | None = None,
    stop_fn: Callable[[str], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
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
    _check_finite_vectors(specs)
    for s in specs:
        if s is not None:
            s.validate(handle)
    prompts = prepare(handle, items, post_inst=post_inst)
    if on_text is not None and len(prompts) > cfg.batch_size:
        raise ValueError("streaming needs all rows in one batch; raise batch_size or drop on_text")
    order = sorted(range(len(prompts)), key=lambda i: prompts[i].n_tokens)
    if on_text is not None:
        order = list(range(len(prompts)))
    texts: list[str] = [""] * len(prompts)
    done = 0
    for b0 in range(0, len(order), cfg.batch_size):
        idx = order[b0 : b0 + cfg.batch_size]
        cb = None
        if on_text is not None:
            cb = on_text
        outs = _generate_batch(handle, [prompts[i] for i in idx], [specs[i] for i in idx], cfg, cb, stop_fn)
        for i, t in zip(idx, outs, strict=True):
            texts[i] = t
        done += len(idx)
        if progress:
            progress(done, len(prompts))
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
    spec.validate(handle)
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


def sweep(
    handle: ModelHandle,
    instructions: Sequence[str | PromptPositions],
    vectors: Any,
    layers: Sequence[int],
    coeffs: Sequence[float],
    cfg: GenerationConfig | None = None,
    *,
    positions: str = "prompt",
    include_baseline: bool = True,
    stop_fn: Callable[[str], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Layers x coefficients grid, every cell a batch row with its own (layer, coeff): one batched generate.

    Returns one record per (layer, coeff, instruction): ``{"layer", "coeff", "index", "instruction", "text",
    "refused"}``; with ``include_baseline`` also rows with ``layer=None, coeff=0.0`` (unsteered).
    """
    cfg = cfg or GenerationConfig()
    layers = check_rows(handle, list(layers), steerable=True)
    if not coeffs:
        raise ValueError("choose at least one coefficient")
    prompts = prepare(handle, instructions)
    cells: list[tuple[int | None, float]] = [(None, 0.0)] if include_baseline else []
    cells += [(layer, float(c)) for layer in layers for c in coeffs]
    items: list[PromptPositions] = []
    specs: list[SteeringSpec | None] = []
    meta: list[tuple[int | None, float, int]] = []
    for layer, c in cells:
        for k, p in enumerate(prompts):
            items.append(p)
            specs.append(None if layer is None else SteeringSpec(vectors, (layer,), c, positions))
            meta.append((layer, c, k))
    texts = generate(handle, items, specs, cfg, stop_fn=stop_fn, progress=progress)
    return [
        {
            "layer": layer,
            "coeff": c,
            "index": k,
            "instruction": prompts[k].instruction,
            "text": t,
            "refused": is_refusal(t),
        }
        for (layer, c, k), t in zip(meta, texts, strict=True)
    ]
