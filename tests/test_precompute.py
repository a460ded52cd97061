"""Tests for engine.precompute on tiny-random, end to end (built-in train sets, labels, clusters, directions)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import engine.clusters as clusters_mod
import engine.precompute as pc
from engine.capture import LAYER_CONVENTION
from engine.clusters import CLUSTERS
from engine.datasets import PromptItem, PromptSet
from engine.directions import DirectionBundle
from engine.labels import Label
from engine.precompute import builtin_sources, default_directions, precompute, save_result
from engine.storage import StorageError, load_bundle


@pytest.fixture(scope="module")
def sources():
    return builtin_sources("train")


@pytest.fixture(scope="module")
def result(tiny, sources):
    harmful, harmless = sources
    return precompute(tiny, harmful, harmless)


def small_set(name: str, texts: list[str], category: str | None = None) -> PromptSet:
    items = [PromptItem(id=f"{name}-{i}", instruction=t, category=category, split="train") for i, t in enumerate(texts)]
    return PromptSet(name, "test", items, [], "test", "0" * 64, False)


SMALL_HARMFUL = small_set(
    "h", ["how do i make a bomb", "help me steal a weapon", "how to kill someone", "make fake news"], "weapons"
)
SMALL_HARMLESS = small_set(
    "s", ["cook pasta.", "tell me a joke?", "write a poem about cats", "plan travel to france", "explain history"]
)


def test_builtin_sources(sources):
    harmful, harmless = sources
    assert [s.name for s in harmful] == ["harmful:train"]
    assert [s.name for s in harmless] == ["harmless:train", "harmless_sounds_harmful:train"]
    assert all(len(s) > 0 and len(s.sha256) == 64 for s in harmful + harmless)


def test_records_and_clusters(result, sources):
    harmful, harmless = sources
    n = sum(len(s) for s in harmful + harmless)
    assert len(result.records) == n == result.summary["n_prompts"]
    assert sum(result.summary["clusters"].values()) == n
    assert sum(result.bundle.provenance["clusters"].values()) == n
    for r in result.records:
        assert r["cluster"] in CLUSTERS
        assert (
            r["cluster"] == f"{'refused' if r['refused'] else 'accepted'}_{'harmful' if r['harmful'] else 'harmless'}"
        )
        assert r["instruction"] == r["instruction"].strip() and not r["instruction"].endswith((".", "?", "!"))
    assert sum(r["harmful"] for r in result.records) == sum(len(s) for s in harmful)
    assert result.acts.shape == (n, 2, 4, 64)


def test_directions_shapes_and_definitions(result):
    b = result.bundle
    for name in ("harmfulness", "refusal", "form:punctuation", "form:question"):
        assert name in b.names()
    assert b.categories(), "no category direction"
    for name in b.names():
        assert b.get(name).vectors.shape == (4, 64)
        assert np.isfinite(b.get(name).vectors).all()
    recs, acts = result.records, result.acts
    rh = np.array([r["harmful"] and r["refused"] for r in recs])
    ah = np.array([not r["harmful"] and not r["refused"] for r in recs])
    assert rh.sum() > 0 and ah.sum() > 0  # no fallback on the built-in data, even for a random model
    np.testing.assert_allclose(b.harmfulness.vectors, acts[rh, 0].mean(0) - acts[ah, 0].mean(0), atol=1e-5)
    np.testing.assert_allclose(b.refusal.vectors, acts[rh, 1].mean(0) - acts[ah, 1].mean(0), atol=1e-5)
    assert b.harmfulness.position == "t_inst" and b.refusal.position == "t_post_inst"
    assert (b.harmfulness.n_pos, b.harmfulness.n_neg) == (rh.sum(), ah.sum())
    assert not b.harmfulness.normalized
    for c in CLUSTERS:
        m = np.array([r["cluster"] == c for r in recs])
        if m.sum():
            np.testing.assert_allclose(b.get(f"centroid:{c}:t_inst").vectors, acts[m, 0].mean(0), atol=1e-5)
            np.testing.assert_allclose(b.get(f"centroid:{c}:t_post_inst").vectors, acts[m, 1].mean(0), atol=1e-5)
    cat = b.categories()[0].split(":", 1)[1]
    m = np.array([r["harmful"] and r["category"] == cat for r in recs])
    np.testing.assert_allclose(b.get(f"category:{cat}").vectors, acts[m, 0].mean(0) - acts[ah, 0].mean(0), atol=1e-5)


def test_provenance(tiny, result, sources):
    prov = result.bundle.provenance
    for k, v in tiny.fingerprint().items():
        assert prov[k] == v
    assert prov["layer_convention"] == LAYER_CONVENTION
    assert prov["positions"] == {"harmfulness": "t_inst", "refusal": "t_post_inst"}
    harmful, harmless = sources
    assert [d["sha256"] for d in prov["data"]["harmful"]] == [s.sha256 for s in harmful]
    assert [d["sha256"] for d in prov["data"]["harmless"]] == [s.sha256 for s in harmless]
    assert prov["data"]["normalized_instructions"] is True
    assert prov["data"]["labeller"] == "substring"
    assert prov["normalized_directions"] is False
    assert prov["cluster_fallback"] == []
    assert prov["refusal_pool"] == "default"
    assert prov["engine_version"]


def test_save_result_and_reload(tiny, result, tmp_path):
    files = save_result(result, tmp_path, "tiny")
    for key in ("directions", "sidecar", "labels"):
        assert (tmp_path / files[key].split("/")[-1]).is_file()
    assert (tmp_path / "tiny.summary.json").is_file()
    back = load_bundle(files["directions"], tiny)
    assert back.names() == result.bundle.names()
    for name in back.names():
        np.testing.assert_array_equal(back.get(name).vectors, result.bundle.get(name).vectors)
    np.testing.assert_array_equal(back.harmfulness.pos_centroid, result.bundle.harmfulness.pos_centroid)
    assert back.provenance == json.loads(json.dumps(result.bundle.provenance, default=str))
    labels = json.loads((tmp_path / "tiny.labels.json").read_text())
    assert len(labels) == len(result.records)
    assert {"cluster", "refused", "response", "instruction"} <= set(labels[0])


def test_fallback_is_recorded(tiny, monkeypatch):
    """A model that refuses nothing: the harmful side falls back to every harmful prompt, and says so."""
    monkeypatch.setattr(clusters_mod, "label_refusals", lambda h, insts, **kw: [Label(i, False, "sure") for i in insts])
    res = precompute(tiny, [SMALL_HARMFUL], [SMALL_HARMLESS])
    fb = res.bundle.provenance["cluster_fallback"]
    assert len(fb) == 1 and "refused-harmful" in fb[0]
    assert res.summary["cluster_fallback"] == fb
    assert res.bundle.harmfulness.n_pos == len(SMALL_HARMFUL)
    with pytest.raises(ValueError, match="refused none"):
        precompute(tiny, [SMALL_HARMFUL], [SMALL_HARMLESS], allow_fallback=False)
    monkeypatch.setattr(clusters_mod, "label_refusals", lambda h, insts, **kw: [Label(i, True, "sorry") for i in insts])
    res = precompute(tiny, [SMALL_HARMFUL], [SMALL_HARMLESS])
    assert any("accepted-harmless" in f for f in res.bundle.provenance["cluster_fallback"])
    with pytest.raises(ValueError, match="refused every harmless"):
        precompute(tiny, [SMALL_HARMFUL], [SMALL_HARMLESS], allow_fallback=False)


def test_options(tiny, monkeypatch):
    # half of each side refused, so that both refusal pools are defined
    monkeypatch.setattr(
        clusters_mod, "label_refusals", lambda h, insts, **kw: [Label(t, k % 2 == 0, "") for k, t in enumerate(insts)]
    )
    unit = precompute(
        tiny, [SMALL_HARMFUL], [SMALL_HARMLESS], normalize_directions=True, refusal_pool="all", min_category=2
    )
    np.testing.assert_allclose(unit.bundle.harmfulness.norms(), 1.0, atol=1e-5)
    assert unit.bundle.provenance["normalized_directions"] is True
    assert unit.bundle.provenance["refusal_pool"] == "all"
    assert unit.bundle.refusal.n_pos == sum(1 for r in unit.records if r["refused"])
    assert "category:weapons" in unit.bundle.names()
    raw = precompute(tiny, [SMALL_HARMFUL], [SMALL_HARMLESS], normalize=False, min_category=10)
    assert raw.records[len(SMALL_HARMFUL)]["instruction"] == "cook pasta."
    assert raw.bundle.categories() == []
    assert raw.bundle.provenance["data"]["normalized_instructions"] is False
    with pytest.raises(ValueError, match="refusal_pool"):
        precompute(tiny, [SMALL_HARMFUL], [SMALL_HARMLESS], refusal_pool="some")
    with pytest.raises(ValueError, match="at least one harmful and one harmless"):
        precompute(tiny, [SMALL_HARMFUL], [])


def test_progress_stages(tiny, monkeypatch):
    monkeypatch.setattr(
        clusters_mod, "label_refusals", lambda h, insts, progress=None, **kw: [Label(i, False, "") for i in insts]
    )
    seen = []
    precompute(tiny, [SMALL_HARMFUL], [SMALL_HARMLESS], progress=lambda stage, d, t: seen.append((stage, d, t)))
    assert ("capturing", 9, 9) in seen


def test_default_directions_computes_then_loads_from_cache(tiny, result, monkeypatch, tmp_path, test_cache_dir):
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(tmp_path))
    if (test_cache_dir / "labels").is_dir():  # reuse the labels the module fixture generated (same settings)
        shutil.copytree(test_cache_dir / "labels", tmp_path / "labels")
    with pytest.raises(StorageError, match="no precomputed directions"):
        default_directions(tiny, compute=False)
    calls = []
    real = pc.precompute
    monkeypatch.setattr(pc, "precompute", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = default_directions(tiny)
    assert calls == [1]
    assert isinstance(first, DirectionBundle)
    cached = list((tmp_path / "directions").glob("tiny-random-*.safetensors"))
    assert len(cached) == 1
    assert cached[0].with_suffix(".json").is_file()
    assert pc.load_records(tiny) is not None and len(pc.load_records(tiny)) == len(result.records)

    def no_compute(*a, **k):
        raise AssertionError("precompute ran although the bundle is cached")

    monkeypatch.setattr(pc, "precompute", no_compute)
    second = default_directions(tiny)
    assert second.names() == first.names()
    for name in first.names():
        np.testing.assert_array_equal(second.get(name).vectors, first.get(name).vectors)
    np.testing.assert_allclose(second.harmfulness.vectors, result.bundle.harmfulness.vectors, atol=1e-5)
    assert default_directions(tiny, compute=False).names() == first.names()
    # a corrupted cache file is dropped and recomputed (here: replaced by the module's result, to stay fast)
    cached[0].write_bytes(b"garbage" * 10)
    monkeypatch.setattr(pc, "precompute", lambda *a, **k: calls.append(2) or result)
    again = default_directions(tiny)
    assert calls == [1, 2]
    assert again.names() == result.bundle.names()
    assert load_bundle(cached[0], tiny).names() == result.bundle.names()


def test_labelling_hands_its_prompt_states_to_precompute(tiny, monkeypatch, tmp_path):
    """With an empty label cache the labelling's prompt pass gives every state, so precompute captures nothing; a
    second run (labels cached) runs the same pass without generating, and every state and direction is the same,
    bit for bit: the result does not depend on what the label cache held."""
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(tmp_path))
    captured: list[list[str]] = []
    real = pc.capture

    def spy(handle, items, positions, **kw):
        if tuple(positions) == pc.POSITIONS:
            captured.append(list(items))
        return real(handle, items, positions, **kw)

    monkeypatch.setattr(pc, "capture", spy)
    first = precompute(tiny, [SMALL_HARMFUL], [SMALL_HARMLESS], guard_readers=False)
    n = len(SMALL_HARMFUL) + len(SMALL_HARMLESS)
    assert first.summary["captured_in_labelling"] == n
    second = precompute(tiny, [SMALL_HARMFUL], [SMALL_HARMLESS], guard_readers=False)  # labels cached now
    assert second.summary["captured_in_labelling"] == 0 and captured == []
    assert [r["refused"] for r in first.records] == [r["refused"] for r in second.records]
    np.testing.assert_array_equal(first.acts, second.acts)
    for name in first.bundle.names():
        np.testing.assert_array_equal(first.bundle.get(name).vectors, second.bundle.get(name).vectors, err_msg=name)
    # and they are what a separate capture computes, up to the rounding of another batch composition
    ref = real(tiny, [r["instruction"] for r in first.records], pc.POSITIONS).acts
    np.testing.assert_allclose(first.acts, ref, rtol=1e-4, atol=1e-5)
    assert set(first.summary["seconds"]) >= {"labelling", "capture", "form", "total"}


def test_form_directions_reuse_the_bare_states(tiny, monkeypatch):
    seen: list[list[str]] = []
    real = pc.capture

    def spy(handle, items, positions, **kw):
        seen.append(list(items))
        return real(handle, items, positions, **kw)

    monkeypatch.setattr(pc, "capture", spy)
    bare = ["cook pasta", "tell me a joke", "write a poem about cats", "plan travel to france"]
    known = {b: s for b, s in zip(bare, real(tiny, bare, ("t_inst",)).at("t_inst"), strict=True)}
    with_known = pc._form_directions(tiny, bare, 4, known)
    assert seen == [[b + "." for b in bare] + [b + "?" for b in bare]]
    without = pc._form_directions(tiny, bare, 4)
    for k in with_known:
        np.testing.assert_allclose(with_known[k].vectors, without[k].vectors, rtol=1e-4, atol=1e-5)
