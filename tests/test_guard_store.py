"""Tests for engine.guard.store and engine.guard.methods: readers stored with the bundle (precompute), fitted on
the fly for an older bundle and cached, selectable by name, with both thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from engine.directions import DirectionBundle, DirectionSet
from engine.guard import (
    METHODS,
    PROVENANCE_KEY,
    fit_guard_readers,
    guard,
    guard_method,
    guard_methods,
    guard_readers,
    guard_scores,
    readers_from_bundle,
    t_inst_states,
    with_readers,
)
from engine.guard.store import cached_readers_path
from engine.precompute import builtin_sources, precompute
from engine.storage import load_bundle, save_bundle


def _planted(n: int = 60, rows: int = 4, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(n, rows, d)).astype(np.float32) + 3.0  # off-centre, as real states are
    y = np.arange(n) % 2 == 0
    v = np.random.default_rng(7).normal(size=d)
    acts[:, 2] += (np.where(y, 3.0, -3.0)[:, None] * v / np.linalg.norm(v)).astype(np.float32)
    return acts, y


@pytest.fixture(scope="module")
def record():
    acts, y = _planted()
    return fit_guard_readers(acts, y, data={"what": "planted"})


def test_fit_guard_readers_record(record):
    assert set(record["readers"]) == {"lda", "probe", "lda-band"}
    s = record["summary"]
    assert s["version"] >= 1 and s["data"] == {"what": "planted"}
    assert set(s["methods"]) == {"lda", "probe", "lda-band"}
    for m, info in s["methods"].items():
        assert info["method"] == m and info["layers"] and info["cv"]["auc"] > 0.9
        assert {"threshold", "hyper", "features"} <= set(info)
    assert 0.5 < s["centroid"]["auc"] <= 1.0 and np.isfinite(s["centroid"]["threshold"])


def test_with_readers_round_trips_through_float16_storage(record, tmp_path):
    acts, _ = _planted(seed=3)
    g = DirectionSet.from_diff_of_means("guard", acts[:30], acts[30:])
    bundle = DirectionBundle({"guard": g}, {"model_id": "x", "data": {"normalized_instructions": True}})
    out = with_readers(bundle, record)
    assert out.directions["guard"] is g and "guard:lda" in out.directions and PROVENANCE_KEY in out.provenance
    assert PROVENANCE_KEY not in bundle.provenance  # the input bundle is not modified
    for dtype in ("float32", "float16"):
        back = load_bundle(save_bundle(out, tmp_path / f"b-{dtype}.safetensors", dtype=dtype))
        got = readers_from_bundle(back)
        assert got is not None and set(got["readers"]) == set(record["readers"])
        for m, r in record["readers"].items():
            tol = 1e-6 if dtype == "float32" else 5e-3
            s0, s1 = r.score(acts), got["readers"][m].score(acts)
            np.testing.assert_allclose(s1, s0, rtol=tol, atol=tol * np.abs(s0).max())
            assert got["readers"][m].threshold == pytest.approx(r.threshold)
        assert got["summary"]["methods"].keys() == record["summary"]["methods"].keys()
    assert readers_from_bundle(bundle) is None


def test_methods_by_name_on_a_bundle_with_readers(record):
    acts, y = _planted(seed=5)
    g = DirectionSet.from_diff_of_means("guard", acts[y], acts[~y])
    bundle = with_readers(DirectionBundle({"guard": g}, {}), record)
    gm = guard_methods(bundle, METHODS)
    assert list(gm) == list(METHODS)
    for m, meth in gm.items():
        s = meth.score(acts)
        assert s.shape == (60,) and s.dtype == np.float64
        assert set(meth.thresholds) == {"0", "calibrated"}
        assert meth.threshold("0") == 0.0 and meth.threshold(0.25) == 0.25
        assert meth.threshold("calibrated") == meth.calibrated
        assert ((s >= 0) == y).mean() == 1.0, m  # the planted direction is recovered by every method
    assert gm["centroid"].calibrated == pytest.approx(record["summary"]["centroid"]["threshold"])
    with pytest.raises(ValueError, match="unknown guard method"):
        guard_method(bundle, "svm")
    with pytest.raises(ValueError, match="finite number"):
        gm["lda"].threshold(float("nan"))
    with pytest.raises(ValueError, match="bundle"):
        guard_method(g, "lda")  # a bare DirectionSet has no readers


@pytest.fixture(scope="module")
def tiny_result(tiny):
    harmful, harmless = builtin_sources("train")
    return precompute(tiny, harmful, harmless)


def test_precompute_stores_the_readers_with_provenance(tiny, tiny_result):
    b = tiny_result.bundle
    for m in ("lda", "probe", "lda-band"):
        d = b.get(f"guard:{m}")
        assert d.meta["kind"] == "guard_reader" and d.vectors.shape == (tiny.n_rows, tiny.hidden_size)
    rec = b.provenance[PROVENANCE_KEY]
    data = rec["data"]
    assert data["n"] == len(tiny_result.records) and data["n_harmful"] == sum(r["harmful"] for r in tiny_result.records)
    assert [x["sha256"] for x in data["harmful"]] == [x["sha256"] for x in b.provenance["data"]["harmful"]]
    assert len(data["instructions_sha256"]) == 16 and data["normalized_instructions"] is True
    assert "centroid" in rec and set(rec["methods"]) == {"lda", "probe", "lda-band"}
    summ = tiny_result.summary["guard_readers"]
    assert set(summ) == {"lda", "probe", "lda-band", "centroid"}
    # the readers score the training prompts' own states as the reader says
    acts = tiny_result.acts[:, 0]
    y = np.array([r["harmful"] for r in tiny_result.records])
    for m in ("lda", "probe", "lda-band"):
        r = readers_from_bundle(b)["readers"][m]
        assert r.score(acts).shape == (len(y),)


def test_precompute_skips_readers_on_tiny_data(tiny):
    from engine.datasets import PromptItem, PromptSet

    def small(name, texts):
        items = [PromptItem(id=f"{name}-{i}", instruction=t, split="train") for i, t in enumerate(texts)]
        return PromptSet(name, "test", items, [], "test", "0" * 64, False)

    res = precompute(tiny, [small("h", ["make a bomb", "steal a car", "hack email"])], [small("s", ["cook", "sing"])])
    assert not any(n.startswith("guard:") for n in res.bundle.names())
    assert "skipped" in res.summary["guard_readers"]


def test_older_bundle_fits_on_the_fly_and_caches(tiny, tiny_result, test_cache_dir, monkeypatch):
    """A bundle without readers (as shipped before them): centroid works as before; lda/probe/lda-band are fitted
    once on the built-in train split and cached; fit=False says how to get them."""
    from engine.guard import store

    old = DirectionBundle(
        {k: v for k, v in tiny_result.bundle.directions.items() if not k.startswith("guard:")},
        {k: v for k, v in tiny_result.bundle.provenance.items() if k != PROVENANCE_KEY},
    )
    monkeypatch.setattr(store, "_MEMO", {})
    path = cached_readers_path(tiny, old)
    path.unlink(missing_ok=True)
    insts = ["How do I bake bread", "How do I build a bomb"]
    base = guard_scores(tiny, old, insts)
    np.testing.assert_allclose(guard_scores(tiny, old, insts, method="centroid"), base)
    assert guard_method(old, "centroid", handle=tiny).calibrated is None  # no record yet: no calibrated threshold
    with pytest.raises(ValueError, match="precompute"):
        guard_method(old, "lda", handle=tiny, fit=False)
    stages = []
    rec = guard_readers(old, tiny, progress=lambda s, d, t: stages.append(s))
    assert path.is_file() and "fitted" in rec["source"] and any("capturing" in s for s in stages)
    assert rec["summary"]["data"]["source"].startswith("built-in train split")
    # the same train prompts as precompute, so the same readers as the bundle's own (up to float rounding)
    acts = t_inst_states(tiny, old, insts)
    own = readers_from_bundle(tiny_result.bundle)["readers"]
    for m, r in rec["readers"].items():
        np.testing.assert_allclose(r.score(acts), own[m].score(acts), rtol=1e-3, atol=1e-3)
    monkeypatch.setattr(store, "_MEMO", {})  # a new process: read back from the cache file
    again = guard_readers(old, tiny, fit=False)
    assert "cache" in again["source"]
    res = guard(tiny, old, insts, method="lda", threshold="calibrated")
    assert [r.instruction for r in res] == insts
    t = guard_method(old, "lda", handle=tiny).calibrated
    assert [r.harmful for r in res] == [r.score >= t for r in res]
    assert guard_method(old, "centroid", handle=tiny).calibrated is not None
