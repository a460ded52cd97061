"""Tests for engine.atomic: atomic writes, tolerant cache reads (set aside + warn once), safe output paths."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from engine import atomic
from engine.atomic import (
    CacheWarning,
    check_file_target,
    check_writable_dir,
    read_json_cache,
    read_regular_file,
    safe_stem,
    write_bytes,
    write_json,
    write_text,
)


def test_writes_replace_the_file_and_leave_no_temp_files(tmp_path):
    p = tmp_path / "sub" / "f.json"
    write_json(p, {"a": [1, "é"]})
    assert json.loads(p.read_text(encoding="utf-8")) == {"a": [1, "é"]}
    write_text(p, "second")
    assert p.read_text() == "second"
    write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.json"]
    assert (p.stat().st_mode & 0o777) == 0o644


def test_a_failing_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    write_json(p, {"old": True})

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError):
        write_json(p, {"new": True})
    assert json.loads(p.read_text()) == {"old": True}
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]  # the temp file is removed


def test_a_killed_writer_leaves_the_old_file_or_the_new_one(tmp_path):
    import subprocess
    import sys
    import time

    p = tmp_path / "f.json"
    write_json(p, {"n": 0})
    # load engine/atomic.py on its own (importing the engine package would load torch first)
    code = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('atomic', {atomic.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"for n in range(1, 10**6): m.write_json({str(p)!r}, {{'n': n, 'pad': 'x' * 20000}})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    seen = set()
    try:
        deadline = time.monotonic() + 60
        while len(seen) < 20 and time.monotonic() < deadline:
            seen.add(json.loads(p.read_text())["n"])  # never torn while the writer runs
    finally:
        proc.kill()
        proc.wait()
    assert len(seen) >= 20, "the writer did not get going"
    assert isinstance(json.loads(p.read_text())["n"], int)  # whole after the kill


@pytest.mark.parametrize("content", [b'{"a": 1', b"\xff\xfe garbage", b"[1, 2]"])
def test_a_damaged_cache_is_set_aside_warned_once_and_recomputed(tmp_path, content):
    p = tmp_path / "labels.json"
    p.write_bytes(content)
    with pytest.warns(CacheWarning, match="damaged cache file.*set aside as labels.json.corrupt-") as rec:
        assert read_json_cache(p, validate=lambda d: isinstance(d, dict)) is None
    assert len(rec) == 1
    assert not p.exists()
    aside = list(tmp_path.glob("labels.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content  # kept, never deleted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_json_cache(p) is None  # missing now: quiet
    write_json(p, {"a": 1})
    assert read_json_cache(p, validate=lambda d: isinstance(d, dict)) == {"a": 1}


def test_a_validator_that_raises_counts_as_damaged(tmp_path):
    p = tmp_path / "s.json"
    write_json(p, {"rows": "not a list"})

    def validate(d):
        if not isinstance(d["rows"], list):
            raise TypeError("rows must be a list")
        return True

    with pytest.warns(CacheWarning, match="rows must be a list"):
        assert read_json_cache(p, validate=validate, what="summary") is None
    write_json(p, {})
    with pytest.warns(CacheWarning, match="KeyError"):
        assert read_json_cache(p, validate=validate) is None
    # two set-asides in the same second get distinct names
    assert len(list(tmp_path.glob("s.json.corrupt-*"))) == 2


def test_read_regular_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert read_regular_file(p, 3) == b"abc"
    with pytest.raises(ValueError, match="the limit is 2 bytes"):
        read_regular_file(p, 2)
    with pytest.raises(ValueError, match="not found"):
        read_regular_file(tmp_path / "nope", 10)
    with pytest.raises(ValueError, match="is a directory"):
        read_regular_file(tmp_path, 10)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_regular_file(fifo, 10)


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".", ".hidden", "", "  ", "a\nb", "x\ud800", "x" * 121, None])
def test_safe_stem_refuses_paths_and_junk(bad):
    with pytest.raises(ValueError):
        safe_stem(bad)


def test_safe_stem_accepts_plain_names():
    for ok in ("default", "qwen-1.5b", "my model_2", "Qwen2.5-Coder"):
        assert safe_stem(ok) == ok
    with pytest.raises(ValueError, match="without folders; put the folder in --out"):
        safe_stem("../escape")


def test_check_writable_dir_creates_nothing(tmp_path):
    assert check_writable_dir(tmp_path) == tmp_path
    deep = tmp_path / "a" / "b"
    assert check_writable_dir(deep) == deep and not (tmp_path / "a").exists()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_writable_dir(f)
    with pytest.raises(ValueError, match="is a file, so the folder cannot be created"):
        check_writable_dir(f / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_writable_dir_without_permission(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="no permission to write"):
        check_writable_dir(ro / "out")


def test_check_file_target_refuses_a_folder(tmp_path):
    assert check_file_target(tmp_path / "x.safetensors") == tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="is a folder; give a file name in it"):
        check_file_target(tmp_path)
    with pytest.raises(ValueError, match="is a folder"):
        check_file_target(str(tmp_path / "new") + "/")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"--out \S*afile/x\.safetensors: \S*afile is a file, not a folder"):
        check_file_target(tmp_path / "afile" / "x.safetensors")
