"""engine.umapcache: numba's on-disk cache switched on for uncached dispatchers, damaged caches recovered.

Most tests use a tiny module of numba functions written to a temporary folder (compiling it takes about a second);
the last one checks, in two fresh processes, that umap's own functions are read back from the cache."""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import umapcache

SOURCE = textwrap.dedent(
    """
    import numba

    @numba.njit
    def plain(x):
        return x * 2 + 1

    @numba.njit(cache=True)
    def declared(x):
        return x - 1
    """
)


@pytest.fixture
def jitmod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh module ``se_jit_<n>`` with one plain and one cache=True numba function."""
    src = tmp_path / "src"
    src.mkdir()
    name = f"se_jit_{tmp_path.name.replace('-', '_')}"
    (src / f"{name}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(src))
    mod = importlib.import_module(name)
    yield mod
    sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def _keep_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests re-point the module's folder; give the process its own back afterwards."""
    monkeypatch.setattr(umapcache, "_folder", umapcache._folder)


def _files(folder: Path, suffix: str) -> list[Path]:
    return sorted(folder.rglob(f"*{suffix}"))


def test_uncached_dispatchers_write_to_the_folder_and_declared_ones_keep_their_own(jitmod, tmp_path):
    folder = tmp_path / "numba"
    n = umapcache.enable_numba_cache(folder, prefixes=(jitmod.__name__,))
    assert n == 1  # only ``plain``: ``declared`` has numba's own cache
    assert jitmod.plain(3) == 7
    (index,) = _files(folder, ".nbi")
    assert "plain" in index.name
    assert all("declared" not in f.name for f in folder.rglob("*"))
    assert _files(folder, ".nbc")


def test_a_later_process_loads_the_compiled_code(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "se_jit_proc.py").write_text(SOURCE)
    folder = tmp_path / "numba"
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(src)!r})
        import se_jit_proc
        from pathlib import Path
        from engine import umapcache
        umapcache.enable_numba_cache(Path({str(folder)!r}), prefixes=("se_jit_proc",))
        se_jit_proc.plain(3)
        s = se_jit_proc.plain.stats
        print(json.dumps({{"hits": sum(s.cache_hits.values()), "misses": sum(s.cache_misses.values())}}))
        """
    )
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)]
    runs.append(
        json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    )
    assert runs[0] == {"hits": 0, "misses": 1}  # compiled and written
    assert runs[1] == {"hits": 1, "misses": 0}  # read back, not compiled


@pytest.mark.parametrize("suffix", [".nbi", ".nbc"])
def test_a_damaged_cache_file_costs_one_recompilation_not_a_failure(jitmod, tmp_path, caplog, suffix):
    folder = tmp_path / "numba"
    src = Path(jitmod.__file__)
    umapcache.enable_numba_cache(folder, prefixes=(jitmod.__name__,))
    jitmod.plain(1)
    (damaged,) = _files(folder, suffix)
    damaged.write_bytes(b"garbage")
    # a new module object from the same file, as a new process would have: it must load from the damaged cache
    sys.modules.pop(jitmod.__name__)
    fresh = importlib.import_module(src.stem)
    umapcache.enable_numba_cache(folder, prefixes=(fresh.__name__,))
    with pytest.raises(pickle.UnpicklingError):
        fresh.plain(1)  # numba itself fails on the damaged file
    with caplog.at_level(logging.WARNING, logger=umapcache.__name__):
        assert umapcache.run_with_recovery(lambda: fresh.plain(2)) == 5
    assert "emptied it and compiling again" in caplog.text
    assert _files(folder, ".nbc") and all(f.read_bytes() != b"garbage" for f in folder.rglob("*") if f.is_file())


def test_errors_without_cached_files_propagate_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(umapcache, "_folder", tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        umapcache.run_with_recovery(broken)
    assert calls == [1]


def test_umap_itself_is_read_back_by_a_second_process(tmp_path):
    """umap-learn's and pynndescent's functions: the second process compiles (almost) nothing."""
    code = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        from numba.core.registry import CPUDispatcher
        from engine.projection import fit_projection
        rng = np.random.default_rng(0)
        fit_projection(rng.standard_normal((40, 16)), "umap", seed=0).transform(rng.standard_normal((2, 16)))
        hits = misses = 0
        for name, mod in list(sys.modules.items()):
            if mod is None or not name.startswith(("umap", "pynndescent")):
                continue
            for v in vars(mod).values():
                if isinstance(v, CPUDispatcher) and v.__module__ == name:
                    hits += sum(v.stats.cache_hits.values())
                    misses += sum(v.stats.cache_misses.values())
        print(json.dumps({"hits": hits, "misses": misses}))
        """
    )
    env = {**__import__("os").environ, "STEERING_EXPLORER_CACHE": str(tmp_path / "cache")}
    env.pop(umapcache.CACHE_ENV, None)
    out = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert out[0]["misses"] > 5  # the first process compiles umap's functions and writes them
    assert out[1]["misses"] <= 3 and out[1]["hits"] > out[0]["hits"]
    assert list((tmp_path / "cache" / umapcache.SUBFOLDER).rglob("*.nbc"))
