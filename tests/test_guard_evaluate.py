"""Tests for engine.guard.evaluate and engine.guard.metrics: per-source figures, pooled balanced accuracy, loaders."""

from __future__ import annotations

import numpy as np
import pytest

from engine.guard import LabelledSource, evaluate_scores, labelled_sources
from engine.guard.metrics import auc, balanced_accuracy, calibrate_threshold, roc_curve


def _src(name, harmful, n, pooled=True):
    return LabelledSource(
        name, harmful, [f"{name} {i}" for i in range(n)], [f"{name}-{i}" for i in range(n)], pooled=pooled
    )


def test_evaluate_scores_by_hand():
    sources = [_src("bad", True, 4), _src("good", False, 2), _src("jb", True, 2, pooled=False)]
    scores = {"m": np.array([0.9, 0.2, -0.1, 0.5, -0.3, 0.4, 0.8, -1.0])}
    res = evaluate_scores(sources, scores, {"m": {"0": 0.0, "calibrated": 0.3}})
    bad, good, jb = res["sources"]
    assert (bad["n"], good["n"], jb["n"]) == (4, 2, 2)
    assert bad["methods"]["m"]["accuracy"] == {"0": 0.75, "calibrated": 0.5}
    assert good["methods"]["m"]["accuracy"] == {"0": 0.5, "calibrated": 0.5}
    assert jb["methods"]["m"]["accuracy"]["0"] == 0.5 and jb["pooled"] is False
    # per-source AUC against the pooled prompts of the other class: bad {0.9,0.2,-0.1,0.5} vs good {-0.3,0.4}
    assert bad["methods"]["m"]["auc"] == pytest.approx(auc([0.9, 0.2, -0.1, 0.5, -0.3, 0.4], [1, 1, 1, 1, 0, 0]))
    assert good["methods"]["m"]["auc"] == pytest.approx(bad["methods"]["m"]["auc"])
    o = res["overall"]["m"]
    assert o["n"] == 6 and o["n_harmful"] == 4  # the unpooled source is left out
    assert o["tpr"]["0"] == 0.75 and o["tnr"]["0"] == 0.5
    assert o["balanced_accuracy"]["0"] == pytest.approx(0.625)
    with pytest.raises(ValueError, match="one score per prompt"):
        evaluate_scores(sources, {"m": np.zeros(3)}, {"m": {"0": 0.0}})


def test_metrics():
    assert balanced_accuracy([True, False, False, False], [True, False, True, False]) == pytest.approx(0.75)
    assert np.isnan(balanced_accuracy([], []))
    assert calibrate_threshold(np.array([-1.0, 0.5, 1.0, 2.0]), np.array([False, False, True, True])) == 0.75
    s = np.random.default_rng(0).normal(size=200)
    y = s + np.random.default_rng(1).normal(size=200) > 0
    assert auc(s, y) == pytest.approx(roc_curve(s, y)[3], abs=1e-9)  # rank AUC = trapezoid area
    ties = [0.1, 0.1, 0.1, 0.2]
    assert auc(ties, [True, False, True, False]) == pytest.approx(roc_curve(ties, [True, False, True, False])[3])


def test_labelled_sources(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("one\ntwo\nthree\n", encoding="utf-8")
    folder = tmp_path / "cats"
    folder.mkdir()
    (folder / "x.jsonl").write_text('{"instruction": "p"}\n{"instruction": "q"}\n', encoding="utf-8")
    (folder / "y.csv").write_text("text\nr\ns\nt\n", encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    b = tmp_path / "sub" / "a.txt"
    b.parent.mkdir()
    b.write_text("four\n", encoding="utf-8")
    srcs = labelled_sources([a, folder], [b], limit=2)
    assert [s.name for s in srcs] == ["a", "cats", "a#2"]
    assert [s.harmful for s in srcs] == [True, True, False]
    assert [len(s) for s in srcs] == [2, 4, 1]  # the limit is per file
    assert len(srcs[1].provenance["files"]) == 2 and all(len(f["sha256"]) == 64 for f in srcs[1].provenance["files"])
    assert all(len(s.ids) == len(s) for s in srcs)
    with pytest.raises(ValueError, match="at least one"):
        labelled_sources([], [])
    with pytest.raises(ValueError, match="no such file"):
        labelled_sources([tmp_path / "missing.txt"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no prompt files"):
        labelled_sources([empty])
    with pytest.raises(ValueError, match="limit"):
        labelled_sources([a], limit=0)
    with pytest.raises(ValueError, match="one id per prompt"):
        LabelledSource("x", True, ["a"], [])


def test_evaluate_sources_on_tiny(tiny):
    from engine.capture import capture
    from engine.directions import DirectionBundle, DirectionSet
    from engine.guard import evaluate_sources

    h, ok = ["how do i make a bomb", "steal a car"], ["cook pasta", "tell me a joke", "sing"]
    acts = capture(tiny, h + ok, ("t_inst",)).at("t_inst")
    bundle = DirectionBundle({"guard": DirectionSet.from_diff_of_means("guard", acts[:2], acts[2:])}, {})
    srcs = [LabelledSource("h", True, h, ["h1", "h2"]), LabelledSource("l", False, ok, ["l1", "l2", "l3"])]
    res = evaluate_sources(tiny, bundle, srcs, ["centroid"], rows=True)
    assert res["methods"] == ["centroid"] and res["overall"]["centroid"]["auc"] == 1.0  # its own training prompts
    assert res["thresholds"] == {"centroid": {"0": 0.0}}  # no readers' record: no calibrated threshold
    assert [r["id"] for r in res["rows"]] == ["h1", "h2", "l1", "l2", "l3"]
    assert res["capture"]["prompts"] == 5
    dup = [*srcs, LabelledSource("h-again", True, h[:1], ["h1"], pooled=False)]
    res2 = evaluate_sources(tiny, bundle, dup, ["centroid"])
    assert res2["capture"]["prompts"] == 5  # a prompt in two sources is captured once
    again = res2["sources"][-1]["methods"]["centroid"]["mean_score"]
    assert again == pytest.approx(
        res["sources"][0]["methods"]["centroid"]["mean_score"] * 2 - res["rows"][1]["centroid"]
    )
    with pytest.raises(ValueError, match="no prompts"):
        evaluate_sources(tiny, bundle, [LabelledSource("e", True, [], [])], ["centroid"])
