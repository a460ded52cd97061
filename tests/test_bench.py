"""bench/run_benchmarks.py: every benchmark runs on tiny-random with tiny sizes and returns its keys (no timings)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run_benchmarks as rb  # noqa: E402

TINY_GIB = 1 / 1024  # 1 MiB


def test_bandwidth_keys():
    r = rb.bench_bandwidth(TINY_GIB, repeats=1)
    assert r["bytes"] == 2**20
    assert r["bandwidth_gib_s"] > 0 and r["threads"] >= 1
    with pytest.raises(ValueError):
        rb.bench_bandwidth(0)


def test_bytes_per_token_counts_blocks_and_head(tiny):
    r = rb.bytes_per_token(tiny)
    blocks = sum(p.numel() for b in tiny.layers for p in b.parameters())
    head = tiny.model.lm_head.weight.numel()
    assert (r["block_params"], r["lm_head_params"], r["itemsize"]) == (blocks, head, 4)
    assert r["bytes_per_token"] == 4 * (blocks + head)


def test_decode_reports_the_fraction_of_the_bandwidth_limit(tiny):
    bw = rb.bench_bandwidth(TINY_GIB, repeats=1)
    r = rb.bench_decode(tiny, repeats=1, new_tokens=3, bandwidth=bw)
    for k in ("unsteered_tok_s", "steered_tok_s", "ratio", "engine_decode_tok_s", "limit_tok_s", "bytes_per_token"):
        assert r[k] > 0, k
    assert r["bandwidth_gib_s"] == bw["bandwidth_gib_s"]
    assert r["limit_tok_s"] == pytest.approx(bw["bandwidth_gib_s"] * 2**30 / r["bytes_per_token"])
    assert r["fraction_of_limit"] == pytest.approx(r["engine_decode_tok_s"] / r["limit_tok_s"])
    assert "bytes_per_token" in r["limit_formula"] and r["dtype"] == "float32"
    assert 1 <= r["engine_tokens"] <= 3


def test_side_by_side_keeps_ratio_vs_one_call(tiny):
    r = rb.bench_side_by_side(tiny, repeats=1, new_tokens=2)
    assert r["ratio_vs_one_call"] > 0 and r["max_new_tokens"] == 2


def test_ttft_has_one_row_per_column_and_instruction(tiny):
    r = rb.bench_ttft(tiny, repeats=1, new_tokens=2, instructions=["say hi", "tell me a joke"])
    assert [(x["instruction"], x["column"]) for x in r["rows"]] == [
        ("say hi", "baseline"),
        ("say hi", "steered"),
        ("tell me a joke", "baseline"),
        ("tell me a joke", "steered"),
    ]
    for x in r["rows"]:
        assert x["ttft_s"] is None or 0 < x["ttft_s"] <= r["total_s"]
    assert r["first_update_s"] > 0 and r["instructions"] == 2


@pytest.fixture(scope="module")
def guard_bundle(tiny):
    from engine.capture import capture
    from engine.datasets import load_builtin
    from engine.directions import DirectionBundle, DirectionSet
    from engine.guard import fit_guard_readers, with_readers

    harmful = load_builtin("harmful", "train").sample(12, seed=0).instructions()
    harmless = load_builtin("harmless", "train").sample(12, seed=0).instructions()
    acts = capture(tiny, harmful + harmless, ("t_inst",)).at("t_inst")
    d = DirectionSet.from_diff_of_means("harmfulness", acts[:12], acts[12:])
    bundle = DirectionBundle({"harmfulness": d, "guard": d}, {"model_id": "tiny-random"})
    record = fit_guard_readers(acts, [True] * 12 + [False] * 12, methods=("probe",))
    return with_readers(bundle, record)


def test_guard_reports_verdicts_per_second_for_each_method(tiny, guard_bundle):
    r = rb.bench_guard(tiny, repeats=1, n=6, batch_size=4, bundle=guard_bundle)
    assert (r["n"], r["batch_size"]) == (6, 4)
    for m in ("centroid", "probe"):
        assert set(r[m]) == {"s", "verdicts_per_s", "score_only_s", "score_only_per_s"}
        assert r[m]["verdicts_per_s"] == pytest.approx(6 / r[m]["s"])


def test_fidelity_compares_two_dtypes(tiny):
    r = rb.bench_fidelity("tiny-random", limit=3, new_tokens=3, batch_size=8)
    assert r["dtypes"] == ["float32", "bfloat16"]
    assert r["n_test"] == 9 and r["n_train"] == 9 and r["limit"] == 3
    for k in (
        "greedy_texts_identical_share",
        "refusal_labels_identical_share",
        "guard_verdicts_identical_share",
        "train_labels_identical_share",
    ):
        assert 0.0 <= r[k] <= 1.0, k
    assert set(r["direction_cosine"]) == {"harmfulness", "refusal", "guard"}
    for k, cos in r["direction_cosine"].items():
        assert len(cos) == tiny.n_rows
        known = [c for c in cos if c is not None]
        assert r["direction_cosine_min"][k] == pytest.approx(min(known))
        assert max(known) <= 1.0 + 1e-9
    json.dumps(r, allow_nan=False)  # strict JSON: a zero direction (row 0 at t_post_inst) is null, not NaN
    assert r["direction_cosine_min"]["guard"] > 0.5  # bfloat16 rounding, not another direction


def test_same_dtype_fidelity_is_exact():
    r = rb.bench_fidelity("tiny-random", limit=2, new_tokens=2, batch_size=8, dtypes=("float32", "float32"))
    assert r["greedy_texts_identical_share"] == 1.0 and r["guard_verdicts_identical_share"] == 1.0
    assert min(r["direction_cosine_min"].values()) == pytest.approx(1.0)


def test_cli_json_prints_one_object_per_benchmark(tmp_path, capsys):
    rb.main(["bandwidth", "--gib", str(TINY_GIB), "--repeats", "1", "--json", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["benchmark"] == "bandwidth" and doc["dtype_option"] == "auto" and doc["bandwidth_gib_s"] > 0
    assert json.loads((tmp_path / "bandwidth-default.json").read_text())["bytes"] == doc["bytes"]


@pytest.mark.parametrize("argv", [["decode", "--dtype", "float16"], ["nosuch"], ["fidelity", "--limit", "0"]])
def test_cli_refuses_bad_arguments(argv):
    with pytest.raises(SystemExit):
        rb.parse_args(argv)


def test_cli_dtype_reaches_the_model(tmp_path, capsys):
    argv = ["side_by_side", "--model", "tiny-random", "--dtype", "bfloat16", "--repeats", "1", "--new-tokens", "2"]
    rb.main([*argv, "--json", "--out", str(tmp_path)])
    doc = json.loads(capsys.readouterr().out)
    assert doc["dtype"] == "bfloat16" and "ratio_vs_one_call" in doc
    assert (tmp_path / "side_by_side-tiny-random-bfloat16.json").is_file()
