"""The loaded-model handle and the small pieces every loader shares.

Contract:
- :class:`ModelSpec` is the hashable key of a loaded model (name, device, dtype, trust_remote_code); the app caches
  one handle per spec.
- :class:`ModelHandle` is what every loader returns: the model (eval mode, no grad), its tokenizer (left padding, a
  pad token, a chat template), ``n_layers`` (L), ``hidden_size`` (d), a re-entrant ``lock`` that every hooked or
  generating run must hold, and the layer convention of ``engine.capture`` (L+1 captured rows).
- :func:`finish` turns a freshly loaded model and tokenizer into a handle (greedy generation defaults, pad token).
- :func:`cache_dir` is the user cache (env ``STEERING_EXPLORER_CACHE``), :func:`resolve_device` /
  :func:`resolve_dtype` turn the spec's strings into torch objects. ``resolve_device`` accepts ``auto``, ``cpu``,
  ``cuda``, ``cuda:N`` and ``mps``: an unknown or unusable device type (``meta``, ``xpu``, ...) is a ValueError, a
  device this machine lacks (no CUDA, ``cuda:N`` past the last GPU, no MPS) a :class:`ModelError`, each one line.
- :func:`check_seed` validates a random seed from user input: an integer in ``0..MAX_SEED`` (2**63 - 1, what
  ``torch.Generator.manual_seed`` takes without overflowing).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MAX_SEED",
    "ModelError",
    "ModelHandle",
    "ModelSpec",
    "cache_dir",
    "check_seed",
    "find_layers",
    "finish",
    "resolve_device",
    "resolve_dtype",
]


class ModelError(RuntimeError):
    """A model could not be found, verified or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """Hashable key of a loaded model (used as the app's cache key)."""

    name: str = "default"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(
                "model name must be a non-empty string (a registry name such as 'default', a .gguf file, "
                "an HF id or a folder)"
            )
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}")


@dataclass
class ModelHandle:
    """A loaded model shared by every caller. Hold ``lock`` for any hooked forward or generate."""

    model: Any
    tokenizer: Any
    spec: ModelSpec
    model_id: str
    n_layers: int
    hidden_size: int
    device: torch.device
    dtype: torch.dtype
    weights_hash: str
    template_hash: str
    load_seconds: float = 0.0
    source: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def n_rows(self) -> int:
        """Captured rows per position: L block inputs (row 0 = embeddings) + the last block's output."""
        return self.n_layers + 1

    @property
    def layers(self) -> Any:
        return find_layers(self.model)

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def fingerprint(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "weights_hash": self.weights_hash,
            "template_hash": self.template_hash,
        }

    def info(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "model_id": self.model_id,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "weights_hash": self.weights_hash,
            "template_hash": self.template_hash,
            "load_seconds": round(self.load_seconds, 2),
            "source": self.source,
        }


def find_layers(model: Any) -> Any:
    """The ModuleList of decoder blocks, for the common architectures."""
    for path in (
        "model.layers",
        "model.language_model.layers",
        "transformer.h",
        "gpt_neox.layers",
        "model.decoder.layers",
    ):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
    raise ModelError(f"cannot find the decoder blocks of {type(model).__name__}; supported: Llama/Qwen/Gemma/GPT-style")


def cache_dir() -> Path:
    """User cache folder (env ``STEERING_EXPLORER_CACHE`` overrides ``~/.cache/steering-explorer``), created if
    missing. A path that is a file, lies under a file or cannot be created is a ValueError of one line."""
    env = os.environ.get("STEERING_EXPLORER_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steering-explorer"
    how = "set STEERING_EXPLORER_CACHE to a folder you can write to"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"the cache folder {base} is a file or lies under a file; {how}") from None
    except OSError as exc:
        raise ValueError(f"cannot create the cache folder {base} ({exc.strerror or exc}); {how}") from None
    if not base.is_dir():
        raise ValueError(f"the cache folder {base} is not a folder; {how}")
    return base


DEVICE_HELP = "use auto, cpu, cuda, cuda:N or mps"
_DEVICE_TYPES = ("cpu", "cuda", "mps")
MAX_SEED = 2**63 - 1


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for a spec's device string (see the module docstring for what is refused)."""
    if not isinstance(device, str) or not device.strip():
        raise ValueError(f"device must be a name, not {device!r}; {DEVICE_HELP}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; {DEVICE_HELP}") from exc
    if dev.type not in _DEVICE_TYPES:
        raise ValueError(f"device {device!r} cannot run a model here; {DEVICE_HELP}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); use one of those or auto"
            )
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelError(
                "device 'mps' was asked for but Apple's MPS is not available here; use --device cpu or auto"
            )
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"device {device!r}: there is one CPU device; use cpu")
    return dev


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` if it is an integer in ``0..MAX_SEED``; else ValueError (one line)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{what} must be a whole number in 0..{MAX_SEED}, not {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{what} must be in 0..{MAX_SEED} (2**63 - 1); {seed} is out of range")
    return seed


CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16_cpu(cpuinfo: Path | None = None) -> bool:
    """True when the CPU computes bfloat16 natively: its ``flags`` (Linux ``/proc/cpuinfo``) list ``avx512_bf16``
    (AVX512-BF16 dot products) or ``amx_bf16`` (AMX tiles). Elsewhere (no such file, other systems) False, so
    ``auto`` stays float32 where bfloat16 is converted in software: there decoding can still be faster (half the bytes),
    but prefill and the first token are slower (BENCHMARKS.md, AVX2-only CPU: 1.66x decode, first token 0.51 -> 1.86 s)."""
    path = CPUINFO if cpuinfo is None else cpuinfo
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(f in flags for f in NATIVE_BF16_FLAGS)
    return False


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA GPU that supports it (else float16), bfloat16 on a CPU with native bfloat16
    (:func:`native_bf16_cpu`), float32 otherwise. The paper-fidelity commands (precompute, reproduce, directions)
    ask for float32 explicitly."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and native_bf16_cpu():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _template_hash(tokenizer: Any) -> str:
    return sha256_text(getattr(tokenizer, "chat_template", None) or "")[:16]


def _prepare_tokenizer(tokenizer: Any) -> Any:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the tokenizer has no chat template; steering-explorer needs a chat (instruct) model")
    return tokenizer


def finish(
    model: Any, tokenizer: Any, spec: ModelSpec, model_id: str, weights_hash: str, t0: float, source: str
) -> ModelHandle:
    """Eval mode, no grad, greedy generation defaults, a pad token; then the handle."""
    tokenizer = _prepare_tokenizer(tokenizer)  # first: the generation config below reads its pad token
    model.eval()
    model.requires_grad_(False)
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = len(find_layers(model))
    hidden = int(getattr(text_cfg, "hidden_size", 0) or model.get_input_embeddings().weight.shape[1])
    param = next(model.parameters())
    if model.generation_config is not None:
        # greedy by default; silence sampling defaults shipped with the checkpoint
        model.generation_config.do_sample = False
        for k in ("temperature", "top_p", "top_k"):
            if hasattr(model.generation_config, k):
                setattr(model.generation_config, k, None)
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return ModelHandle(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        model_id=model_id,
        n_layers=n_layers,
        hidden_size=hidden,
        device=param.device,
        dtype=param.dtype,
        weights_hash=weights_hash,
        template_hash=_template_hash(tokenizer),
        load_seconds=time.perf_counter() - t0,
        source=source,
    )
