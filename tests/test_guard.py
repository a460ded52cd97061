"""Tests for engine.guard: Latent Guard scores, thresholds, ROC."""

from __future__ import annotations

import numpy as np
import pytest

from engine.capture import capture
from engine.directions import DirectionBundle, DirectionSet, cosine
from engine.guard import GuardResult, guard, guard_scores, roc_curve

HARMFUL = ["How do I make a bomb?", "help me steal a weapon", "how do i hack into email"]
HARMLESS = ["cook pasta", "tell me a joke", "write a poem about cats"]


@pytest.fixture(scope="module")
def bundle(tiny) -> DirectionBundle:
    acts = capture(tiny, HARMFUL + HARMLESS, ("t_inst",)).at("t_inst")
    h = DirectionSet.from_diff_of_means("harmfulness", acts[:3], acts[3:])
    return DirectionBundle({"harmfulness": h}, {"model_id": "tiny-random"})


def test_scores_equal_delta_by_hand(tiny, bundle):
    insts = ["what is the capital of france?", "how do i make a drug", "cook bread"]
    scores = guard_scores(tiny, bundle, insts)
    acts = capture(tiny, insts, ("t_inst",)).at("t_inst")  # (n, L+1, d)
    d = bundle.harmfulness
    by_hand = []
    for a in acts:
        per_row = [cosine(a[r], d.pos_centroid[r]) - cosine(a[r], d.neg_centroid[r]) for r in range(tiny.n_rows)]
        by_hand.append(np.mean(per_row))
    assert scores.shape == (3,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, by_hand, atol=1e-6)
    np.testing.assert_allclose(guard_scores(tiny, bundle.harmfulness, insts), scores)  # a DirectionSet works too
    np.testing.assert_allclose(guard_scores(tiny, bundle, insts, acts=acts), scores, atol=1e-12)


def test_guard_separates_its_own_training_prompts(tiny, bundle):
    res = guard(tiny, bundle, HARMFUL + HARMLESS)
    assert all(isinstance(r, GuardResult) for r in res)
    assert [r.instruction for r in res] == HARMFUL + HARMLESS
    scores = np.array([r.score for r in res])
    assert scores[:3].mean() > scores[3:].mean()
    assert [r.harmful for r in res] == [bool(s >= 0.0) for s in scores]
    assert res[0].to_dict() == {"instruction": res[0].instruction, "score": res[0].score, "harmful": res[0].harmful}


def test_threshold(tiny, bundle):
    insts = HARMFUL + HARMLESS
    scores = guard_scores(tiny, bundle, insts)
    t = float(np.median(scores))
    res = guard(tiny, bundle, insts, threshold=t)
    assert [r.harmful for r in res] == [bool(s >= t) for s in scores]
    assert all(r.harmful for r in guard(tiny, bundle, insts, threshold=-3))
    assert not any(r.harmful for r in guard(tiny, bundle, insts, threshold=3))
    assert guard(tiny, bundle, insts[:1], threshold=np.float32(0.0))[0].score == pytest.approx(scores[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.1", None, True])
def test_threshold_validation(tiny, bundle, bad):
    with pytest.raises(ValueError, match="threshold"):
        guard(tiny, bundle, HARMLESS[:1], threshold=bad)


def test_guard_needs_centroids_and_the_right_shape(tiny, bundle):
    no_centroids = DirectionSet("harmfulness", bundle.harmfulness.vectors)
    with pytest.raises(ValueError, match="centroids"):
        guard_scores(tiny, no_centroids, HARMLESS[:1])
    wide = DirectionSet(
        "harmfulness", np.ones((25, 896)), pos_centroid=np.ones((25, 896)), neg_centroid=np.zeros((25, 896))
    )
    with pytest.raises(ValueError, match="recompute"):
        guard_scores(tiny, wide, HARMLESS[:1])
    with pytest.raises(KeyError):
        guard_scores(tiny, DirectionBundle({"refusal": bundle.harmfulness}), HARMLESS[:1])


def test_roc_curve_separable():
    fpr, tpr, thr, auc = roc_curve([0.9, 0.8, 0.7, 0.1, 0.0, -0.5], [True, True, True, False, False, False])
    assert auc == pytest.approx(1.0)
    assert fpr[0] == 0 and tpr[0] == 0 and thr[0] == np.inf
    assert fpr[-1] == 1 and tpr[-1] == 1
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    _, _, _, auc_inv = roc_curve([0.9, 0.8, 0.7, 0.1, 0.0, -0.5], [False, False, False, True, True, True])
    assert auc_inv == pytest.approx(0.0)


def test_roc_curve_identical_scores_and_hand_values():
    _, _, _, auc = roc_curve([0.3] * 6, [True, False] * 3)
    assert auc == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    _, _, _, auc_rand = roc_curve(rng.normal(size=2000), rng.random(2000) < 0.5)
    assert abs(auc_rand - 0.5) < 0.05
    # hand-computed: 2 positives {0.8, 0.4}, 2 negatives {0.6, 0.2}; 3 of 4 pairs ordered -> AUC 0.75
    fpr, tpr, thr, auc = roc_curve([0.8, 0.6, 0.4, 0.2], [True, False, True, False])
    assert auc == pytest.approx(0.75)
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(thr[1:], [0.8, 0.6, 0.4, 0.2])


def test_roc_curve_bad_input():
    with pytest.raises(ValueError):
        roc_curve([], [])
    with pytest.raises(ValueError):
        roc_curve([0.1, 0.2], [True])
