"""Tests for engine.directions: diff-of-means, normalisation, arithmetic, belief scores, cosines."""

from __future__ import annotations

import numpy as np
import pytest

from engine.directions import (
    CosineInterval,
    DirectionBundle,
    DirectionSet,
    belief_scores,
    bootstrap_cosine,
    cosine,
    delta,
    layer_cosines,
)

R, D = 4, 32


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def planted(rng, n=200, scale=3.0):
    """Activations whose classes differ by ``scale * u`` per row (u a unit direction) plus noise."""
    u = rng.normal(size=(R, D))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    base = rng.normal(size=(R, D)) * 2
    pos = base + scale * u + rng.normal(size=(n, R, D)) * 0.5
    neg = base + rng.normal(size=(n, R, D)) * 0.5
    return u, pos, neg


def test_diff_of_means_recovers_a_planted_direction(rng):
    u, pos, neg = planted(rng)
    d = DirectionSet.from_diff_of_means("h", pos, neg, position="t_inst", meta={"pos": "a"})
    assert d.vectors.shape == (R, D) and d.vectors.dtype == np.float32
    assert (layer_cosines(d, u) > 0.99).all()
    np.testing.assert_allclose(d.norms(), 3.0, rtol=0.05)
    np.testing.assert_allclose(d.pos_centroid - d.neg_centroid, d.vectors, atol=1e-5)
    np.testing.assert_allclose(d.pos_centroid, pos.mean(0), atol=1e-5)
    assert (d.n_pos, d.n_neg, d.position, d.normalized) == (200, 200, "t_inst", False)
    assert d.meta == {"pos": "a"}
    assert (d.n_rows, d.hidden_size) == (R, D)


def test_diff_of_means_exact_on_hand_data():
    pos = np.array([[[1.0, 0.0]], [[3.0, 0.0]]])  # (2, 1, 2)
    neg = np.array([[[0.0, 1.0]]])
    d = DirectionSet.from_diff_of_means("x", pos, neg)
    np.testing.assert_array_equal(d.vectors, [[2.0, -1.0]])
    d2 = DirectionSet.from_diff_of_means("x", pos[0, 0][None], neg[0])  # (L+1, d) single examples
    np.testing.assert_array_equal(d2.vectors, [[1.0, -1.0]])


def test_normalize_gives_unit_norms(rng):
    _, pos, neg = planted(rng, n=20)
    d = DirectionSet.from_diff_of_means("h", pos, neg, normalize=True)
    assert d.normalized
    np.testing.assert_allclose(d.norms(), 1.0, atol=1e-6)
    raw = DirectionSet.from_diff_of_means("h", pos, neg)
    np.testing.assert_allclose(raw.unit().vectors, d.vectors, atol=1e-6)
    np.testing.assert_allclose(layer_cosines(raw, d), 1.0, atol=1e-6)
    zero = DirectionSet("z", np.zeros((R, D)))
    assert np.isfinite(zero.unit().vectors).all()


def test_arithmetic(rng):
    a = DirectionSet("a", rng.normal(size=(R, D)))
    b = DirectionSet("b", rng.normal(size=(R, D)))
    np.testing.assert_allclose((-2.0 * a).vectors, -2.0 * a.vectors, rtol=1e-6)
    np.testing.assert_allclose((a * 0.5).vectors, 0.5 * a.vectors, rtol=1e-6)
    np.testing.assert_allclose((a + b).vectors, a.vectors + b.vectors, rtol=1e-6)
    np.testing.assert_allclose((a - b).vectors, a.vectors - b.vectors, rtol=1e-6)
    np.testing.assert_allclose((-a).vectors, -a.vectors)
    assert (-2.0 * a).name == "-2*a"
    assert (a + b).name == "a+b"
    assert (a + b).pos_centroid is None
    assert (a * 3).vectors.dtype == np.float32
    # the operands are unchanged
    assert not np.allclose(a.vectors, (a + b).vectors)
    with pytest.raises(ValueError, match="shapes differ"):
        a + DirectionSet("c", np.ones((R, D + 1)))


def test_belief_scores_on_hand_vectors():
    mu_pos = np.array([[1.0, 0.0], [0.0, 2.0]])  # 2 rows, d=2
    mu_neg = np.array([[0.0, 1.0], [3.0, 0.0]])
    h = np.array(
        [
            [[2.0, 0.0], [0.0, 5.0]],  # along pos in both rows: +1 each
            [[0.0, 1.0], [1.0, 0.0]],  # along neg in both rows: -1 each
            [[1.0, 1.0], [-1.0, 0.0]],  # in between (0), then anti-neg (+1)
        ]
    )
    s = belief_scores(h, mu_pos, mu_neg)
    assert s.shape == (3, 2) and s.dtype == np.float64
    np.testing.assert_allclose(s, [[1.0, 1.0], [-1.0, -1.0], [0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(delta(h, mu_pos, mu_neg), [1.0, -1.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(delta(h, mu_pos, mu_neg, rows=[1]), [1.0, -1.0, 1.0], atol=1e-12)
    single = belief_scores(h[0], mu_pos, mu_neg)
    np.testing.assert_allclose(single, [[1.0, 1.0]])
    d = DirectionSet("h", mu_pos - mu_neg, pos_centroid=mu_pos, neg_centroid=mu_neg)
    np.testing.assert_allclose(d.beliefs(h), s)
    with pytest.raises(ValueError, match="no centroids"):
        DirectionSet("h", mu_pos).beliefs(h)
    with pytest.raises(ValueError, match="do not match"):
        belief_scores(h, mu_pos[:1], mu_neg)


def test_belief_scores_zero_vectors_are_finite():
    s = belief_scores(np.zeros((1, 2, 3)), np.ones((2, 3)), -np.ones((2, 3)))
    assert np.isfinite(s).all()
    np.testing.assert_allclose(s, 0.0)


def test_cosine_and_layer_cosines(rng):
    a = rng.normal(size=(R, D))
    np.testing.assert_allclose(cosine(a, a), 1.0)
    np.testing.assert_allclose(cosine(a, -3 * a), -1.0)
    np.testing.assert_allclose(cosine(np.array([1.0, 0.0]), np.array([0.0, 4.0])), 0.0)
    assert cosine(np.zeros(3), np.ones(3)) == 0.0
    cos = layer_cosines(DirectionSet("a", a), -a)
    assert cos.shape == (R,)
    np.testing.assert_allclose(cos, -1.0, atol=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        layer_cosines(a, a[:2])


def test_nan_and_bad_shapes_rejected(rng):
    v = rng.normal(size=(R, D))
    v[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DirectionSet("n", v)
    v[1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN"):
        DirectionSet("n", v)
    pos = rng.normal(size=(5, R, D))
    pos[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DirectionSet.from_diff_of_means("n", pos, rng.normal(size=(5, R, D)))
    with pytest.raises(ValueError, match=r"\(L\+1, d\)"):
        DirectionSet("n", np.ones(D))
    with pytest.raises(ValueError, match="at least one example"):
        DirectionSet.from_diff_of_means("n", np.zeros((0, R, D)), np.ones((3, R, D)))
    with pytest.raises(ValueError, match="shapes differ"):
        DirectionSet.from_diff_of_means("n", np.ones((2, R, D)), np.ones((2, R + 1, D)))
    with pytest.raises(ValueError):
        DirectionSet.from_diff_of_means("n", np.ones((2, 2, R, D)), np.ones((2, 2, R, D)))


def test_bundle(rng):
    h = DirectionSet("harmfulness", rng.normal(size=(R, D)))
    r = DirectionSet("refusal", rng.normal(size=(R, D)))
    c = DirectionSet("category:weapons", rng.normal(size=(R, D)))
    b = DirectionBundle({"harmfulness": h, "refusal": r, "category:weapons": c}, {"model_id": "m"})
    assert b.harmfulness is h and b.refusal is r
    assert b.names() == ["harmfulness", "refusal", "category:weapons"]
    assert b.categories() == ["category:weapons"]
    assert (b.n_rows, b.hidden_size) == (R, D)
    s = b.summary()
    assert s["n_layers"] == R - 1 and s["hidden_size"] == D
    assert len(s["cosine_harmfulness_refusal"]) == R
    np.testing.assert_allclose(s["cosine_harmfulness_refusal"], layer_cosines(h, r), atol=1e-5)
    with pytest.raises(KeyError, match="no direction named"):
        b.get("nope")
    assert h.summary()["norms"] == [round(float(x), 5) for x in h.norms()]


# ------------------------------------------------------------------------------- bootstrap interval of the cosine
def two_directions(rng, n_per_group: int, noise: float = 1.5):
    """States of 2n prompts at two positions: group 1 vs group 0 differ by u at position a and by w at b, where u and
    w share a known part (their cosine is about 0.5), plus noise."""
    u = rng.normal(size=(R, D))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    z = rng.normal(size=(R, D))
    z -= (z * u).sum(1, keepdims=True) * u
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    w = 0.5 * u + np.sqrt(0.75) * z
    y = np.repeat([True, False], n_per_group)
    a = rng.normal(size=(2 * n_per_group, R, D)) * noise + 2.0 * y[:, None, None] * u
    b = rng.normal(size=(2 * n_per_group, R, D)) * noise + 2.0 * y[:, None, None] * w
    return a, b, y


def test_bootstrap_cosine_is_seeded_and_contains_the_point(rng):
    a, b, y = two_directions(rng, 60)
    ci = bootstrap_cosine(a, y, ~y, b, y, ~y, n_boot=300, seed=1)
    assert isinstance(ci, CosineInterval) and ci.point.shape == ci.low.shape == ci.high.shape == (R,)
    np.testing.assert_allclose(ci.point, cosine(a[y].mean(0) - a[~y].mean(0), b[y].mean(0) - b[~y].mean(0)))
    assert (ci.low <= ci.point).all() and (ci.point <= ci.high).all() and (ci.low < ci.high).all()
    assert (ci.low < 0.5).all() and (ci.high > 0.3).all()  # the planted cosine is about 0.5
    again = bootstrap_cosine(a, y, ~y, b, y, ~y, n_boot=300, seed=1)
    np.testing.assert_array_equal(again.low, ci.low)
    np.testing.assert_array_equal(again.high, ci.high)
    other = bootstrap_cosine(a, y, ~y, b, y, ~y, n_boot=300, seed=2)
    assert not np.array_equal(other.low, ci.low)
    assert ci.groups == {"a_pos": 60, "a_neg": 60, "b_pos": 60, "b_neg": 60}
    back = CosineInterval.from_dict(ci.to_dict())
    np.testing.assert_allclose(back.high, ci.high, atol=1e-5)
    assert back.n_boot == 300 and back.level == 0.95


def test_bootstrap_interval_narrows_with_more_prompts(rng):
    widths = []
    for n in (15, 240):
        a, b, y = two_directions(rng, n)
        ci = bootstrap_cosine(a, y, ~y, b, y, ~y, n_boot=200, seed=0)
        widths.append(float((ci.high - ci.low).mean()))
    assert widths[1] < widths[0] / 2


def test_bootstrap_resamples_within_groups_and_checks_input(rng):
    a, b, y = two_directions(rng, 20)
    # different groups behind the two directions (e.g. the refusal direction pooling more prompts)
    pooled = y.copy()
    pooled[:5] = False
    ci = bootstrap_cosine(a, y, ~y, b, pooled, ~pooled, n_boot=50)
    assert ci.groups == {"a_pos": 20, "a_neg": 20, "b_pos": 15, "b_neg": 25}
    with pytest.raises(ValueError, match="selects no prompt"):
        bootstrap_cosine(a, y, np.zeros_like(y), b, y, ~y)
    with pytest.raises(ValueError, match="one entry per prompt"):
        bootstrap_cosine(a, y[:3], ~y, b, y, ~y)
    with pytest.raises(ValueError, match="same prompts"):
        bootstrap_cosine(a, y, ~y, b[:, :2], y, ~y)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_cosine(a, y, ~y, b, y, ~y, n_boot=3)
    with pytest.raises(ValueError, match="level"):
        bootstrap_cosine(a, y, ~y, b, y, ~y, level=1.5)


def test_bootstrap_of_a_direction_that_is_zero_at_a_row_is_zero_there(rng):
    """Row 0 at t_post_inst: every prompt has the same state, so the refusal direction is 0 there; resampled means
    differ only by rounding, which must not turn into random cosines."""
    a, b, y = two_directions(rng, 30)
    b[:, 0] = rng.normal(size=D) * 50  # the same state for every prompt
    ci = bootstrap_cosine(a, y, ~y, b, y, ~y, n_boot=100)
    assert ci.point[0] == ci.low[0] == ci.high[0] == 0.0
    assert (ci.high[1:] > 0).all()
