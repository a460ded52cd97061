"""Decoding plumbing shared by every generating call: the settings, the next-token rule, the KV cache.

Contract:
- :class:`GenerationConfig`: greedy by default (``do_sample=False``); sampling uses ``temperature`` and nucleus
  ``top_p`` with an explicit ``seed``; ``max_new_tokens`` in 1..``MAX_NEW_TOKENS_LIMIT``; ``batch_size`` rows per
  padded batch; ``use_cache=False`` recomputes the whole sequence every step (a check of the cached path).
- ``next_tokens(logits, cfg, gen)``: argmax, or a seeded draw from the top-p renormalised softmax.
- ``top_k(logits, k)``: the k most likely next tokens and their probabilities under the plain softmax (temperature
  1, whatever the sampling settings); ``kl_divergence(p_logits, q_logits)``: KL(p || q) per row, in nats, over the
  whole vocabulary (float64 log-softmax, so KL(p || p) is exactly 0).
- ``past_length(hook_kwargs, layer)``: tokens already in the KV cache for a decoder layer (None without a cache), so
  hooks can place absolute positions in a chunk. ``eos_ids`` / ``cache_kw``: the model's end tokens and the name
  of its cache argument. No hooks here (steering lives in ``engine.steering``).
- Packed linear weights for generation live in ``engine.packing``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from .models import ModelHandle
from .models.core import check_seed

__all__ = [
    "MAX_NEW_TOKENS_LIMIT",
    "GenerationConfig",
    "cache_kw",
    "eos_ids",
    "kl_divergence",
    "last_position",
    "next_tokens",
    "past_length",
    "top_k",
]

MAX_NEW_TOKENS_LIMIT = 2048


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode: greedy or seeded sampling, at most ``max_new_tokens``, ``batch_size`` rows per batch."""

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
        check_seed(self.seed)


def last_position(n_tokens: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> int | torch.Tensor:
    """The ``logits_to_keep`` argument that keeps only the last position of a ``n_tokens``-long forward.

    float32: the int 1 (transformers' own path). Reduced precision: an index tensor. transformers slices the hidden
    states to a (B, 1, d) view with the prompt's strides, which torch's matmul cannot fold into one matrix product:
    the bfloat16 LM-head product then runs as a batched product over a copy of the whole weight for every row
    (measured on the project's CPU: 15.1 s for a 2-row prefill, against 1.5 s with the index, identical logits). An
    index gathers a fresh contiguous tensor and keeps the plain product. float32 keeps the int so its logits stay
    bit-identical to transformers' ``generate``.
    """
    if dtype == torch.float32:
        return 1
    return torch.tensor([n_tokens - 1], device=device)


def past_length(kwargs: dict, layer_idx: int) -> int | None:
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


def eos_ids(handle: ModelHandle) -> set[int]:
    """Token ids that end a reply (the generation config's and the tokenizer's end-of-sequence ids)."""
    ids: set[int] = set()
    for src in (getattr(handle.model.generation_config, "eos_token_id", None), handle.tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return ids


def cache_kw(model: Any) -> str:
    """The name of the model's KV-cache argument (``cache`` or ``past_key_values``, by transformers version)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def next_tokens(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator | None) -> torch.Tensor:
    """Next token per row from ``logits`` (rows, vocab): argmax, or a seeded top-p draw when ``cfg.do_sample``."""
    if not cfg.do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        keep = sp.cumsum(-1) - sp < cfg.top_p  # always keeps the most likely token
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, token ids), each (rows, k), of the k most likely tokens under softmax(logits) (rows, vocab)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top-k needs an integer k >= 1, got {k!r}")
    probs = torch.softmax(logits.float(), dim=-1)
    p, i = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return p, i


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row (nats) between softmax(p_logits) and softmax(q_logits), both (rows, vocab)."""
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"logits shapes differ: {tuple(p_logits.shape)} vs {tuple(q_logits.shape)}")
    lp = torch.log_softmax(p_logits.double(), dim=-1)
    lq = torch.log_softmax(q_logits.double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp(min=0.0)
