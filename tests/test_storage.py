"""Tests for engine.storage: safetensors + JSON provenance round trips, model checks, malformed files, no pickle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from engine.capture import LAYER_CONVENTION
from engine.directions import DirectionBundle, DirectionSet
from engine.storage import (
    FLOAT16_REL_ERROR,
    FORMAT,
    META_KEY,
    StorageError,
    bundle_from_bytes,
    bundle_path,
    bundle_to_bytes,
    check_compatible,
    load_bundle,
    make_provenance,
    save_bundle,
    to_buffer,
)

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def make_bundle(handle=None, rows=4, width=64, **prov) -> DirectionBundle:
    rng = np.random.default_rng(1)
    mu_p, mu_n = rng.normal(size=(rows, width)), rng.normal(size=(rows, width))
    dirs = {
        "harmfulness": DirectionSet.from_diff_of_means(
            "harmfulness", mu_p[None], mu_n[None], meta={"pos": "refused_harmful"}
        ),
        "refusal": DirectionSet.from_diff_of_means(
            "refusal", mu_n[None], mu_p[None], position="t_post_inst", normalize=True
        ),
        "category:weapons": DirectionSet("category:weapons", rng.normal(size=(rows, width)), n_pos=7, n_neg=9),
    }
    provenance = make_provenance(handle, data={"harmful": [{"sha256": "ab" * 32}]}) if handle is not None else {}
    provenance.update(prov)
    return DirectionBundle(dirs, provenance)


def assert_same(a: DirectionBundle, b: DirectionBundle) -> None:
    assert a.names() == b.names()
    for name in a.names():
        x, y = a.get(name), b.get(name)
        np.testing.assert_array_equal(x.vectors, y.vectors)
        for attr in ("pos_centroid", "neg_centroid"):
            if getattr(x, attr) is None:
                assert getattr(y, attr) is None
            else:
                np.testing.assert_array_equal(getattr(x, attr), getattr(y, attr))
        assert (x.position, x.n_pos, x.n_neg, x.normalized, x.meta) == (
            y.position,
            y.n_pos,
            y.n_neg,
            y.normalized,
            y.meta,
        )
    assert a.provenance == b.provenance


def test_round_trip(tiny, tmp_path):
    b = make_bundle(tiny)
    path = save_bundle(b, tmp_path / "dirs.safetensors")
    assert path == tmp_path / "dirs.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dirs.json", "dirs.safetensors"]  # no temp files left
    back = load_bundle(path, tiny)
    assert_same(b, back)
    assert back.refusal.normalized and back.refusal.position == "t_post_inst"
    prov = back.provenance
    assert prov["format"] == FORMAT
    assert prov["layer_convention"] == LAYER_CONVENTION
    for k, v in tiny.fingerprint().items():
        assert prov[k] == v
    side = json.loads((tmp_path / "dirs.json").read_text())
    assert side["provenance"] == prov
    assert side["summary"]["hidden_size"] == 64
    assert_same(b, bundle_from_bytes(bundle_to_bytes(b)))
    assert_same(b, bundle_from_bytes(to_buffer(b).getvalue()))


def test_save_adds_the_suffix_and_overwrites(tiny, tmp_path):
    b = make_bundle(tiny)
    path = save_bundle(b, tmp_path / "sub" / "dirs")
    assert path.name == "dirs.safetensors" and path.is_file()
    b2 = make_bundle(tiny, extra="second")
    save_bundle(b2, path)
    assert load_bundle(path).provenance["extra"] == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["dirs.json", "dirs.safetensors"]


def test_refuses_another_models_shape(tiny, tmp_path):
    wide = make_bundle(rows=25, width=896, model_id="Qwen2.5-Coder-0.5B-Instruct")
    path = save_bundle(wide, tmp_path / "wide.safetensors")
    with pytest.raises(StorageError, match="25 rows x 896") as err:
        load_bundle(path, tiny)
    msg = str(err.value)
    assert "Qwen2.5-Coder-0.5B-Instruct" in msg and "4 rows" in msg
    assert "python -m engine precompute --model tiny-random" in msg
    deep = make_bundle(rows=5, width=64)
    with pytest.raises(StorageError, match="5 rows x 64"):
        check_compatible(deep, tiny)
    narrow = make_bundle(rows=4, width=32)
    with pytest.raises(StorageError):
        check_compatible(narrow, tiny)
    assert load_bundle(path).n_rows == 25  # without a handle there is nothing to check against


def test_refuses_another_chat_template_and_weights(tiny, tmp_path):
    other_template = make_bundle(tiny, template_hash="0123456789abcdef")
    path = save_bundle(other_template, tmp_path / "t.safetensors")
    with pytest.raises(StorageError, match="chat template"):
        load_bundle(path, tiny)
    other_weights = make_bundle(tiny, weights_hash="fedcba9876543210")
    # issue 15 item 13: other weights are refused by default (the README promises it), unless explicitly allowed
    with pytest.raises(StorageError, match="another model"):
        check_compatible(other_weights, tiny)
    check_compatible(other_weights, tiny, allow_other_model=True)
    check_compatible(make_bundle(tiny), tiny)


# ----------------------------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "data",
    [b"", b"short", b"x" * 100, b"\xff" * 64, (10**6).to_bytes(8, "little") + b"{" * 40],
    ids=["empty", "short", "text", "binary", "huge-header"],
)
def test_malformed_bytes(data):
    with pytest.raises(StorageError):
        bundle_from_bytes(data)


def test_truncated_file(tiny, tmp_path):
    data = bundle_to_bytes(make_bundle(tiny))
    for cut in (len(data) // 2, len(data) - 1, 20):
        with pytest.raises(StorageError):
            bundle_from_bytes(data[:cut])
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(StorageError):
        load_bundle(path, tiny)


def test_plain_safetensors_without_our_metadata():
    plain = st_save({"vectors": np.ones((4, 64), dtype=np.float32)})
    with pytest.raises(StorageError, match="not a steering-explorer directions file"):
        bundle_from_bytes(plain)
    other_meta = st_save({"vectors": np.ones((4, 64), dtype=np.float32)}, metadata={"format": "pt"})
    with pytest.raises(StorageError, match="not a steering-explorer directions file"):
        bundle_from_bytes(other_meta)


def _with_doc(doc, tensors=None) -> bytes:
    tensors = tensors if tensors is not None else {"harmfulness/vectors": np.ones((4, 64), dtype=np.float32)}
    meta = doc if isinstance(doc, str) else json.dumps(doc)
    return st_save(tensors, metadata={META_KEY: meta})


@pytest.mark.parametrize(
    "doc,tensors,match",
    [
        ("{not json", None, "not valid JSON"),
        ({"format": "something-else/v9", "directions": {"harmfulness": {}}}, None, "unsupported format"),
        ({"format": FORMAT, "directions": {}}, None, "no directions"),
        ({"format": FORMAT, "directions": {"refusal": {}}}, None, "no vectors"),
        (
            {"format": FORMAT, "directions": {"harmfulness": {}}},
            {"harmfulness/vectors": np.full((4, 64), np.nan, dtype=np.float32)},
            "NaN",
        ),
        (
            {"format": FORMAT, "directions": {"a": {}, "b": {}}},
            {"a/vectors": np.ones((4, 64), dtype=np.float32), "b/vectors": np.ones((4, 32), dtype=np.float32)},
            "shape",
        ),
        (
            {"format": FORMAT, "directions": {"a": {}}},
            {"a/vectors": np.ones((4, 64, 2), dtype=np.float32)},
            "shape",
        ),
        # structurally wrong but valid JSON: still a StorageError, not an AttributeError
        ({"format": FORMAT, "directions": ["harmfulness"]}, None, "malformed"),
        ({"format": FORMAT, "directions": {"harmfulness": "oops"}}, None, "malformed"),
        ({"format": FORMAT, "directions": {"harmfulness": {"n_pos": "many"}}}, None, "malformed"),
        (["a", "list"], None, "not a JSON object"),
        (
            {"format": FORMAT, "directions": {"harmfulness": {}}},
            {
                "harmfulness/vectors": np.ones((4, 64), np.float32),
                "harmfulness/pos_centroid": np.ones((3, 64), np.float32),
            },
            "centroid",
        ),
        (
            {"format": FORMAT, "directions": {"harmfulness": {}}},
            {
                "harmfulness/vectors": np.ones((4, 64), np.float32),
                "harmfulness/neg_centroid": np.full((4, 64), np.inf, np.float32),
            },
            "centroid",
        ),
    ],
)
def test_bad_contents(doc, tensors, match):
    with pytest.raises(StorageError, match=match):
        bundle_from_bytes(_with_doc(doc, tensors))


def test_missing_file_and_bad_names(tmp_path):
    with pytest.raises(StorageError, match="not found"):
        load_bundle(tmp_path / "nope.safetensors")
    b = DirectionBundle({"a/b": DirectionSet("a/b", np.ones((4, 64)))})
    with pytest.raises(StorageError, match="may not contain"):
        save_bundle(b, tmp_path / "x.safetensors")


def test_engine_never_unpickles():
    """No pickle, torch.load or allow_pickle anywhere in the engine (directions files may be uploads)."""
    pattern = re.compile(
        r"^\s*(import\s+(c?pickle|dill|joblib)\b|from\s+(c?pickle|dill|joblib)\s+import)"
        r"|\bpickle\.loads?\(|\btorch\.load\(|allow_pickle\s*=\s*True|weights_only\s*=\s*False",
        re.MULTILINE,
    )
    files = sorted(ENGINE.glob("*.py"))
    assert len(files) >= 10
    offenders = {f.name: pattern.findall(f.read_text()) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


# ------------------------------------------------------------------------------------------------ float16 storage
# Stated tolerance: float16 storage rounds every value to the nearest float16, so each layer's vector comes back with
# a relative L2 error of at most FLOAT16_REL_ERROR = 2^-11 (about 4.9e-4); values under 6.1e-5 are subnormal and add
# at most 2^-25 absolute each, hence the tiny absolute floor below (it only matters for near-zero rows).


def _layer_errors_ok(stored: np.ndarray, exact: np.ndarray) -> None:
    assert stored.dtype == np.float32 and stored.shape == exact.shape
    err = np.linalg.norm(stored.astype(np.float64) - exact, axis=-1)
    bound = FLOAT16_REL_ERROR * np.linalg.norm(exact.astype(np.float64), axis=-1) + np.sqrt(exact.shape[-1]) * 2.0**-25
    assert (err <= bound).all(), (err / np.maximum(np.linalg.norm(exact, axis=-1), 1e-30)).max()


def _assert_close_bundle(loaded: DirectionBundle, exact: DirectionBundle) -> None:
    assert loaded.names() == exact.names()
    for name in exact.names():
        a, b = loaded.get(name), exact.get(name)
        _layer_errors_ok(a.vectors, b.vectors)
        for attr in ("pos_centroid", "neg_centroid"):
            if getattr(b, attr) is None:
                assert getattr(a, attr) is None
            else:
                _layer_errors_ok(getattr(a, attr), getattr(b, attr))
        assert (a.position, a.n_pos, a.n_neg, a.normalized, a.meta) == (
            b.position,
            b.n_pos,
            b.n_neg,
            b.normalized,
            b.meta,
        )


def test_float16_storage_round_trip_within_tolerance(tiny, tmp_path):
    bundle = make_bundle(tiny, rows=4, width=64)
    bundle.directions["small"] = DirectionSet("small", np.full((4, 64), 3e-5) * np.arange(1, 5)[:, None])
    bundle.directions["zero-row"] = DirectionSet("zero-row", np.vstack([np.zeros((1, 64)), np.ones((3, 64)) * 70.0]))
    p32 = save_bundle(bundle, tmp_path / "b32.safetensors")
    p16 = save_bundle(bundle, tmp_path / "b16.safetensors", dtype="float16")
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    loaded = load_bundle(p16, tiny)
    _assert_close_bundle(loaded, bundle)
    np.testing.assert_array_equal(loaded.get("zero-row").vectors[0], 0.0)  # exact zeros stay zero
    assert loaded.get("harmfulness").vectors.dtype == np.float32
    assert not np.array_equal(loaded.get("harmfulness").vectors, bundle.get("harmfulness").vectors)  # it did round
    assert json.loads(p16.with_suffix(".json").read_text())["storage_dtype"] == "float16"
    assert load_bundle(p32, tiny).get("harmfulness").vectors.tobytes() == bundle.get("harmfulness").vectors.tobytes()


def test_float16_storage_of_the_shipped_default_directions():
    """The real default bundle (float32 today) through float16: every layer of every direction within the bound."""
    path = ENGINE.parent / "assets" / "directions" / "default.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is not there")
    exact = load_bundle(path)
    data16 = bundle_to_bytes(exact, dtype="float16")
    assert len(data16) < 0.55 * path.stat().st_size
    _assert_close_bundle(bundle_from_bytes(data16), exact)


def test_float16_storage_refuses_out_of_range_values(tmp_path):
    big = DirectionBundle({"harmfulness": DirectionSet("harmfulness", np.full((2, 8), 1e5))}, {})
    with pytest.raises(StorageError, match="beyond float16's range"):
        save_bundle(big, tmp_path / "big.safetensors", dtype="float16")
    assert not (tmp_path / "big.safetensors").exists()
    save_bundle(big, tmp_path / "big.safetensors")  # float32 keeps it
    with pytest.raises(ValueError, match="storage dtype"):
        bundle_to_bytes(big, dtype="bfloat16")


# ------------------------------------------------------------------ issue 15: hostile files, other models, paths
@pytest.mark.parametrize(
    "provenance, match",
    [
        (["a", "list"], "'provenance' must be a JSON object, not a list"),
        ("a string", "'provenance' must be a JSON object, not a string"),
        (7, "'provenance' must be a JSON object, not a number"),
        ({"model_id": ["x"]}, "'model_id' must be a string, not a list"),
        ({"weights_hash": 12}, "'weights_hash' must be a string"),
        ({"n_layers": "3"}, "'n_layers' must be an integer"),
        ({"n_layers": True}, "'n_layers' must be an integer"),
        ({"data": []}, "'data' must be an object, not a list"),
        ({"data": "x"}, "'data' must be an object, not a string"),
        ({"data": {"harmful": "x"}}, "data.'harmful' must be a list"),
        ({"data": {"harmful": ["x"]}}, "must be a list of objects"),
        ({"data": {"normalized_instructions": "no"}}, "'normalized_instructions' must be true or false"),
        ({"positions": ["t_inst"]}, "'positions' must be an object"),
        ({"summary": 3}, "'summary' must be an object"),
    ],
)
def test_wrong_json_types_in_provenance_are_one_storage_error(provenance, match):
    doc = {"format": FORMAT, "provenance": provenance, "directions": {"harmfulness": {}}}
    data = _with_doc(doc, {"harmfulness/vectors": np.ones((4, 64), np.float32)})
    with pytest.raises(StorageError, match=re.escape(match)) as err:
        bundle_from_bytes(data)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"position": 3}, "'position' must be a string"),
        ({"normalized": "no"}, "'normalized' must be true or false"),
        ({"meta": ["a"]}, "'meta' must be an object"),
        ({"meta": "ab"}, "'meta' must be an object"),
        ({"n_pos": -1}, "'n_pos' must be a non-negative integer"),
        ({"n_neg": 1.5}, "'n_neg' must be a non-negative integer"),
        ({"n_neg": True}, "'n_neg' must be a non-negative integer"),
    ],
)
def test_wrong_json_types_in_direction_metadata(meta, match):
    doc = {"format": FORMAT, "provenance": {}, "directions": {"harmfulness": meta}}
    with pytest.raises(StorageError, match=re.escape(match)):
        bundle_from_bytes(_with_doc(doc, {"harmfulness/vectors": np.ones((4, 64), np.float32)}))


def test_a_wrong_provenance_in_memory_is_a_storage_error_in_check_compatible(tiny):
    bundle = make_bundle(tiny)
    bundle.provenance = ["not", "a", "dict"]  # type: ignore[assignment]
    with pytest.raises(StorageError, match="must be a JSON object"):
        check_compatible(bundle, tiny)


def test_refuses_another_model_of_the_same_shape(tiny, tmp_path):
    other = make_bundle(tiny, model_id="some-other-model", weights_hash="0011223344556677")
    path = save_bundle(other, tmp_path / "other.safetensors")
    with pytest.raises(StorageError, match="made for another model") as err:
        load_bundle(path, tiny)
    msg = str(err.value)
    assert "some-other-model" in msg and "tiny-random" in msg and "--allow-other-model" in msg and "\n" not in msg
    assert load_bundle(path, tiny, allow_other_model=True).names() == other.names()
    # no weights hash on either side: the model id decides
    by_name = make_bundle(tiny, model_id="some-other-model")
    by_name.provenance.pop("weights_hash")
    with pytest.raises(StorageError, match="another model"):
        check_compatible(by_name, tiny)
    # the same weights under another name (e.g. a local copy of the GGUF) are the same model
    renamed = make_bundle(tiny, model_id="my-copy-of-tiny")
    check_compatible(renamed, tiny)
    # nothing named at all: only the shape can be checked
    check_compatible(make_bundle(), tiny)
    # allow_other_model never lets another shape or template through
    with pytest.raises(StorageError, match="rows x"):
        check_compatible(make_bundle(rows=5, width=64), tiny, allow_other_model=True)
    with pytest.raises(StorageError, match="chat template"):
        check_compatible(make_bundle(tiny, template_hash="ffff"), tiny, allow_other_model=True)


def test_all_zero_directions_and_centroids_are_refused():
    zeros, ones = np.zeros((4, 64), np.float32), np.ones((4, 64), np.float32)
    doc = {"format": FORMAT, "provenance": {}, "directions": {"harmfulness": {}}}
    with pytest.raises(StorageError, match=r"all zeros.*every prompt 'harmful'"):
        bundle_from_bytes(_with_doc(doc, {"harmfulness/vectors": zeros}))
    for k in ("pos_centroid", "neg_centroid"):
        with pytest.raises(StorageError, match=f"{k} whose row 0 is all zeros"):
            bundle_from_bytes(_with_doc(doc, {"harmfulness/vectors": ones, f"harmfulness/{k}": zeros}))
    partly = ones.copy()
    partly[2] = 0
    with pytest.raises(StorageError, match="row 2 is all zeros"):
        bundle_from_bytes(_with_doc(doc, {"harmfulness/vectors": ones, "harmfulness/pos_centroid": partly}))
    # a zero row in the vectors is fine (control vectors have no slot for some rows); only all-zero is refused
    back = bundle_from_bytes(_with_doc(doc, {"harmfulness/vectors": partly}))
    assert not back.get("harmfulness").vectors[2].any()


def test_a_fifo_or_device_is_refused_at_once(tmp_path):
    import os

    fifo = tmp_path / "dirs.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="not a regular file"):
        load_bundle(fifo)  # before: Path.is_file() said 'not found'; a plain open() would wait forever
    if Path("/dev/zero").exists():
        with pytest.raises(StorageError, match="not a regular file"):
            load_bundle("/dev/zero")
    with pytest.raises(StorageError, match="is a directory"):
        load_bundle(tmp_path)


def test_a_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    import engine.storage as storage_mod

    path = save_bundle(make_bundle(), tmp_path / "b.safetensors")
    monkeypatch.setattr(storage_mod, "MAX_BUNDLE_BYTES", 1000)
    with pytest.raises(StorageError, match="the limit is 1000 bytes"):
        load_bundle(path)


def test_save_refuses_a_folder_and_bad_stems(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    b = make_bundle()
    with pytest.raises(StorageError, match="is a folder; give a file name in it"):
        save_bundle(b, out)  # before: wrote out.safetensors beside the folder
    with pytest.raises(StorageError, match="is a folder"):
        save_bundle(b, str(tmp_path / "new") + "/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError):  # as before: the OSError names the path (the CLI prints it on one line)
        save_bundle(b, tmp_path / "afile" / "b.safetensors")
    assert bundle_path(out, "mymodel") == out / "mymodel.safetensors"
    assert bundle_path(tmp_path / "not" / "yet", "m") == tmp_path / "not" / "yet" / "m.safetensors"
    assert not (tmp_path / "not").exists()  # checking creates nothing
    for bad in ("../x", "a/b", "..", ".hidden", "", "x\x00y", "x\ud800"):
        with pytest.raises(StorageError):
            bundle_path(out, bad)
    with pytest.raises(StorageError, match="is a file"):
        bundle_path(tmp_path / "afile", "m")
