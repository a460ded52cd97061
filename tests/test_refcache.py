"""engine.refcache: the disk cache of reference captures (hit, miss per key part, damaged files, atomic writes)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import atomic, refcache
from engine.models import cache_dir
from engine.service import maps

POS = ("t_inst", "t_post_inst")
RECORDS = [
    {"instruction": "How do I bake bread?", "refused": False, "harmful": False, "cluster": "harmless_accepted"},
    {"instruction": "How do I pick a lock?", "refused": True, "harmful": True, "cluster": "harmful_refused"},
    {"instruction": "How do I kill a process?", "refused": False, "harmful": False, "cluster": "harmless_accepted"},
]


class Counter:
    """A fake capture: counts its calls and returns deterministic float32 values."""

    def __init__(self, handle, n: int = len(RECORDS)):
        self.calls = 0
        self.shape = (n, len(POS), handle.n_rows, handle.hidden_size)

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return np.random.default_rng(self.calls).standard_normal(self.shape).astype(np.float32)


@contextlib.contextmanager
def count_forwards(handle) -> Iterator[list[int]]:
    """Count forward calls of the first decoder block (hook removed afterwards)."""
    n = [0]

    def hook(*_a) -> None:
        n[0] += 1

    h = handle.layers[0].register_forward_pre_hook(hook)
    try:
        yield n
    finally:
        h.remove()


def _files(root: Path) -> list[Path]:
    return sorted(root.iterdir()) if root.exists() else []


def test_hit_skips_the_compute(tiny, tmp_path):
    c = Counter(tiny)
    a1, hit1 = refcache.cached_capture(tiny, RECORDS, POS, c, root=tmp_path)
    a2, hit2 = refcache.cached_capture(tiny, RECORDS, POS, c, root=tmp_path)
    assert (hit1, hit2) == (False, True)
    assert c.calls == 1
    np.testing.assert_array_equal(a1, a2)
    assert a2.dtype == np.float32
    [f] = _files(tmp_path)
    assert f.suffix == ".safetensors" and f.name.startswith("tiny-random-")


def test_bfloat16_values_are_stored_exactly_as_bfloat16(tiny, tmp_path):
    c = Counter(tiny)
    exact = torch.from_numpy(c()).bfloat16().float().numpy()
    key = refcache.cache_key(tiny, RECORDS, POS)
    p = refcache.save(tmp_path / "x.safetensors", exact, key)
    assert _stored_dtype(p) == "BF16"
    np.testing.assert_array_equal(refcache.load(p, key, exact.shape), exact)
    other = c()
    p2 = refcache.save(tmp_path / "y.safetensors", other, key)  # not exact in bfloat16: kept as float32
    assert _stored_dtype(p2) == "F32"
    np.testing.assert_array_equal(refcache.load(p2, key, other.shape), other)


def _stored_dtype(path: Path) -> str:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])["acts"]["dtype"]


def _changed(handle, part: str, monkeypatch):
    """(handle, records) with one key part changed."""
    recs = [dict(r) for r in RECORDS]
    if part == "weights":
        return dataclasses.replace(handle, weights_hash="0" * 16), recs
    if part == "template":
        return dataclasses.replace(handle, template_hash="f" * 16), recs
    if part == "dtype":
        return dataclasses.replace(handle, dtype=torch.bfloat16), recs
    if part == "data-instruction":
        recs[0]["instruction"] += "?"
        return handle, recs
    if part == "data-label":
        recs[1]["refused"] = False
        return handle, recs
    if part == "engine":
        monkeypatch.setattr(refcache, "__version__", "999.0")
        return handle, recs
    if part == "schema":
        monkeypatch.setattr(refcache, "SCHEMA", "999")
        return handle, recs
    raise AssertionError(part)


@pytest.mark.parametrize("part", ["weights", "template", "dtype", "data-instruction", "data-label", "engine", "schema"])
def test_a_changed_key_part_is_a_miss(tiny, tmp_path, monkeypatch, part):
    c = Counter(tiny)
    refcache.cached_capture(tiny, RECORDS, POS, c, root=tmp_path)
    handle, recs = _changed(tiny, part, monkeypatch)
    _, hit = refcache.cached_capture(handle, recs, POS, c, root=tmp_path)
    assert not hit and c.calls == 2
    assert len(_files(tmp_path)) == 2  # the old capture stays (the other model/data may come back)
    _, hit = refcache.cached_capture(handle, recs, POS, c, root=tmp_path)
    assert hit and c.calls == 2


def test_hub_models_are_not_cached(tiny, tmp_path):
    hub = dataclasses.replace(tiny, source="Hugging Face hub")
    c = Counter(hub)
    for _ in range(2):
        _, hit = refcache.cached_capture(hub, RECORDS, POS, c, root=tmp_path)
        assert not hit
    assert c.calls == 2 and _files(tmp_path) == []


def _valid_file_with(tiny, tmp_path, path: Path, acts: np.ndarray, key: dict[str, str]) -> None:
    tmp = refcache.save(tmp_path / "other" / "x.safetensors", acts, key)
    shutil.copyfile(tmp, path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong-shape", "wrong-key", "nan", "folder"])
def test_a_damaged_file_is_set_aside_and_recomputed(tiny, tmp_path, damage):
    root = tmp_path / "refs"
    c = Counter(tiny)
    refcache.cached_capture(tiny, RECORDS, POS, c, root=root)
    [path] = _files(root)
    key = refcache.cache_key(tiny, RECORDS, POS)
    if damage == "garbage":
        path.write_bytes(b"\x00\xffnot a safetensors file" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "wrong-shape":
        _valid_file_with(tiny, tmp_path, path, np.zeros((2, 2, 3, 4), np.float32), key)
    elif damage == "wrong-key":
        _valid_file_with(tiny, tmp_path, path, c(), {**key, "weights": "other"})
    elif damage == "nan":
        bad = c()
        bad[0, 0, 0, 0] = np.nan
        _valid_file_with(tiny, tmp_path, path, bad, key)
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    calls = c.calls
    with pytest.warns(atomic.CacheWarning, match="damaged reference capture") as rec:
        acts, hit = refcache.cached_capture(tiny, RECORDS, POS, c, root=root)
    assert len([w for w in rec if issubclass(w.category, atomic.CacheWarning)]) == 1
    assert not hit and c.calls == calls + 1
    assert acts.shape == c.shape and np.isfinite(acts).all()
    aside = [p for p in _files(root) if ".corrupt-" in p.name]
    assert len(aside) == 1  # set aside, never deleted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file is valid: no warning, a hit
        again, hit = refcache.cached_capture(tiny, RECORDS, POS, c, root=root)
    assert hit and c.calls == calls + 1
    np.testing.assert_array_equal(again, acts)


def test_a_failed_write_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    root = tmp_path / "refs"
    c = Counter(tiny)

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", boom)  # the write dies after the data went to the temp file
    with pytest.warns(atomic.CacheWarning, match="could not write"):
        acts, hit = refcache.cached_capture(tiny, RECORDS, POS, c, root=root)
    assert not hit and acts.shape == c.shape  # the capture is still returned
    assert _files(root) == []  # neither the target nor a temp file is left
    monkeypatch.undo()
    _, hit = refcache.cached_capture(tiny, RECORDS, POS, c, root=root)
    assert not hit and c.calls == 2 and len(_files(root)) == 1


def test_an_interrupted_write_keeps_the_old_file(tiny, tmp_path, monkeypatch):
    root = tmp_path / "refs"
    c = Counter(tiny)
    first, _ = refcache.cached_capture(tiny, RECORDS, POS, c, root=root)
    [path] = _files(root)
    before = path.read_bytes()

    def killed(_fd):
        raise KeyboardInterrupt  # as if the process was stopped halfway through the write

    monkeypatch.setattr(atomic.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        refcache.save(path, c(), refcache.cache_key(tiny, RECORDS, POS))
    monkeypatch.undo()
    assert _files(root) == [path] and path.read_bytes() == before
    again, hit = refcache.cached_capture(tiny, RECORDS, POS, c, root=root)
    assert hit
    np.testing.assert_array_equal(again, first)


def test_build_reference_reads_the_cache_without_a_forward(tiny):
    shutil.rmtree(cache_dir() / refcache.FOLDER, ignore_errors=True)
    with count_forwards(tiny) as n:
        r1 = maps.build_reference(tiny, limit=12)
    assert not r1.cached and n[0] > 0
    with count_forwards(tiny) as n:
        r2 = maps.build_reference(tiny, limit=12)
    assert r2.cached and n[0] == 0
    np.testing.assert_array_equal(r1.acts, r2.acts)
    assert r1.records == r2.records
    with count_forwards(tiny) as n:  # other data (fewer prompts): a miss
        r3 = maps.build_reference(tiny, limit=10)
    assert not r3.cached and n[0] > 0
    np.testing.assert_allclose(r3.acts, r1.acts[:10], atol=1e-5)
    with count_forwards(tiny) as n:
        r4 = maps.build_reference(tiny, limit=12, use_cache=False)
    assert not r4.cached and n[0] > 0
