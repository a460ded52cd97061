"""Tests for engine.guard.readers: LDA and probe readers, CV layer choice, threshold calibration, storage."""

from __future__ import annotations

import numpy as np
import pytest

from engine.directions import DirectionSet
from engine.guard.readers import (
    LinearReader,
    auc,
    balanced_accuracy,
    calibrate_threshold,
    centroid_cv,
    fit_reader,
    stratified_folds,
)


def _planted(n: int = 120, rows: int = 5, d: int = 16, row: int = 3, sep: float = 4.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(n, rows, d)).astype(np.float32)
    y = np.arange(n) % 3 == 0  # unbalanced on purpose (1/3 harmful)
    v = np.random.default_rng(99).normal(size=d)  # the same planted direction for every sample
    v /= np.linalg.norm(v)
    acts[:, row] += (np.where(y, sep, -sep)[:, None] * v).astype(np.float32)
    return acts, y


@pytest.mark.parametrize("method", ["lda", "probe"])
def test_planted_direction_is_recovered(method):
    acts, y = _planted()
    reader = fit_reader(method, acts, y, top_k=1)
    assert reader.layers == (3,)
    assert reader.weights.shape == acts.shape[1:]
    assert not reader.weights[[0, 1, 2, 4]].any()
    test_acts, test_y = _planted(seed=1)
    s = reader.score(test_acts)
    assert ((s >= 0) == test_y).mean() == 1.0
    assert ((s >= reader.threshold) == test_y).mean() == 1.0
    assert reader.cv["auc"] == 1.0 and reader.cv["n"] == 120 and reader.cv["n_harmful"] == 40
    assert reader.hyper["folds"] == 5


def test_reader_round_trips_through_a_direction_set():
    acts, y = _planted()
    reader = fit_reader("lda", acts, y, hypers=(0.5,))
    d = reader.to_direction_set()
    assert isinstance(d, DirectionSet) and d.meta["kind"] == "guard_reader"
    back = LinearReader.from_direction_set(d)
    assert back.layers == reader.layers and back.method == "lda" and back.threshold == reader.threshold
    np.testing.assert_allclose(back.score(acts), reader.score(acts), rtol=1e-6)
    with pytest.raises(ValueError, match="not a stored guard reader"):
        LinearReader.from_direction_set(DirectionSet("x", np.zeros((2, 3))))
    with pytest.raises(ValueError, match="do not match"):
        reader.score(acts[:, :2])


def test_lda_woodbury_path_matches_the_direct_solve():
    from engine.guard.readers import _fit_lda

    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 50))  # p > n: Woodbury
    y = np.arange(30) % 2 == 0
    w1, b1 = _fit_lda(x, y, 0.3)
    x2 = np.concatenate([x, x])  # n > p with the same covariance up to the n - 2 normaliser
    y2 = np.concatenate([y, y])
    mu1, mu0 = x[y].mean(0), x[~y].mean(0)
    xc = np.concatenate([x[y] - mu1, x[~y] - mu0])
    cov = xc.T @ xc / 28
    cov = 0.7 * cov + 0.3 * np.trace(cov) / 50 * np.eye(50)
    w_direct = np.linalg.solve(cov, mu1 - mu0)
    np.testing.assert_allclose(w1, w_direct, rtol=1e-8, atol=1e-10)
    assert abs(b1 - float(-w_direct @ (mu1 + mu0) / 2)) < 1e-8
    assert _fit_lda(x2, y2, 0.3)[0].shape == (50,)


def test_auc_and_balanced_accuracy():
    assert auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert np.isnan(auc([1.0, 2.0], [True, True]))
    assert balanced_accuracy(np.array([1, 1, 1, 1], bool), np.array([1, 0, 0, 0], bool)) == 0.5
    t = calibrate_threshold(np.array([-3.0, -2.0, 1.0, 2.0]), np.array([False, False, True, True]))
    assert -2.0 < t < 1.0


def test_stratified_folds_cover_everything_once():
    y = np.arange(53) % 4 == 0
    folds = stratified_folds(y, 5, seed=2)
    got = np.sort(np.concatenate(folds))
    assert got.tolist() == list(range(53))
    for f in folds:
        assert 2 <= y[f].sum() <= 3
    with pytest.raises(ValueError, match="at least 5"):
        stratified_folds(np.array([True] * 3 + [False] * 10), 5)


def test_centroid_cv_and_bad_input():
    acts, y = _planted()
    res = centroid_cv(acts, y)
    assert 0.5 < res["auc"] <= 1.0 and np.isfinite(res["threshold"])
    with pytest.raises(ValueError, match="reader method"):
        fit_reader("svm", acts, y)
    with pytest.raises(ValueError, match="one label per prompt"):
        fit_reader("lda", acts, y[:-1])
    with pytest.raises(ValueError, match="layers must be"):
        fit_reader("lda", acts, y, layers=[9])


def test_band_reader_recovers_a_planted_direction_in_a_band():
    from engine.guard.readers import band_rows

    acts, y = _planted(rows=7, row=5)
    reader = fit_reader("lda-band", acts, y)
    assert reader.method == "lda-band" and reader.weights.shape == acts.shape[1:]
    assert reader.hyper["band"] in reader.hyper["bands"] and 5 in reader.layers
    assert reader.layers == band_rows(reader.hyper["band"], 7)
    assert not reader.weights[[r for r in range(7) if r not in reader.layers]].any()
    test_acts, test_y = _planted(rows=7, row=5, seed=1)
    assert ((reader.score(test_acts) >= 0) == test_y).mean() == 1.0
    assert reader.features in ("raw", "unit") and reader.cv["auc"] == 1.0
    lo, hi = reader.cv["oof_range"]
    assert lo < 0 < hi


def test_bands_never_include_the_embeddings_and_cover_the_top():
    from engine.guard.readers import BANDS, band_rows

    for n_rows in (4, 25, 29):
        for name in BANDS:
            rows = band_rows(name, n_rows)
            assert rows and min(rows) >= 1 and max(rows) <= n_rows - 1
            assert list(rows) == list(range(rows[0], rows[-1] + 1))
        assert band_rows("all", n_rows) == tuple(range(1, n_rows))
        assert max(band_rows("upper-1/3", n_rows)) == n_rows - 1


def test_unit_features_are_scale_free():
    """A reader on unit-norm rows gives the same score when a prompt's states are rescaled."""
    acts, _y = _planted(rows=4, row=2)
    r = LinearReader("x", "lda-band", np.ones((4, 16), np.float32), 0.1, (1, 2, 3), features="unit")
    scaled = acts * np.array([1.0, 3.0, 0.2, 7.0], dtype=np.float32)[None, :, None]
    np.testing.assert_allclose(r.score(acts), r.score(scaled), rtol=1e-5)  # each row rescaled on its own
    raw = LinearReader("x", "lda", np.ones((4, 16), np.float32), 0.1, (1, 2, 3))
    assert not np.allclose(raw.score(acts), raw.score(scaled), rtol=1e-3)
    with pytest.raises(ValueError, match="features"):
        LinearReader("x", "lda", np.ones((4, 16), np.float32), 0.0, (1,), features="log")


def test_lda_path_matches_one_solve_per_shrinkage():
    from engine.guard.readers import _lda_path

    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 12))
    y = np.arange(40) % 2 == 0
    path = _lda_path(x, y, [0.1, 0.6, 1.0])
    mu1, mu0 = x[y].mean(0), x[~y].mean(0)
    xc = np.concatenate([x[y] - mu1, x[~y] - mu0])
    cov = xc.T @ xc / 38
    for a, (w, _b, sd) in zip([0.1, 0.6, 1.0], path, strict=True):
        s = (1 - a) * cov + a * np.trace(cov) / 12 * np.eye(12)
        w_direct = np.linalg.solve(s, mu1 - mu0)
        np.testing.assert_allclose(w, w_direct, rtol=1e-8, atol=1e-10)
        assert sd == pytest.approx(np.sqrt(((xc @ w_direct) ** 2).sum() / 38))
    with pytest.raises(ValueError, match="shrinkage"):
        _lda_path(x, y, [0.0])
