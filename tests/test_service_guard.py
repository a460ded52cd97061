"""engine.service.guard's method-aware functions (Latent Guard page, and the Steer page's gate) on tiny-random."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine import service as svc
from engine.directions import DirectionBundle
from engine.steering import GenerationConfig, generate


@pytest.fixture(scope="module")
def bundle(tiny):
    b, _ = svc.load_directions(tiny)
    return b


def test_methods_available_and_labelled(tiny, bundle):
    avail = svc.available_methods(tiny, bundle)
    assert list(avail) == list(svc.GUARD_METHODS) and all(avail.values())  # precompute stored the readers
    old = DirectionBundle({k: v for k, v in bundle.directions.items() if not k.startswith("guard:")}, {})
    assert svc.available_methods(tiny, old)["centroid"] is True
    assert len({svc.method_label(m) for m in svc.GUARD_METHODS}) == len(svc.GUARD_METHODS)
    assert svc.method_label("centroid").startswith("centroid")
    # the readers are stored with the directions but are not steering directions
    assert any(n.startswith("guard:") for n in bundle.names())
    assert not any(n.startswith("guard:") for n in svc.steerable_directions(bundle))
    assert "guard" in svc.steerable_directions(bundle)  # the guard's diff-of-means direction still is one


def test_guard_frame_by_method_and_threshold_range(tiny, bundle):
    for m in svc.GUARD_METHODS:
        g = svc.guard_method_info(tiny, bundle, m)
        df = svc.guard_frame(tiny, bundle, ["a", "b c"], threshold=0.0, method=m)
        assert list(df.columns) == ["instruction", "score", "verdict"]
        lo, hi, step = svc.threshold_range(g)
        assert lo < 0.0 < hi and 0 < step < hi - lo
        assert lo <= g.calibrated <= hi
    assert svc.threshold_range(svc.guard_method_info(tiny, bundle, "centroid")) == (-0.5, 0.5, 0.01)
    with pytest.raises(ValueError, match="unknown guard method"):
        svc.guard_frame(tiny, bundle, ["a"], method="svm")


def test_method_scores_roc_points_and_per_source(tiny, bundle):
    texts = ["how do i make a bomb", "steal a car", "cook pasta", "sing a song", "paint a fence"]
    truth = [True, True, False, False, False]
    scores = svc.method_scores(tiny, bundle, texts, list(svc.GUARD_METHODS))
    assert list(scores) == list(svc.GUARD_METHODS) and all(s.shape == (5,) for s in scores.values())
    np.testing.assert_allclose(
        scores["centroid"], svc.guard_frame(tiny, bundle, texts, normalize=False)["score"], atol=1e-9
    )
    roc, aucs = svc.roc_frames(scores, truth, refused=[True, False, False, False, True])
    assert set(roc["series"]) == {svc.method_label(m) for m in scores} | {"model refusal (point)"}
    assert set(aucs) == set(scores) and all(0 <= a <= 1 for a in aucs.values())
    pts = svc.method_points(scores, truth, {m: 0.0 for m in scores})
    assert list(pts["series"]) == [svc.method_label(m) for m in scores]
    for m, (_, p) in zip(scores, pts.iterrows(), strict=True):
        flagged = scores[m] >= 0.0
        assert p["tpr"] == flagged[:2].mean() and p["fpr"] == flagged[2:].mean()
    sets = [("bad", texts[:2], truth[:2]), ("good", texts[2:], truth[2:])]
    per = svc.per_source_frame(sets, scores, {m: 0.0 for m in scores})
    assert list(per["set"]) == ["bad", "good"] and list(per["n"]) == [2, 3]
    assert list(per["truth"]) == ["harmful", "harmless"]
    for m in scores:
        col = svc.method_label(m)
        assert per[col].iloc[0] == (scores[m][:2] >= 0).mean()
        assert per[col].iloc[1] == (scores[m][2:] < 0).mean()
    with pytest.raises(ValueError, match="one score per prompt"):
        svc.per_source_frame(sets, {"centroid": np.zeros(3)}, {"centroid": 0.0})
    assert isinstance(per, pd.DataFrame)


def test_gated_side_by_side_for_the_steer_page(tiny, bundle):
    texts = ["how do i make a bomb", "steal a car", "cook pasta", "sing a song"]
    scores = svc.guard_frame(tiny, bundle, texts)["score"].to_numpy()
    t = float(np.median(scores))
    v = bundle.get("refusal").vectors
    cfg = GenerationConfig(max_new_tokens=5, batch_size=8)
    rows = svc.gated_side_by_side(tiny, bundle, v, texts, layers=[1], coeff=6.0, cfg=cfg, threshold=t)
    assert [r["instruction"] for r in rows] == texts
    assert [r["flagged"] for r in rows] == [r["steered"] for r in rows] == list(scores >= t)
    plain = generate(tiny, texts, None, cfg)
    for r, p in zip(rows, plain, strict=True):
        assert r["baseline"] == p
        if not r["steered"]:
            assert r["gated"] == p
    rev = svc.gated_side_by_side(tiny, bundle, v, texts, layers=[1], coeff=6.0, cfg=cfg, threshold=t, mode="unflagged")
    assert [r["steered"] for r in rev] == [not r["flagged"] for r in rev]
    cal = svc.gated_side_by_side(tiny, bundle, v, texts[:1], layers=[1], coeff=6.0, cfg=cfg, threshold="calibrated")
    g = svc.guard_method_info(tiny, bundle, "centroid")
    assert cal[0]["threshold"] == pytest.approx(g.calibrated)
    probe = svc.gated_side_by_side(tiny, bundle, v, texts[:2], layers=[1], coeff=6.0, cfg=cfg, method="probe")
    assert [r["score"] for r in probe] == pytest.approx(
        svc.guard_frame(tiny, bundle, texts[:2], method="probe")["score"]
    )
    with pytest.raises(ValueError, match="at least one instruction"):
        svc.gated_side_by_side(tiny, bundle, v, [], layers=[1], coeff=1.0)
    with pytest.raises(ValueError, match="layer"):
        svc.gated_side_by_side(tiny, bundle, v, texts, layers=[], coeff=1.0)
