"""Packed linear weights on CPU: every ``nn.Linear`` weight reordered once for oneDNN, used while generating.

Why: ``F.linear`` on CPU hands the plain weight to the BLAS/oneDNN kernel, which re-lays it out (or streams it with a
kernel made for large batches) on every call; a decode step multiplies 1-2 rows by every weight of the model, so that
per-call work dominates. oneDNN's pre-reordered ("packed") weight skips it. Measured on the default model (2 cores,
AVX2, float32): the LM head takes 26.9 / 28.0 ms for 1 / 2 rows packed against 41.6 / 93.3 ms with ``F.linear``; one
32-token generation 5.11 s against 6.72 s; baseline + steered side by side 1.076x of one call against 1.928x; 96
test prompts generated in batches 1.59x faster, with identical greedy texts (BENCHMARKS.md).

Contract:
- ``pack_linear_weights(handle)`` builds the packed copies for every CPU ``nn.Linear`` of a float32 or bfloat16
  model (oneDNN present, ``STEERING_EXPLORER_PACKED_LINEAR`` not ``0``, and enough free memory for the copies plus a
  margin: a model that would not fit is left unpacked with one log line). Each layer is checked on a random input
  against ``F.linear``: bfloat16 must be bit-identical; float32 may differ only by summation order (max error <=
  ``FLOAT32_RTOL`` x the output's largest magnitude). If any layer fails, nothing is packed. Idempotent, once per
  model, under the model's lock; returns the number of packed layers (0: tried, nothing packed). The copies cost a
  second copy of the linear weights (default model, float32: 1.84 GiB, 1.3 s on 2 cores).
- ``packed_linears(handle)`` is a context manager entered with ``handle.lock`` held: it packs if needed, then inside
  the block the packed layers compute with their copies; on exit (always, also on errors) every layer computes with
  ``F.linear`` again. Generation (``engine.steering.generation``) is the only user: captures, directions, Clusters,
  the guard and log-odds labels never run inside it, so every hidden state the product reports is what the eager
  model computes, bit for bit, packed or not (a generation that records its prompt pass's states for precompute,
  ``capture.PrefillStates``, enters the block only after that pass). Blocks may nest. Inputs the packed kernel would compute differently
  (another dtype, not contiguous, needing grad, not on the CPU) go through ``F.linear`` inside the block too.
- oneDNN's reorder takes a batch-size hint: 2 for float32 (one and two rows both fast, see above; 1 would make two
  rows cost 1.7x one), 1 for bfloat16 (bit-identical to ``F.linear``, which uses oneDNN itself).
- ``unpack_linear_weights(handle)`` frees the copies. GPU and float16 models are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from .models import ModelHandle

__all__ = [
    "FLOAT32_RTOL",
    "PACKED_ENV",
    "enabled",
    "pack_linear_weights",
    "packed_layer_count",
    "packed_linears",
    "unpack_linear_weights",
]

PACKED_ENV = "STEERING_EXPLORER_PACKED_LINEAR"
FLOAT32_RTOL = 1e-4  # largest accepted |packed - eager| relative to the output's largest magnitude (float32)
MEMORY_MARGIN = 1 << 30  # free memory that must remain after the copies are made
HINTS = {torch.float32: 2, torch.bfloat16: 1}

_PACKED = "_se_packed_weight"  # the oneDNN copy, a plain attribute (not in state_dict)
_PACKED_MODEL = "_se_packed_linears"  # on the model: how many layers are packed (0: tried, not packed)
_DEPTH = "_se_packed_depth"  # on the model: how many packed_linears blocks are open
_log = logging.getLogger(__name__)


def enabled() -> bool:
    """False when ``STEERING_EXPLORER_PACKED_LINEAR`` is 0 / false / no / off."""
    return os.environ.get(PACKED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _packed_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w = self.weight
    if x.dtype != w.dtype or x.device.type != "cpu" or not x.is_contiguous() or x.requires_grad:
        return F.linear(x, w, self.bias)
    return torch.ops.mkldnn._linear_pointwise(x, getattr(self, _PACKED), self.bias, "none", [], "")


def _packable(model: Any) -> list[torch.nn.Linear]:
    return [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m.weight.dtype in HINTS and m.weight.device.type == "cpu"
    ]


def _supported(dtype: torch.dtype) -> bool:
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        return dtype == torch.float32 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes; None where it cannot be read (then the memory check is skipped)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _close_enough(packed: torch.Tensor, eager: torch.Tensor) -> bool:
    if packed.dtype == torch.bfloat16:
        return bool(torch.equal(packed, eager))
    scale = float(eager.abs().max())
    return bool(torch.isfinite(packed).all()) and float((packed - eager).abs().max()) <= FLOAT32_RTOL * max(scale, 1e-6)


def packed_layer_count(handle: ModelHandle) -> int | None:
    """Layers packed so far; None when packing has not been tried on this model."""
    done = getattr(handle.model, _PACKED_MODEL, None)
    return None if done is None else int(done)


def _switch(model: Any, packed: bool) -> None:
    """Every packed layer computes with its copy (``packed``) or with ``F.linear`` (the class's own forward)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            if packed and hasattr(m, _PACKED):
                m.forward = types.MethodType(_packed_forward, m)  # type: ignore[method-assign]
            else:
                m.__dict__.pop("forward", None)


def _clear(model: Any) -> None:
    _switch(model, False)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and hasattr(m, _PACKED):
            delattr(m, _PACKED)


def unpack_linear_weights(handle: ModelHandle) -> None:
    """Free the packed copies: every layer computes with ``F.linear``; a later ``pack_linear_weights`` packs again."""
    with handle.lock:
        _clear(handle.model)
        handle.model.__dict__.pop(_PACKED_MODEL, None)


@torch.no_grad()
def pack_linear_weights(handle: ModelHandle) -> int:
    """Build the packed copies (see the module docstring); the number of packed layers."""
    if not enabled():
        return 0
    model = handle.model
    done = packed_layer_count(handle)
    if done is not None:
        return done
    with handle.lock:
        done = packed_layer_count(handle)
        if done is not None:
            return done
        layers = [m for m in _packable(model) if _supported(m.weight.dtype)]
        need = sum(m.weight.numel() * m.weight.element_size() for m in layers)
        free = _available_memory()
        if layers and free is not None and free < need + MEMORY_MARGIN:
            _log.warning(
                "not packing the linear weights: they need %.1f GiB and %.1f GiB is free; generation uses F.linear",
                need / 2**30,
                free / 2**30,
            )
            layers = []
        gen = torch.Generator().manual_seed(0)
        try:
            for m in layers:
                w = m.weight.detach()
                packed = torch.ops.mkldnn._reorder_linear_weight(w, HINTS[w.dtype])
                setattr(m, _PACKED, packed)
                x = torch.randn(2, 3, m.in_features, generator=gen).to(w.dtype)
                got = torch.ops.mkldnn._linear_pointwise(x, packed, m.bias, "none", [], "")
                if not _close_enough(got, F.linear(x, w, m.bias)):
                    raise ValueError(f"packed output of a {tuple(w.shape)} layer differs")
        except (RuntimeError, ValueError) as exc:  # another CPU or torch build: keep the eager path, exactly as it was
            _log.warning("not packing the linear weights (%s); generation uses F.linear", exc)
            _clear(model)
            layers = []
        setattr(model, _PACKED_MODEL, len(layers))
        return len(layers)


@contextlib.contextmanager
def packed_linears(handle: ModelHandle) -> Iterator[int]:
    """Inside the block the packed layers compute with their copies (packing first if needed); yields their count.

    Enter it with ``handle.lock`` held (generation does). The eager forward is back on exit, whatever happens."""
    model = handle.model
    with handle.lock:
        n = pack_linear_weights(handle)
        depth = int(getattr(model, _DEPTH, 0))
        if n and depth == 0:
            _switch(model, True)
        setattr(model, _DEPTH, depth + 1)
        try:
            yield n
        finally:
            depth = int(getattr(model, _DEPTH, 1)) - 1
            setattr(model, _DEPTH, depth)
            if depth == 0:
                _switch(model, False)
