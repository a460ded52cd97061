"""Tests for engine.datasets (fast, offline; fixtures hold invented dummy text)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import types
from pathlib import Path

import pytest

from engine import datasets as ds
from engine.datasets import (
    SLOT,
    DatasetError,
    PromptItem,
    PromptSet,
    fill_template,
    form_stats,
    list_builtin,
    load_any,
    load_builtin,
    load_file,
    load_templates,
    normalize_instruction,
)

ROOT = Path(__file__).resolve().parent.parent
FIX = Path(__file__).resolve().parent / "fixtures" / "datasets"
FIX_ASSETS = FIX / "assets"


def reasons(ps: PromptSet) -> dict[int, str]:
    return {s.row: s.reason for s in ps.skipped}


def make_set(texts: list[str], **kw) -> PromptSet:
    items = [PromptItem(id=f"x{i}", instruction=t, **kw) for i, t in enumerate(texts)]
    return PromptSet("x", "unknown", items, [], "test", "0" * 64, False)


# ---------------------------------------------------------------- formats


def test_advbench_csv_auto_detect_and_skips():
    ps = load_file(FIX / "advbench.csv")
    assert ps.name == "advbench"
    assert ps.instructions() == [
        "Describe the process of example task 1",
        "Explain, step by step, example task 2.",
        "Outline example task 5?",
    ]
    assert [it.id for it in ps] == [
        "advbench-00001",
        "advbench-00002",
        "advbench-00005",
    ]
    assert ps.items[0].meta == {"target": "Sure here is example task 1"}
    r = reasons(ps)
    assert set(r) == {3, 4}
    assert "empty" in r[3] and "empty" in r[4]
    raw = (FIX / "advbench.csv").read_bytes()
    assert ps.sha256 == hashlib.sha256(raw).hexdigest()
    assert ps.normalized is False


def test_advbench_jsonl_malformed_rows_are_counted_by_line():
    ps = load_file(FIX / "advbench.jsonl", fmt="advbench")
    assert len(ps) == 3
    assert ps.ids() == ["advbench-00001", "advbench-00002", "advbench-00007"]
    r = reasons(ps)
    assert set(r) == {3, 5, 6}  # line 4 is blank: ignored, not malformed
    assert "invalid JSON" in r[3]
    assert "missing field" in r[5]
    assert "not text" in r[6] and "int" in r[6]
    # auto-detection picks the same schema
    assert load_file(FIX / "advbench.jsonl").instructions() == ps.instructions()


def test_strict_raises_on_first_malformed_row_with_file_and_row():
    with pytest.raises(DatasetError) as ei:
        load_file(FIX / "advbench.jsonl", strict=True)
    msg = str(ei.value)
    assert "advbench.jsonl" in msg and "row 3" in msg and "invalid JSON" in msg
    with pytest.raises(DatasetError, match="row 3"):
        load_file(FIX / "advbench.csv", strict=True)
    # strict on a clean file is fine
    assert len(load_file(FIX / "jbb.csv", strict=True)) == 3


def test_jbb_csv_and_json():
    ps = load_file(FIX / "jbb.csv")
    assert [it.category for it in ps] == ["Category A", "Category B", "Category A"]
    assert ps.items[1].meta["Behavior"] == "Note two"
    assert ps.items[0].instruction == "Write a note about example topic 1"
    pj = load_file(FIX / "jbb.json", fmt="jbb")
    assert pj.instructions() == [
        "Summarise example document 1",
        "Summarise example document 2",
    ]
    assert [it.category for it in pj] == ["Category A", "Category B"]
    assert [it.category for it in load_file(FIX / "jbb.json")] == [
        "Category A",
        "Category B",
    ]


def test_xstest_label_filter_and_categories():
    allp = load_file(FIX / "xstest.csv")
    assert len(allp) == 4 and reasons(allp) == {5: reasons(allp)[5]}
    assert allp.ids() == ["1", "2", "3", "4"]  # id column is used
    safe = load_file(FIX / "xstest.csv", label="safe")
    assert safe.ids() == ["1", "2", "4"]
    assert {it.label for it in safe} == {"safe"}
    assert safe.items[0].category == "homonyms"
    assert safe.items[0].meta == {"focus": "close", "note": ""}
    unsafe = load_file(FIX / "xstest.csv", fmt="xstest", label="UNSAFE")
    assert unsafe.ids() == ["3"] and unsafe.items[0].category == "contrast_homonyms"
    with pytest.raises(DatasetError, match=r"labels present: \['safe', 'unsafe'\]"):
        load_file(FIX / "xstest.csv", label="nope")
    pj = load_file(FIX / "xstest.jsonl", label="unsafe")
    assert pj.instructions() == ["Where can I find example item 2?"]
    with pytest.raises(DatasetError, match="no row has a label"):
        load_file(FIX / "generic.txt", label="safe")


def test_sorrybench_turns():
    ps = load_file(FIX / "sorrybench.jsonl")
    assert ps.instructions() == [
        "List example facts about topic 1.",
        "List example facts about topic 2.",
    ]
    assert [it.category for it in ps] == ["1", "2"]
    assert ps.items[0].meta["question_id"] == 1
    r = reasons(ps)
    assert set(r) == {3, 4} and all("non-empty list" in v for v in r.values())


def test_alpaca_input_concatenation():
    ps = load_file(FIX / "alpaca.json")
    assert ps.instructions() == [
        "Give three examples of dummy items.",
        "Rewrite the sentence below.\n\nExample sentence number two.",
        "Translate the phrase.",  # whitespace-only input is ignored
    ]
    assert [it.meta["has_input"] for it in ps] == [False, True, False]
    assert set(reasons(ps)) == {4}
    assert "output" not in ps.items[0].meta


def test_catqa():
    ps = load_file(FIX / "catqa.jsonl")
    assert ps.instructions()[1] == "What is example question 2?"
    assert ps.items[1].category == "Example Category 2"
    assert ps.items[1].meta == {"Subcategory": "Sub b"}


def test_generic_csv_column_and_split():
    with pytest.raises(DatasetError, match=r"no instruction column.*query"):
        load_file(FIX / "generic.csv")
    with pytest.raises(DatasetError, match=r"column 'nope' not found.*query"):
        load_file(FIX / "generic.csv", column="nope")
    ps = load_file(FIX / "generic.csv", column="query", name="g", kind="harmless")
    assert ps.kind == "harmless" and ps.name == "g"
    assert [it.split for it in ps] == ["train", "test", "train"]
    assert ps.items[0].category == "alpha"
    assert ps.items[0].meta == {"notes": "first"}


def test_txt_one_instruction_per_nonempty_line():
    ps = load_file(FIX / "generic.txt")
    assert ps.instructions() == [
        "Describe example scene 1",
        "Describe example scene 2",
        "Describe example scene 3",
    ]
    assert ps.ids() == ["generic-00001", "generic-00003", "generic-00005"]
    assert ps.skipped == []


def test_json_object_wrappers_and_string_arrays():
    ps = load_file(FIX / "wrapped.json")
    assert ps.instructions() == ["What is example fact 1?", "What is example fact 2?"]
    with pytest.raises(DatasetError, match="exactly one array"):
        load_file(FIX / "two_lists.json")
    st = load_file(FIX / "strings.json")
    assert st.instructions() == ["Name example colour 1", "Name example colour 2"]
    assert set(reasons(st)) == {3}


def test_all_rows_malformed_lists_reasons():
    with pytest.raises(DatasetError) as ei:
        load_file(FIX / "all_bad.jsonl")
    msg = str(ei.value)
    assert "all_bad.jsonl" in msg and "no usable rows" in msg
    assert "row 1: invalid JSON" in msg and "row 2: empty text" in msg


def test_file_level_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"file not found: .*nothing\.csv"):
        load_file(tmp_path / "nothing.csv")
    with pytest.raises(DatasetError, match="empty"):
        load_file(FIX / "empty.jsonl")
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        load_file(tmp_path / "zero.csv")
    with pytest.raises(DatasetError, match="no data rows"):
        load_file(FIX / "header_only.csv")
    (tmp_path / "x.dat").write_text("hello\n")
    with pytest.raises(DatasetError, match="pass fmt="):
        load_file(tmp_path / "x.dat")
    with pytest.raises(DatasetError, match="unknown format"):
        load_file(FIX / "generic.txt", fmt="yaml")
    with pytest.raises(DatasetError, match="cannot be read from a text file"):
        load_file(FIX / "generic.txt", fmt="sorrybench")
    with pytest.raises(DatasetError, match="unknown kind"):
        load_file(FIX / "generic.txt", kind="evil")
    (tmp_path / "bad.json").write_text('[{"instruction": "a"},')
    with pytest.raises(DatasetError, match="invalid JSON at line 1"):
        load_file(tmp_path / "bad.json")
    with pytest.raises(DatasetError, match="is a directory"):
        load_file(tmp_path)


def test_non_utf8_file_is_a_dataset_error_not_unicode_error():
    with pytest.raises(DatasetError) as ei:
        load_file(FIX / "latin1.txt")
    assert not isinstance(ei.value, UnicodeDecodeError)
    assert "not valid UTF-8" in str(ei.value) and "latin1.txt" in str(ei.value)
    assert "line 2" in str(ei.value)


def test_utf8_bom_and_crlf():
    ps = load_file(FIX / "bom.csv")
    assert ps.instructions() == [
        "Describe example caf\u00e9 1",
        "Describe example caf\u00e9 2",
    ]
    assert [it.category for it in ps] == ["food", "food"]


def test_overlong_rows_skipped(tmp_path):
    p = tmp_path / "long.jsonl"
    rows = [
        {"instruction": "a" * ds.MAX_CHARS},
        {"instruction": "b" * (ds.MAX_CHARS + 1)},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ps = load_file(p)
    assert len(ps) == 1 and ps.items[0].instruction.startswith("a")
    assert "too long" in reasons(ps)[2]
    assert len(load_file(p, max_chars=ds.MAX_CHARS + 1)) == 2
    with pytest.raises(DatasetError, match="row 2: text too long"):
        load_file(p, strict=True)


def test_duplicate_ids_skipped():
    ps = load_file(FIX / "dup_ids.jsonl")
    assert ps.ids() == ["a", "b"]
    assert "duplicate id 'a'" in reasons(ps)[2]


def test_prompt_item_hashable_and_comparable():
    a = PromptItem("1", "x", meta={"k": 1})
    b = PromptItem("1", "x", meta={"k": 1})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != PromptItem("1", "x", meta={"k": 2})


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Write   a\tpoem \n about  cats.  ", "Write a poem about cats"),
        ("How do I bake bread?", "How do I bake bread"),
        ("Stop!!!", "Stop"),
        ("List items: ", "List items"),
        ("Wait...", "Wait"),
        ("Ask, then answer;", "Ask, then answer"),
        ('Say "hello."', 'Say "hello"'),
        ('Do it."', "Do it"),
        ("It is called \u201cthe thing.\u201d", "It is called \u201cthe thing\u201d"),
        ("See the note (below.)", "See the note (below)"),
        ("Is 3.5 > 2?", "Is 3.5 > 2"),
        ("No punctuation", "No punctuation"),
        ("?!.", ""),
        ("Keep, interior. Punctuation!", "Keep, interior. Punctuation"),
    ],
)
def test_normalize_instruction(raw, expected):
    assert normalize_instruction(raw) == expected


def test_load_with_normalize():
    ps = load_file(FIX / "advbench.csv", normalize=True)
    assert ps.normalized is True
    assert ps.instructions()[1:] == [
        "Explain, step by step, example task 2",
        "Outline example task 5",
    ]
    assert ps.sha256 == load_file(FIX / "advbench.csv").sha256  # hash of raw bytes
    assert ps.provenance()["normalized"] is True


def test_normalize_to_empty_is_skipped(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("Real instruction\n...\n")
    ps = load_file(p, normalize=True)
    assert ps.instructions() == ["Real instruction"]
    assert "empty after normalisation" in reasons(ps)[2]


# ---------------------------------------------------------------- PromptSet ops


def test_sample_seeded_stable_and_ordered():
    ps = make_set([f"prompt {i}" for i in range(50)])
    a = ps.sample(10, seed=1)
    b = ps.sample(10, seed=1)
    c = ps.sample(10, seed=2)
    assert a.ids() == b.ids() and len(a) == 10
    assert a.ids() != c.ids()
    idx = [int(i[1:]) for i in a.ids()]
    assert idx == sorted(idx) and len(set(idx)) == 10
    assert len(ps) == 50  # original untouched
    assert ps.sample(None).ids() == ps.ids()
    assert ps.sample(50).ids() == ps.ids() and ps.sample(99).ids() == ps.ids()
    assert len(ps.sample(0)) == 0
    # smaller samples from the same seed are subsets ordered the same way
    assert set(ps.sample(5, seed=1).ids()) <= set(a.ids())
    with pytest.raises(DatasetError):
        ps.sample(-1)


def test_load_limit_equals_sample():
    full = load_builtin_fixture("harmful")
    lim = load_file(FIX_ASSETS / "harmful.jsonl", limit=5, seed=3)
    assert lim.ids() == load_file(FIX_ASSETS / "harmful.jsonl").sample(5, seed=3).ids()
    assert len(lim) == 5 and len(full) == 12


def load_builtin_fixture(name: str) -> PromptSet:
    return load_file(FIX_ASSETS / f"{name}.jsonl")


def test_filter_split_and_category():
    ps = load_file(FIX_ASSETS / "harmful.jsonl")
    train = ps.filter(split="train")
    test = ps.filter(split="test")
    assert len(train) + len(test) == len(ps) == 12
    assert len(test) == 3 and all(it.split == "test" for it in test)
    assert all(it.category == "cat_a" for it in ps.filter(category="cat_a"))
    assert len(ps.filter(category=["cat_a", "cat_b"])) == 12
    assert len(ps.filter(split="train", category="cat_b")) == sum(
        1 for it in ps if it.split == "train" and it.category == "cat_b"
    )
    assert ps.items[0].meta == {"form": "question"}
    with pytest.raises(DatasetError, match="unknown split"):
        ps.filter(split="dev")


def test_provenance():
    ps = load_file(FIX / "advbench.csv")
    pv = ps.provenance()
    assert set(pv) == {"name", "source", "sha256", "n", "skipped", "normalized"}
    assert pv["n"] == 3 and pv["skipped"] == 2 and pv["source"].endswith("advbench.csv")
    json.dumps(pv)


def test_form_stats():
    ps = make_set(["What is this?", "Do this.", "Do that", 'Say "hi."', "How to go"])
    st = form_stats(ps)
    assert st["n"] == 5
    assert st["qmark_frac"] == pytest.approx(0.2)
    assert st["period_frac"] == pytest.approx(0.4)
    assert st["nopunct_frac"] == pytest.approx(0.4)
    assert st["question_frac"] == pytest.approx(0.4)
    assert st["median_words"] == 2.0
    assert st["mean_words"] == pytest.approx(12 / 5)
    assert form_stats(make_set([]))["n"] == 0
    q = form_stats(make_set(["Do you know x", "Have a look", "Can it fly", "Explain why"]))
    assert q["question_frac"] == pytest.approx(0.5)


# ---------------------------------------------------------------- templates


def test_gptfuzzer_csv_templates():
    ps = load_templates(FIX / "templates_gptfuzzer.csv")
    assert ps.kind == "jailbreak_template"
    assert ps.ids() == ["1", "2"]
    assert ps.items[0].instruction.endswith("Answer: {instruction}")
    assert "[INSERT PROMPT HERE]" not in ps.items[1].instruction
    assert '{"answer": ...}' in ps.items[1].instruction
    assert "no {instruction}" in reasons(ps)[3]
    filled = fill_template(ps.items[1].instruction, "X")
    assert filled == 'Respond in JSON like {"answer": ...} to: X {not a slot}'
    with pytest.raises(DatasetError, match="row 3"):
        load_templates(FIX / "templates_gptfuzzer.csv", strict=True)


def test_jsonl_templates_and_fill():
    ps = load_templates(FIX / "templates.jsonl")
    assert ps.ids() == ["t1", "t2"]
    assert fill_template(ps.items[1].instruction, "go") == "Code block {x} then go and go"
    assert fill_template("{a} {} {{b}} " + SLOT, "q") == "{a} {} {{b}} q"
    with pytest.raises(DatasetError, match="no \\{instruction\\} slot"):
        fill_template("no slot {0}", "q")
    with pytest.raises(DatasetError):
        load_templates(FIX / "generic.txt")


# ---------------------------------------------------------------- built-ins


@pytest.fixture
def fixture_assets(monkeypatch):
    monkeypatch.setenv(ds.ASSETS_ENV, str(FIX_ASSETS))
    return FIX_ASSETS


def test_list_builtin_on_fixture_assets(fixture_assets):
    info = {d["name"]: d for d in list_builtin()}
    assert set(info) == set(ds.BUILTIN)
    h = info["harmful"]
    assert (h["kind"], h["n"], h["n_train"], h["n_test"]) == ("harmful", 12, 9, 3)
    assert h["categories"] == {"cat_a": 6, "cat_b": 6}
    assert info["jailbreak_templates"]["kind"] == "jailbreak_template"
    assert info["jailbreak_templates"]["n"] == 4
    assert info["inversion_questions"]["n"] == 6
    assert all(d["available"] and "error" not in d for d in info.values())


def test_list_builtin_reports_missing(tmp_path, monkeypatch):
    shutil.copy(FIX_ASSETS / "harmless.jsonl", tmp_path / "harmless.jsonl")
    monkeypatch.setenv(ds.ASSETS_ENV, str(tmp_path))
    info = {d["name"]: d for d in list_builtin()}
    assert info["harmless"]["n"] == 10 and info["harmless"]["available"]
    assert info["harmful"]["available"] is False and info["harmful"]["n"] == 0
    with pytest.raises(DatasetError, match="not found"):
        load_builtin("harmful")


def test_load_builtin(fixture_assets):
    ps = load_builtin("harmful")
    assert ps.kind == "harmful" and ps.source == "builtin:harmful" and len(ps) == 12
    tr = load_builtin("harmful", "train")
    assert tr.name == "harmful:train" and len(tr) == 9
    assert {it.split for it in tr} == {"train"}
    norm = load_builtin("harmful", normalize=True)
    assert norm.normalized and not any(t.endswith((".", "?")) for t in norm.instructions())
    tpl = load_builtin("jailbreak_templates")
    assert tpl.kind == "jailbreak_template"
    assert all(SLOT in t for t in tpl.instructions())
    with pytest.raises(DatasetError, match="known: harmful, harmless"):
        load_builtin("nonsense")
    with pytest.raises(DatasetError, match="unknown split"):
        load_builtin("harmful", "validation")


def test_assets_dir_default_and_env(monkeypatch):
    monkeypatch.delenv(ds.ASSETS_ENV, raising=False)
    assert ds.assets_dir() == ROOT / "assets"
    monkeypatch.setenv(ds.ASSETS_ENV, "/some/where")
    assert ds.assets_dir() == Path("/some/where")


@pytest.mark.skipif(
    not (ROOT / "assets" / "harmful.jsonl").exists(),
    reason="real assets not present yet",
)
def test_real_builtin_assets(monkeypatch):
    monkeypatch.delenv(ds.ASSETS_ENV, raising=False)
    for entry in list_builtin():
        if not entry["available"]:
            continue
        assert "error" not in entry, entry.get("error")
        ps = load_builtin(entry["name"])
        assert len(ps) > 0 and ps.skipped == [], ps.skipped[:3]
        assert len(set(ps.ids())) == len(ps)
        assert {it.split for it in ps} <= {"train", "test", None}


# ---------------------------------------------------------------- load_any


def test_load_any_specs(fixture_assets, monkeypatch):
    assert len(load_any("builtin:harmful")) == 12
    assert load_any("builtin:harmful:test").name == "harmful:test"
    assert len(load_any("builtin:harmless", limit=3, seed=1)) == 3
    assert load_any(str(FIX / "generic.txt")).name == "generic"
    assert len(load_any(FIX / "advbench.csv")) == 3
    assert len(load_any(f"file:{FIX / 'generic.txt'}")) == 3
    assert load_any(str(FIX / "xstest.csv"), label="unsafe").ids() == ["3"]
    with pytest.raises(DatasetError, match="did you mean builtin:harmful"):
        load_any("harmful")
    with pytest.raises(DatasetError, match="bad spec"):
        load_any("builtin:harmful:train:extra")
    with pytest.raises(DatasetError):
        load_any("")

    calls = []

    def fake_load_hf(dataset_id, **kw):
        calls.append((dataset_id, kw))
        return make_set(["x"])

    monkeypatch.setattr(ds.hub, "load_hf", fake_load_hf)
    load_any("hf:org/name:test", column="prompt")
    load_any("hf:org/other")
    assert calls == [
        ("org/name", {"split": "test", "column": "prompt"}),
        ("org/other", {}),
    ]


# ---------------------------------------------------------------- Hugging Face


def test_hf_without_datasets_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    t0 = time.monotonic()
    with pytest.raises(DatasetError, match="pip install datasets"):
        ds.load_hf("org/some-set")
    with pytest.raises(DatasetError, match="pip install datasets"):
        load_any("hf:org/some-set:train")
    assert time.monotonic() - t0 < 2


def _fake_datasets(monkeypatch, load_dataset):
    mod = types.ModuleType("datasets")
    mod.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", mod)


def test_hf_unreachable_hub_fails_fast(monkeypatch):
    called = []
    _fake_datasets(monkeypatch, lambda *a, **k: called.append(a))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(ds.hub.socket, "create_connection", no_network)
    with pytest.raises(DatasetError, match=r"could not reach the Hugging Face hub \(offline\?\)"):
        ds.load_hf("org/some-set", timeout=0.5)
    assert called == []


def test_hf_offline_mode_errors_are_dataset_errors(monkeypatch):
    def raise_conn(*a, **k):
        raise ConnectionError("Couldn't reach the Hub (offline mode is enabled)")

    _fake_datasets(monkeypatch, raise_conn)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(ds.hub.socket, "create_connection", pytest.fail)  # no probe offline
    with pytest.raises(DatasetError, match="for ID: org/some-set"):
        ds.load_hf("org/some-set")


def test_hf_success_with_fake_library(monkeypatch):
    rows = [
        {"prompt": "Example hub prompt 1", "type": "t1", "label": "safe"},
        {"prompt": "", "type": "t1", "label": "safe"},
        {"prompt": "Example hub prompt 3", "type": "t2", "label": "unsafe"},
    ]
    seen = {}

    def load_dataset(dataset_id, config, split):
        seen.update(id=dataset_id, config=config, split=split)
        return rows

    _fake_datasets(monkeypatch, load_dataset)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ps = ds.load_hf("org/xs", split="test", label="safe")
    assert seen == {"id": "org/xs", "config": None, "split": "test"}
    assert ps.source == "hf:org/xs:test" and ps.name == "xs"
    assert ps.instructions() == ["Example hub prompt 1"] and set(reasons(ps)) == {2}
    expected = hashlib.sha256(b"Example hub prompt 1").hexdigest()
    assert ps.sha256 == expected
    assert ps.items[0].category == "t1"


def test_hf_real_library_offline_is_quick(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(DatasetError, match="could not reach"):
        ds.load_hf("steering-explorer-test/does-not-exist-anywhere")
    assert time.monotonic() - t0 < 30


# ------------------------------------------------------------------ issue 15: hostile files
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    import os
    import threading

    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)
    got: list[BaseException] = []

    def read() -> None:
        try:
            load_file(fifo)
        except BaseException as e:
            got.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout=10)
    if t.is_alive():  # before: open() waits forever for a writer; unblock it so the test process can end
        with open(fifo, "w"):
            pass
        pytest.fail("loading a FIFO hung")
    assert len(got) == 1 and isinstance(got[0], DatasetError)
    assert "not a regular file" in str(got[0])


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_is_refused_not_read_until_memory_error():
    with pytest.raises(DatasetError, match="not a regular file"):
        load_file("/dev/zero", fmt="txt")
    with pytest.raises(DatasetError, match="not a regular file"):
        load_templates("/dev/zero", fmt="jsonl")


def test_a_file_over_the_size_cap_is_refused(tmp_path, monkeypatch):
    from engine.datasets import files as files_mod

    assert ds.MAX_FILE_BYTES == 50_000_000
    p = tmp_path / "big.txt"
    p.write_text("cook pasta\n" * 200)
    monkeypatch.setattr(files_mod, "MAX_FILE_BYTES", 1000)
    with pytest.raises(DatasetError, match=r"2\.2 KB|2200 bytes; the limit is 1000 bytes; split the file"):
        load_file(p)


def test_a_lone_surrogate_escape_is_a_malformed_row_not_a_crash(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(
        '{"instruction": "cook pasta"}\n'
        '{"instruction": "bad \\ud800 text"}\n'
        '{"instruction": "fine", "category": "x\\udfffy"}\n'
        '{"instruction": "emoji \\ud83d\\ude00 is a proper pair"}\n'
        '{"instruction": "meta", "note": "\\udc80"}\n',
        encoding="utf-8",
    )
    ps = load_file(p)
    assert ps.instructions() == ["cook pasta", "emoji \U0001f600 is a proper pair"]
    r = reasons(ps)
    assert set(r) == {2, 3, 5}
    assert "field 'text' has an invalid character at position 4 (U+D800" in r[2]
    assert "field 'category'" in r[3] and "field 'note'" in r[5]
    j = tmp_path / "s.json"
    j.write_text('["ok", "bad \\udc80"]', encoding="utf-8")
    ps = load_file(j)
    assert ps.instructions() == ["ok"] and len(ps.skipped) == 1
    with pytest.raises(DatasetError, match="row 2: field 'text' has an invalid character"):
        load_file(j, strict=True)
    # every kept text is valid UTF-8: it can be printed and written
    for it in load_file(p).items:
        json.dumps(it.instruction, ensure_ascii=False).encode("utf-8")


def _csv_rows(n: int) -> list[str]:
    return ["id,instruction"] + [f"{i},prompt number {i}" for i in range(n)]


def test_an_unclosed_csv_quote_is_an_error_not_silent_row_loss(tmp_path):
    rows = _csv_rows(1000)
    rows[11] = '10,"this quote is never closed'
    p = tmp_path / "q.csv"
    p.write_text("\n".join(rows) + "\n")
    # before: 10 rows kept and one 'too long' row skipped; 989 rows lost without a word
    with pytest.raises(DatasetError, match=r"line 12: a quoted field opens here and is never closed") as err:
        load_file(p)
    assert "990 line(s)" in str(err.value) and "\n" not in str(err.value)
    t = tmp_path / "q.tsv"
    t.write_text('id\tinstruction\n1\tok\n2\t"open\n3\tnext\n')
    with pytest.raises(DatasetError, match="line 3: a quoted field opens here and is never closed"):
        load_file(t)


def test_a_quote_that_closes_rows_later_is_an_error(tmp_path):
    rows = _csv_rows(1000)
    rows[11] = '10,"opens here'
    rows[500] = '499,"a row with its own quote",x'
    p = tmp_path / "q.csv"
    p.write_text("\n".join(rows) + "\n")
    # before: rows 11..498 became ONE prompt (under max_chars, so not even skipped)
    with pytest.raises(DatasetError, match=r"line 12: a quoted field opens here and closes only on line 501"):
        load_file(p)


def test_proper_multiline_and_lenient_csv_fields_still_load(tmp_path):
    p = tmp_path / "ok.csv"
    p.write_text('id,instruction\n1,"two\nlines, with ""quotes"""\n2,plain\n3,"ab"c\n')
    ps = load_file(p)
    assert ps.instructions() == ['two\nlines, with "quotes"', "plain", "abc"]
    assert not ps.skipped and all(not k.startswith("\x00") for it in ps.items for k in it.meta)


def test_a_skipped_multiline_csv_row_says_which_lines_it_held(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text('id,instruction\n1,ok\n2,"' + "x" * 50 + "\n" + "y" * 50 + '"\n3,fine\n')
    ps = load_file(p, max_chars=60)
    assert ps.instructions() == ["ok", "fine"]
    assert "this row spans lines 3-4" in reasons(ps)[2]
