"""Tests for engine.controlvector: GGUF control vectors in llama.cpp's layout, and the row <-> layer mapping."""

from __future__ import annotations

import contextlib

import gguf
import numpy as np
import pytest
import torch

from engine.controlvector import (
    LLAMACPP_ROW_OFFSET,
    ControlVectorError,
    control_vector_bytes,
    exportable_rows,
    llamacpp_command,
    llamacpp_layer,
    read_control_vector,
    read_control_vector_bytes,
    row_for_llamacpp_layer,
    write_control_vector,
)
from engine.directions import DirectionSet
from engine.positions import pad_batch, position_ids_for, prepare
from engine.steering import SteeringSpec, steer


def _vectors(n_rows: int = 6, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_rows, d)).astype(np.float32)


def test_mapping_is_row_minus_one():
    assert LLAMACPP_ROW_OFFSET == 1
    assert exportable_rows(5) == [2, 3, 4, 5]
    assert [llamacpp_layer(r, 5) for r in exportable_rows(5)] == [1, 2, 3, 4]
    assert [row_for_llamacpp_layer(k, 5) for k in (1, 2, 3, 4)] == [2, 3, 4, 5]
    for bad in (0, 1, 6):
        with pytest.raises(ControlVectorError, match=r"rows 2\.\.5"):
            llamacpp_layer(bad, 5)
    with pytest.raises(ControlVectorError):
        row_for_llamacpp_layer(0, 5)


def test_header_fields_llamacpp_needs(tmp_path):
    path = write_control_vector(tmp_path / "cv.gguf", _vectors(), rows=[2, 4], coeff=1.0, model_hint="qwen2")
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == "controlvector"
    assert r.fields["controlvector.model_hint"].contents() == "qwen2"
    # layer_count counts the file's tensors, as cvector-generator and repeng write it; the block count is ours
    assert r.fields["controlvector.layer_count"].contents() == 2
    assert r.fields["steering_explorer.n_layers"].contents() == 5
    names = sorted(t.name for t in r.tensors)
    assert names == ["direction.1", "direction.3"]
    for t in r.tensors:
        assert np.asarray(t.data).dtype == np.float32 and np.asarray(t.data).ndim == 1
    assert path.stat().st_mode & 0o777 == 0o644  # readable by whoever runs llama.cpp, like the directions files


def test_round_trip_lands_on_the_same_rows(tmp_path):
    v = _vectors()
    path = write_control_vector(tmp_path / "cv.gguf", v, rows=[2, 5], coeff=-2.5, model_hint="qwen2")
    d = read_control_vector(path, n_layers=5, hidden_size=8)
    assert isinstance(d, DirectionSet) and d.vectors.shape == (6, 8)
    np.testing.assert_allclose(d.vectors[2], -2.5 * v[2], rtol=1e-6)
    np.testing.assert_allclose(d.vectors[5], -2.5 * v[5], rtol=1e-6)
    assert not d.vectors[[0, 1, 3, 4]].any()
    assert d.meta["llamacpp_layers"] == [1, 4] and d.meta["rows"] == [2, 5]
    assert d.meta["model_hint"] == "qwen2"


def test_default_rows_are_every_exportable_row(tmp_path):
    v = _vectors()
    d = read_control_vector(write_control_vector(tmp_path / "a.gguf", DirectionSet("h", v), model_hint="x"))
    np.testing.assert_allclose(d.vectors[2:], v[2:], rtol=1e-6)
    assert not d.vectors[:2].any()


def test_write_errors(tmp_path):
    v = _vectors()
    with pytest.raises(ControlVectorError, match="rows 0 and 1 have no slot"):
        write_control_vector(tmp_path / "x.gguf", v, rows=[1], model_hint="qwen2")
    with pytest.raises(ControlVectorError, match="finite"):
        write_control_vector(tmp_path / "x.gguf", v, coeff=float("nan"), model_hint="qwen2")
    with pytest.raises(ControlVectorError, match="overflow"):
        write_control_vector(tmp_path / "x.gguf", v, coeff=1e39, model_hint="qwen2")
    with pytest.raises(ControlVectorError, match="model_hint"):
        write_control_vector(tmp_path / "x.gguf", v, model_hint=" ")
    with pytest.raises(ControlVectorError, match="folder"):
        write_control_vector(tmp_path, v, model_hint="qwen2")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".cvec-*"))


def _write_raw(path, tensors: dict[str, np.ndarray], layer_count: int | None = None) -> None:
    w = gguf.GGUFWriter(str(path), "controlvector")
    if layer_count is not None:
        w.add_int32("controlvector.layer_count", layer_count)  # cvector-generator writes an int32
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_read_other_tools_files_and_errors(tmp_path):
    # cvector-generator / repeng style: no layer_count, duplicate layers summed like llama.cpp does
    p = tmp_path / "ext.gguf"
    _write_raw(p, {"direction.1": np.ones(4, np.float32), "direction.3": np.full(4, 2.0, np.float32)})
    d = read_control_vector(p)
    assert d.vectors.shape == (5, 4)  # highest layer 3 -> 4 blocks -> 5 rows
    assert d.vectors[2].tolist() == [1.0] * 4 and d.vectors[4].tolist() == [2.0] * 4
    with pytest.raises(ControlVectorError, match="hidden size is 8"):
        read_control_vector(p, hidden_size=8)
    with pytest.raises(ControlVectorError, match="has 3 blocks"):
        read_control_vector(p, n_layers=3)
    bad = tmp_path / "zero.gguf"
    _write_raw(bad, {"direction.0": np.ones(4, np.float32)})
    with pytest.raises(ControlVectorError, match=r"direction\.0"):
        read_control_vector(bad)
    other = tmp_path / "other.gguf"
    _write_raw(other, {"blk.0.weight": np.ones(4, np.float32)})
    with pytest.raises(ControlVectorError, match="not a control vector"):
        read_control_vector(other)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ControlVectorError, match="not a readable GGUF"):
        read_control_vector(junk)
    with pytest.raises(ControlVectorError, match="not found"):
        read_control_vector(tmp_path / "missing.gguf")


def test_block_count_of_files_from_other_tools(tmp_path):
    """cvector-generator writes direction.1 .. n_layer-1 and layer_count = n_layer - 1 (the number of tensors): the
    model has n_layer blocks, so the file lands on rows 2 .. n_layer of n_layer + 1 rows."""
    full = tmp_path / "cvector-generator.gguf"
    _write_raw(full, {f"direction.{k}": np.full(4, float(k), np.float32) for k in range(1, 6)}, layer_count=5)
    d = read_control_vector(full)
    assert d.vectors.shape == (7, 4)  # 6 blocks
    assert [float(d.vectors[r][0]) for r in range(7)] == [0, 0, 1, 2, 3, 4, 5]
    # a block count in layer_count (larger than any tensor index) is taken as such
    old = tmp_path / "blocks.gguf"
    _write_raw(old, {"direction.2": np.ones(4, np.float32)}, layer_count=8)
    assert read_control_vector(old).vectors.shape == (9, 4)
    # repeng-style subset without a block count: the fewest blocks that hold it, or the model's when given
    sub = tmp_path / "subset.gguf"
    _write_raw(sub, {"direction.3": np.ones(4, np.float32), "direction.4": np.ones(4, np.float32)}, layer_count=2)
    assert read_control_vector(sub).vectors.shape == (6, 4)
    assert read_control_vector(sub, n_layers=10).vectors.shape == (11, 4)


def test_our_block_count_and_metadata_survive_a_partial_export(tmp_path):
    path = write_control_vector(
        tmp_path / "cv.gguf",
        _vectors(n_rows=9),
        rows=[3],
        coeff=0.5,
        model_hint="qwen2",
        extra={"direction": "harmfulness", "coeff": 0.5, "model_id": "tiny"},
    )
    d = read_control_vector(path)
    assert d.vectors.shape == (9, 8)  # 8 blocks, although only direction.2 is in the file
    h = d.meta["header"]
    assert h["architecture"] == "controlvector" and h["model_hint"] == "qwen2" and h["layer_count"] == 1
    assert h["steering_explorer.direction"] == "harmfulness" and h["steering_explorer.n_layers"] == 8
    assert h["steering_explorer.coeff"] == pytest.approx(0.5)
    with pytest.raises(ControlVectorError, match="extra metadata"):
        write_control_vector(tmp_path / "x.gguf", _vectors(), model_hint="q", extra={"Bad Key": 1})


def test_bytes_round_trip_and_upload_errors(tmp_path):
    v = _vectors()
    data = control_vector_bytes(v, rows=[4], coeff=2.0, model_hint="qwen2")
    assert data[:4] == b"GGUF"
    d = read_control_vector_bytes(data, source="mine.gguf", n_layers=5, hidden_size=8)
    assert d.name == "mine" and d.meta["source"] == "mine.gguf"
    np.testing.assert_allclose(d.vectors[4], 2.0 * v[4], rtol=1e-6)
    with pytest.raises(ControlVectorError, match=r"mine\.gguf: vectors have 8 values"):
        read_control_vector_bytes(data, source="mine.gguf", hidden_size=16)
    with pytest.raises(ControlVectorError, match="empty"):
        read_control_vector_bytes(b"", source="x.gguf")


def test_llamacpp_command_uses_llamacpp_layer_numbers():
    cmd = llamacpp_command("harm.gguf", [12, 13, 14], 24, model="qwen.gguf")
    assert cmd == "llama-cli -m qwen.gguf --control-vector harm.gguf --control-vector-layer-range 11 13"
    with pytest.raises(ControlVectorError, match=r"rows 2\.\.24"):
        llamacpp_command("x.gguf", [1], 24)


@contextlib.contextmanager
def _llamacpp_semantics(handle, k: int, vec: np.ndarray):
    """What llama.cpp does with direction.k: add it to the output of block k at every position."""
    add = torch.as_tensor(vec, dtype=torch.float32)

    def post(_m, _args, output):
        if isinstance(output, torch.Tensor):
            return output + add
        return (output[0] + add, *output[1:])

    h = handle.layers[k].register_forward_hook(post)
    try:
        yield
    finally:
        h.remove()


def test_exported_row_acts_where_llamacpp_would_apply_it(tiny, tmp_path, no_hook_leak):
    """Export row 2 of a direction, read it back, and check that steering row 2 (positions 'all') here equals adding
    direction.1 to block 1's output (llama.cpp's semantics): same logits at every position."""
    L, d = tiny.n_layers, tiny.hidden_size
    v = np.zeros((L + 1, d), dtype=np.float32)
    v[2] = np.random.default_rng(1).normal(size=d).astype(np.float32)
    path = write_control_vector(tmp_path / "cv.gguf", v, rows=[2], coeff=3.0, model_hint="qwen2", n_layers=L)
    back = read_control_vector(path, n_layers=L, hidden_size=d)
    assert back.meta["llamacpp_layers"] == [1]
    prompts = prepare(tiny, ["write a poem about cats", "cook pasta"])
    ids, mask, pads = pad_batch(tiny, prompts)
    kw = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_for(mask), "use_cache": False}
    spec = SteeringSpec(back.vectors, (2,), 1.0, "all")
    with torch.no_grad():
        base = tiny.model(**kw).logits
        with steer(tiny, [spec, spec], prompts, pads):
            ours = tiny.model(**kw).logits
        with _llamacpp_semantics(tiny, 1, 3.0 * v[2]):
            theirs = tiny.model(**kw).logits
        with _llamacpp_semantics(tiny, 2, 3.0 * v[2]):
            one_off = tiny.model(**kw).logits
    real = mask.bool()
    assert not torch.allclose(base[real], ours[real], atol=1e-4)
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[real], one_off[real], atol=1e-3)  # the classic off-by-one is caught
