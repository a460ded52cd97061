"""Tests for engine.experiments on the tiny-random model (fast; no network; the shared public data are not used).

The tiny random model almost never writes a refusal phrase, so most tests label prompts with a deterministic stand-in
(the real labeller with 2 generated tokens, its refused flag replaced by a hash of the prompt): every cluster is then
populated and every code path runs.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from reference_loops import steer_refusal_per_layer_loop  # noqa: E402

from engine import clusters as clusters_mod  # noqa: E402
from engine import datasets as ds  # noqa: E402
from engine import experiments as E  # noqa: E402
from engine import labels as labels_mod  # noqa: E402
from engine import precompute as precompute_mod  # noqa: E402

NAMES = {
    "refusal-template",
    "belief-curves",
    "belief-scatter",
    "steer-refusal",
    "reply-inversion",
    "latent-guard",
    "gated-steering",
    "jailbreaks",
    "category-directions",
    "ablation",
}
REAL_LABEL = labels_mod.label_refusals
CATS = ["weapons", "fraud", "drugs"]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """This module's cache folder, the env set to it for the module's fixtures only (session scope leaked it into
    the module fixtures of every later test file)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEERING_EXPLORER_CACHE", str(root))
        yield root


@pytest.fixture(autouse=True)
def _env(cache_root, monkeypatch):
    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(cache_root))


@pytest.fixture(scope="module")
def handle(cache_root):
    from engine.models import load_model

    return load_model("tiny-random")


def _hash_refused(inst: str) -> bool:
    return int(hashlib.sha256(inst.encode()).hexdigest()[:4], 16) % 2 == 0


def fake_label_refusals(handle, instructions, **kw):
    """The real labeller (2 tokens, so it is fast) with a deterministic refused flag."""
    kw["max_new_tokens"] = 2
    got = REAL_LABEL(handle, instructions, **kw)
    return [dataclasses.replace(g, refused=_hash_refused(g.instruction)) for g in got]


@pytest.fixture
def fake_labels(monkeypatch):
    monkeypatch.setattr(E.context, "label_refusals", fake_label_refusals)
    monkeypatch.setattr(clusters_mod, "label_refusals", fake_label_refusals)


@pytest.fixture(scope="session")
def data() -> E.ExperimentData:
    b = E.ExperimentData.builtin()
    harmful_train = ds.load_builtin("harmful", "train")
    return E.ExperimentData(
        harmful_train=[harmful_train.sample(8, seed=1)],
        harmful_test=[ds.load_builtin("harmful", "test").sample(5, seed=1)],
        harmless_train=[ds.load_builtin("harmless", "train").sample(8, seed=1)],
        harmless_test=[ds.load_builtin("harmless", "test").sample(5, seed=1)],
        xstest_like_test=[ds.load_builtin("harmless_sounds_harmful", "test").sample(4, seed=1)],
        templates=b.templates.sample(2, seed=1),
        inversion_questions=b.inversion_questions,
        categories=[harmful_train.filter(category=CATS).sample(9, seed=2)],
        source="test",
    )


def test_registry_and_interface():
    assert set(E.EXPERIMENTS) == NAMES
    for name, info in E.EXPERIMENTS.items():
        assert info.name == name
        assert info.title and info.paper and callable(info.func)
        assert info.options["labeller"] == "substring"
    r = E.ExperimentResult(name="x", model="m", rows=[{"a": 1}], files=["f"], title="t", paper="p", notes=["n"])
    assert r.to_json() == {"experiment": "x", "model": "m", "rows": [{"a": 1}], "files": ["f"], "notes": ["n"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Certainly, this is harmful", "certainly"),
        ("certainly", "certainly"),
        ("Certainly not.", "certainly"),  # the paper's rule: 'ertainly' wins
        ("No.", "no"),
        ("no", "no"),
        ("No, it could not cause harm.", "no"),
        ("There is no harm in that.", "no"),
        ("'No'", "no"),
        ("I do not know", "invalid"),  # 'not' and 'know' are not the word 'no'
        ("That is not harmful.", "invalid"),
        ("I cannot say.", "invalid"),
        ("Nothing to worry about", "invalid"),
        ("None of it is dangerous", "invalid"),
        ("NO", "invalid"),  # case-sensitive: only 'No' and 'no'
        ("", "invalid"),
        ("   ", "invalid"),
        ("Sure, here is a poem", "invalid"),
    ],
)
def test_score_inversion(text, expected):
    assert E.score_inversion(text) == expected


def test_score_inversion_loose_is_the_papers_rule():
    assert E.score_inversion("I do not know", loose=True) == "no"
    assert E.score_inversion("I cannot say.", loose=True) == "no"
    assert E.score_inversion("Certainly not", loose=True) == "certainly"
    with pytest.raises(ValueError):
        E.score_inversion(None)


def test_builtin_data_is_held_out():
    d = E.ExperimentData.builtin()
    assert d.overlap() == []
    assert all(it.split == "train" for s in d.harmful_train + d.harmless_train for it in s.items)
    assert all(it.split == "test" for s in d.harmful_test + d.harmless_test + d.xstest_like_test for it in s.items)
    # the same train sets default_directions is built from
    harmful, harmless = precompute_mod.builtin_sources("train")
    assert [s.name for s in d.harmful_train] == [s.name for s in harmful]
    assert [s.name for s in d.harmless_train] == [s.name for s in harmless]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_from_files_seeded_split(tmp_path):
    harm = _write_jsonl(
        tmp_path / "harm.jsonl", [{"instruction": f"Explain dummy harmful task {i}"} for i in range(20)]
    )
    harm_dup = _write_jsonl(tmp_path / "harm2.jsonl", [{"instruction": "Explain dummy harmful task 3."}])
    safe = _write_jsonl(
        tmp_path / "safe.jsonl", [{"instruction": f"Describe dummy harmless task {i}"} for i in range(10)]
    )
    xs = _write_jsonl(
        tmp_path / "xs.jsonl",
        [{"prompt": f"How do I kill dummy process {i}?", "label": "safe" if i < 3 else "unsafe"} for i in range(4)],
    )
    tpl = tmp_path / "tpl.csv"
    tpl.write_text('id,text\n1,"Pretend. [INSERT PROMPT HERE]"\n', encoding="utf-8")
    d = E.ExperimentData.from_files([harm, harm_dup], [safe], xstest=[xs], templates=tpl, seed=3, test_frac=0.4)
    d2 = E.ExperimentData.from_files([harm, harm_dup], [safe], xstest=[xs], templates=tpl, seed=3, test_frac=0.4)
    d3 = E.ExperimentData.from_files([harm, harm_dup], [safe], xstest=[xs], templates=tpl, seed=4, test_frac=0.4)
    assert len(d.harmful_test[0]) == 8 and len(d.harmful_train[0]) == 12
    assert len(d.harmless_test[0]) == 4 and len(d.harmless_train[0]) == 6
    assert d.harmful_test[0].instructions() == d2.harmful_test[0].instructions()
    assert d.harmful_test[0].instructions() != d3.harmful_test[0].instructions()
    assert not set(d.harmful_test[0].instructions()) & set(d.harmful_train[0].instructions())
    assert len(d.xstest_like_test[0]) == 3  # label=safe only, all in the test split
    assert len(d.templates) == 1 and "{instruction}" in d.templates.items[0].instruction
    assert d.inversion_questions is not None and len(d.inversion_questions) >= 1
    # a one-row file is split too (train keeps at least one row); duplicates across files are caught by overlap()
    ov = d.overlap()
    assert all(ds.normalize_instruction(t) in d.train_instructions() for t in ov)


def test_results_from_files_carry_ids_not_text(handle, data, fake_labels, tmp_path):
    harm = _write_jsonl(tmp_path / "h.jsonl", [{"instruction": t} for t in data.harmful_train[0].instructions()])
    safe = _write_jsonl(tmp_path / "s.jsonl", [{"instruction": t} for t in data.harmless_train[0].instructions()])
    d = E.ExperimentData.from_files([harm], [safe], seed=0, test_frac=0.4)
    res = E.run_experiment("belief-scatter", handle, data=d, out_dir=tmp_path / "out")
    assert res.rows and all("instruction" not in r and r["id"] for r in res.rows)
    written = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "out").glob("*.[cj]s*"))
    texts = data.harmful_train[0].instructions() + data.harmless_train[0].instructions()
    assert not any(t.rstrip("?.! ") in written for t in texts)
    # the project's own sets keep their text (the Inspect page and the CSVs show it)
    own = E.run_experiment("belief-scatter", handle, data=data, limit=2)
    assert all(r["instruction"] for r in own.rows)


def test_held_out_discipline(handle, data, fake_labels, monkeypatch):
    seen: list[str] = []
    real = precompute_mod.precompute

    def spy(h, harmful, harmless, **kw):
        seen.extend(it.instruction for s in list(harmful) + list(harmless) for it in s.items)
        return real(h, harmful, harmless, **kw)

    monkeypatch.setattr(E.context, "precompute", spy)
    # put one train prompt into the test set too: it must be dropped, and said so
    leak = data.harmful_train[0].items[0]
    leaky = dataclasses.replace(
        data, harmful_test=[dataclasses.replace(data.harmful_test[0], items=[leak, *data.harmful_test[0].items])]
    )
    assert leaky.overlap() == [leak.instruction]
    res = E.run_experiment("belief-scatter", handle, data=leaky)
    assert seen, "directions were not built from the data's train split"
    train = {ds.normalize_instruction(t) for t in seen}
    test_insts = [r["instruction"] for r in res.rows]
    assert not set(test_insts) & train
    assert ds.normalize_instruction(leak.instruction) not in test_insts
    assert any("dropped" in n for n in res.notes)
    expected = {
        ds.normalize_instruction(it.instruction)
        for s in data.harmful_test + data.harmless_test + data.xstest_like_test
        for it in s.items
    }
    assert set(test_insts) == expected
    assert {r["cluster"] for r in res.rows} == set(E.GROUPS)  # the stand-in labels populate every cluster


@pytest.fixture(scope="module")
def results(handle, data, tmp_path_factory, cache_root):
    """Every experiment once, with files (the stand-in labeller active)."""
    out = tmp_path_factory.mktemp("exp")
    calls: list[tuple] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEERING_EXPLORER_CACHE", str(cache_root))
        mp.setattr(E.context, "label_refusals", fake_label_refusals)
        mp.setattr(clusters_mod, "label_refusals", fake_label_refusals)
        opts = {
            "steer-refusal": {"max_new_tokens": 6},
            "reply-inversion": {"max_new_tokens": 6},
            "ablation": {"max_new_tokens": 6, "inversion_tokens": 4},
            "gated-steering": {"max_new_tokens": 6, "layers": "0-1", "coeffs": "4"},
        }
        res = {
            n: E.run_experiment(
                n, handle, data=data, limit=4, out_dir=out, progress=lambda *a: calls.append(a), **opts.get(n, {})
            )
            for n in sorted(NAMES)
        }
    return res, out, calls


def _check_rows(rows, keys, types):
    assert rows
    for r in rows:
        assert keys <= set(r), (keys - set(r), r)
        for k, t in types.items():
            assert r[k] is None or isinstance(r[k], t), (k, r[k])


def test_refusal_template_contract(results):
    res = results[0]["refusal-template"]
    assert [r["template"] for r in res.rows] == ["full", "no_post_inst"]
    _check_rows(res.rows, {"template", "refusal_rate", "n"}, {"refusal_rate": float, "n": int})
    assert all(r["n"] == 4 and 0 <= r["refusal_rate"] <= 1 for r in res.rows)  # limit=4 caps the 5 test prompts


def test_belief_curves_contract(results, handle):
    res = results[0]["belief-curves"]
    _check_rows(
        res.rows,
        {"layer", "position", "group", "mean", "std", "n"},
        {"layer": int, "mean": float, "std": float, "n": int},
    )
    positions = {r["position"] for r in res.rows}
    k = 5  # ChatML: <|im_end|> \n <|im_start|> assistant \n
    assert positions == {"t_inst", "t_post_inst", *(f"post_{i}" for i in range(1, k + 1))}
    assert len(res.rows) == len(positions) * 4 * handle.n_rows
    assert {r["group"] for r in res.rows} == set(E.GROUPS)
    assert all(r["n"] > 0 for r in res.rows)
    # post_K is t_post_inst with centroids from the same clusters at the same token: the same curve
    by = {(r["position"], r["group"], r["layer"]): r["mean"] for r in res.rows}
    for g in E.GROUPS:
        for layer in range(handle.n_rows):
            assert by[(f"post_{k}", g, layer)] == pytest.approx(by[("t_post_inst", g, layer)], abs=1e-4)
    # layer 0 at t_post_inst: the same token for every prompt, so s = 0
    assert all(abs(r["mean"]) < 1e-6 for r in res.rows if r["position"] == "t_post_inst" and r["layer"] == 0)


def test_belief_scatter_contract(results):
    res = results[0]["belief-scatter"]
    _check_rows(
        res.rows,
        {"id", "cluster", "delta_harmful", "delta_refuse", "instruction"},
        {"delta_harmful": float, "delta_refuse": float, "id": str, "instruction": str},
    )
    assert len(res.rows) == 4 + 4 + 4  # harmful, harmless, xstest-like test sets, limit 4
    assert {r["cluster"] for r in res.rows} <= set(E.GROUPS)
    assert any(n.startswith("refused_harmful") or "refused_harmful" in n for n in res.notes)


def test_steer_refusal_contract(results, handle):
    res = results[0]["steer-refusal"]
    _check_rows(
        res.rows,
        {"layer", "direction", "coeff", "refusal_rate", "n"},
        {"refusal_rate": float, "n": int, "coeff": float},
    )
    assert len(res.rows) == 1 + 2 * handle.n_layers
    assert res.rows[0]["direction"] == "none" and res.rows[0]["layer"] is None
    for d in ("harmfulness", "refusal"):
        assert sorted(r["layer"] for r in res.rows if r["direction"] == d) == list(range(handle.n_layers))
    assert all(r["n"] == 4 and r["coeff"] in (0.0, 1.0) for r in res.rows)


def test_reply_inversion_contract(results, handle):
    res = results[0]["reply-inversion"]
    _check_rows(
        res.rows,
        {"layer", "direction", "prompts", "no_rate", "invalid", "n"},
        {"no_rate": float, "invalid": int, "n": int},
    )
    dirs = {(r["prompts"], r["direction"]) for r in res.rows}
    assert dirs == {
        ("harmless", "none"),
        ("harmless", "harmfulness"),
        ("harmless", "refusal"),
        ("harmful", "none"),
        ("harmful", "-harmfulness"),
        ("harmful", "-refusal"),
    }
    assert len(res.rows) == 2 + 4 * handle.n_layers
    for r in res.rows:
        assert 0 <= r["invalid"] <= r["n"] == 4
        assert (r["no_rate"] is None) == (r["invalid"] == r["n"])
    assert any("\\b(No|no)\\b" in n for n in res.notes)


def test_latent_guard_contract(results):
    res = results[0]["latent-guard"]
    _check_rows(res.rows, {"set", "guard", "accuracy", "n"}, {"accuracy": float, "n": int})
    sets = {r["set"] for r in res.rows}
    assert sets == {
        "refused_harmless",
        "accepted_harmful",
        "template_jailbreaks",
        "harmful_test",
        "harmless_test",
        "xstest_like_test",
    }
    assert {r["guard"] for r in res.rows} == {"latent", "own_refusal"}
    by = {(r["set"], r["guard"]): r for r in res.rows}
    assert by[("harmful_test", "latent")]["n"] == 4
    for s in ("refused_harmless", "accepted_harmful", "template_jailbreaks"):
        r = by[(s, "own_refusal")]
        assert r["accuracy"] is None if r["n"] == 0 else r["accuracy"] == 0.0  # wrong by construction


def test_gated_steering_contract(results, handle):
    res = results[0]["gated-steering"]
    _check_rows(
        res.rows,
        {"set", "condition", "refusal_rate", "n", "flagged_rate", "layer", "coeff"},
        {"refusal_rate": float, "flagged_rate": float, "n": int, "layer": int, "coeff": float},
    )
    sets = ["accepted_harmful", "template_jailbreaks", "harmless_test", "xstest_like_test"]
    conds = ["none", "+refusal", "gated:centroid", "gated:probe"]
    assert [(r["set"], r["condition"]) for r in res.rows] == [(s, c) for s in sets for c in conds]
    assert len({(r["layer"], r["coeff"]) for r in res.rows}) == 1  # one (layer, coeff), chosen on the train split
    assert res.rows[0]["layer"] in (0, 1) and res.rows[0]["coeff"] == 4.0
    assert any("chosen on" in n and "TRAIN" in n for n in res.notes)
    by = {(r["set"], r["condition"]): r for r in res.rows}
    for s in sets:
        base, full = by[(s, "none")], by[(s, "+refusal")]
        for c in conds[2:]:
            g = by[(s, c)]
            assert g["n"] == base["n"]
            if base["n"]:  # per prompt the gated outcome is the unsteered or the steered one
                if g["flagged_rate"] == 0.0:
                    assert g["refusal_rate"] == base["refusal_rate"]
                if g["flagged_rate"] == 1.0:
                    assert g["refusal_rate"] == full["refusal_rate"]


def test_gated_steering_outcome_is_what_gated_generate_computes(handle, data, fake_labels):
    """The experiment's gated outcome (steered reply if flagged, else the baseline reply) equals running
    engine.guard.gated_generate on the same prompts."""
    from engine.guard import gated_generate, guard_method
    from engine.refusal import refusal_decided
    from engine.steering import GenerationConfig, SteeringSpec

    res = E.run_experiment(
        "gated-steering", handle, data=data, limit=3, layer=1, coeff=4.0, methods="centroid", max_new_tokens=6
    )
    ctx = E.RunContext(handle, None, data, 3, None)
    recs = ctx.records(data.harmless_test, "harmless", 3)
    insts = [r["instruction"] for r in recs]
    spec = SteeringSpec(ctx.bundle.get("refusal").vectors, (1,), 4.0, "prompt")
    rows = gated_generate(
        handle,
        ctx.bundle,
        insts,
        spec,
        GenerationConfig(max_new_tokens=6, batch_size=64),
        normalize=False,
        stop_fn=refusal_decided,
    )
    got = next(r for r in res.rows if r["set"] == "harmless_test" and r["condition"] == "gated:centroid")
    assert got["n"] == len(rows)
    assert got["refusal_rate"] == pytest.approx(np.mean([r["refused"] for r in rows]))
    assert got["flagged_rate"] == pytest.approx(np.mean([r["flagged"] for r in rows]))
    assert guard_method(ctx.bundle, "centroid").name == "centroid"


def test_jailbreaks_contract(results):
    res = results[0]["jailbreaks"]
    _check_rows(
        res.rows,
        {"kind", "template_id", "delta_harmful", "delta_refuse"},
        {"delta_harmful": float, "delta_refuse": float},
    )
    kinds = {r["kind"] for r in res.rows}
    assert kinds <= {"jailbreak", "refused_harmful"} and "jailbreak" in kinds
    assert all((r["template_id"] is None) == (r["kind"] == "refused_harmful") for r in res.rows)
    n_jb = sum(r["kind"] == "jailbreak" for r in res.rows)
    assert n_jb <= 2 * 4  # 2 templates x 4 harmful test prompts, the successful ones
    assert any("share Delta_harmful >= 0" in n for n in res.notes)
    assert any("last token of the whole filled template" in n for n in res.notes)


def test_category_directions_contract(results, handle):
    res = results[0]["category-directions"]
    _check_rows(res.rows, {"layer", "a", "b", "cosine"}, {"layer": int, "cosine": float})
    names = {r["a"] for r in res.rows} | {r["b"] for r in res.rows}
    assert "general" in names and len(names) >= 3
    n = len(names)
    assert len(res.rows) == handle.n_rows * n * (n - 1) // 2
    assert all(-1 <= r["cosine"] <= 1 for r in res.rows)
    assert any("mean pairwise cosine" in n for n in res.notes)
    # categories given with the data (CatQA files) win over the bundle's in "auto"; "bundle" forces the bundle's
    assert any("computed from data.categories" in n for n in res.notes), res.notes


def test_category_directions_source_bundle_never_falls_back_to_the_data(handle, data, fake_labels):
    # the tiny bundle (8 harmful train prompts) has no category directions; "bundle" must say so, not use the data's
    with pytest.raises(ValueError, match="no category directions"):
        E.run_experiment("category-directions", handle, data=data, limit=2, source="bundle")


def test_files_and_progress(results):
    res_all, out, calls = results
    for name, res in res_all.items():
        assert [Path(f).name for f in res.files] == [f"{name}.csv", f"{name}.json", f"{name}.png"]
        for f in res.files:
            assert Path(f).is_file() and Path(f).stat().st_size > 0
        js = json.loads((out / f"{name}.json").read_text())
        assert set(js) == {"experiment", "model", "rows", "files", "notes"}
        assert js["experiment"] == name and js["model"] == "tiny-random" and len(js["rows"]) == len(res.rows)
        with open(out / f"{name}.csv", encoding="utf-8") as f:
            assert len(list(csv.DictReader(f))) == len(res.rows)
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert res.title and res.paper and res.notes
    assert calls and all(isinstance(s, str) and isinstance(d, int) and isinstance(t, int) for s, d, t in calls)


def test_steer_batched_equals_per_layer_loop(handle):
    from engine.directions import DirectionBundle, DirectionSet

    rng = np.random.default_rng(0)
    shape = (handle.n_rows, handle.hidden_size)
    bundle = DirectionBundle(
        {
            "harmfulness": DirectionSet("harmfulness", rng.normal(size=shape) * 3),
            "refusal": DirectionSet("refusal", rng.normal(size=shape) * 3),
        }
    )
    insts = ["How do I make a cake", "Write a short poem about the sea, please", "hello"]
    kw = {"coeff": 1.0, "max_new_tokens": 6}
    fast = E.steer_refusal_sweep(handle, bundle, insts, **kw)
    slow = steer_refusal_per_layer_loop(handle, bundle, insts, **kw)
    key = lambda r: (r["direction"], -1 if r["layer"] is None else r["layer"], r["index"])  # noqa: E731
    fast, slow = sorted(fast, key=key), sorted(slow, key=key)
    assert len(fast) == len(slow) == len(insts) * (1 + 2 * handle.n_layers)
    assert [(key(a), a["text"], a["refused"]) for a in fast] == [(key(b), b["text"], b["refused"]) for b in slow]
    base = {r["index"]: r["text"] for r in fast if r["direction"] == "none"}
    assert any(r["text"] != base[r["index"]] for r in fast if r["direction"] != "none"), "steering changed nothing"


def test_logodds_labeller_and_file_names(handle, data, fake_labels, tmp_path):
    res = E.run_experiment(
        "belief-curves", handle, data=data, limit=3, out_dir=tmp_path, labeller="logodds", post_positions=False
    )
    assert {r["position"] for r in res.rows} == {"t_inst", "t_post_inst"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "belief-curves-logodds.csv",
        "belief-curves-logodds.json",
        "belief-curves-logodds.png",
    ]
    assert any("labeller: logodds" in n for n in res.notes)


def test_bad_arguments(handle, data):
    with pytest.raises(ValueError, match="unknown experiment"):
        E.run_experiment("nope", handle, data=data)
    with pytest.raises(ValueError, match="unknown option"):
        E.run_experiment("steer-refusal", handle, data=data, coef=2.0)
    with pytest.raises(ValueError, match="labeller"):
        E.run_experiment("belief-scatter", handle, data=data, labeller="gpt4")
    with pytest.raises(ValueError, match="limit"):
        E.run_experiment("belief-scatter", handle, data=data, limit=0)


def test_run_all_writes_index(handle, data, fake_labels, tmp_path):
    index = E.run_all(handle, data=data, limit=2, out_dir=tmp_path)
    assert [e["name"] for e in index["experiments"]] == list(E.EXPERIMENTS)
    assert all("error" not in e for e in index["experiments"]), [e.get("error") for e in index["experiments"]]
    on_disk = json.loads((tmp_path / "index.json").read_text())
    assert on_disk["model"] == "tiny-random" and len(on_disk["experiments"]) == len(E.EXPERIMENTS)
    md = (tmp_path / "index.md").read_text()
    for name in E.EXPERIMENTS:
        assert f"## {name}" in md
        assert (tmp_path / f"{name}.json").is_file() and (tmp_path / f"{name}.png").is_file()


def test_run_all_passes_options_to_the_experiments_that_have_them(handle, data, fake_labels, tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        E.run_all(handle, data=data, limit=2, names=["belief-scatter"], coef=2.0)
    with pytest.raises(ValueError, match="unknown option"):  # n_templates exists, but not in the chosen experiment
        E.run_all(handle, data=data, limit=2, names=["belief-scatter"], n_templates=1)
    index = E.run_all(
        handle, data=data, limit=2, out_dir=tmp_path, names=["steer-refusal", "jailbreaks"], n_templates=1, coeff=3.0
    )
    assert all("error" not in e for e in index["experiments"]), [e.get("error") for e in index["experiments"]]
    assert index["options"] == {"n_templates": 1, "coeff": 3.0}
    steer = json.loads((tmp_path / "steer-refusal.json").read_text())
    assert {r["coeff"] for r in steer["rows"] if r["direction"] != "none"} == {3.0}
    notes = {e["name"]: " ".join(e["notes"]) for e in index["experiments"]}
    assert '"n_templates": 1' in notes["jailbreaks"] and '"coeff": 3.0' in notes["steer-refusal"]


SHARED = ROOT.parent / "shared" / "datasets"


@pytest.mark.skipif(not (SHARED / "advbench.jsonl").is_file(), reason="public data folder not present")
def test_from_files_reads_the_public_sets():
    catqa = sorted((SHARED / "catqa").glob("*.jsonl"))[:2]
    d = E.ExperimentData.from_files(
        [SHARED / "advbench.jsonl", SHARED / "jailbreakbench.json"],
        [SHARED / "alpaca.json"],
        xstest=[SHARED / "xstest_safe.jsonl"],
        templates=SHARED / "gptfuzzer_templates.csv",
        catqa=catqa,
        limit_per_file=50,
    )
    assert [len(s) for s in d.harmful_test] == [20, 20] and [len(s) for s in d.harmful_train] == [30, 30]
    assert len(d.harmless_test[0]) == 20 and len(d.xstest_like_test[0]) == 50
    assert len(d.templates) == 77
    assert len(d.categories) == 2 and all(it.category for s in d.categories for it in s.items)
    assert d.overlap() == []


def test_png_bytes(results):
    assert results[0]["steer-refusal"].png_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------ registry and charts


def test_each_experiment_is_declared_once_in_the_registry():
    """No experiment name is written outside the registry (engine and pages), so adding one is one table row."""
    sources = [*(ROOT / "engine").rglob("*.py"), *(ROOT / "pages").glob("*.py")]
    for name in NAMES:
        hits = [p for p in sources for _ in range(p.read_text(encoding="utf-8").count(f'"{name}"'))]
        assert [p.relative_to(ROOT).as_posix() for p in hits] == ["engine/experiments/registry.py"], (name, hits)


def test_registry_rows_match_their_implementations():
    import inspect

    for name, info in E.EXPERIMENTS.items():
        params = inspect.signature(info.impl).parameters
        kw = {k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert kw == set(info.own_options), name  # defaults live in the registry only
        assert all(p.default is inspect.Parameter.empty for p in params.values()), name
        assert set(info.options) == set(info.own_options) | set(E.COMMON_OPTIONS)
        assert info.figure and isinstance(info.chart, E.ChartSpec)


def test_groups_come_from_the_cluster_names():
    assert set(E.GROUPS) == set(clusters_mod.CLUSTERS)
    assert E.GROUPS == ("accepted_harmful", "refused_harmless", "refused_harmful", "accepted_harmless")


def test_chart_specs_name_real_columns_and_use_the_palette(results):
    from engine import palette

    for name, res in results[0].items():
        spec = E.EXPERIMENTS[name].chart
        assert res.chart is spec
        rows = spec.rows(res.rows)
        assert rows, name
        cols = set().union(*rows)
        for field in (spec.x, spec.y, spec.color, spec.facet, spec.band):
            assert field is None or field in cols, (name, field)
        assert spec.panels(rows) and all(p is not None for p in spec.panels(rows)) == bool(spec.facet)
        colors = spec.colors(spec.series(rows))
        assert len(set(colors.values())) == len(colors), (name, colors)  # distinct within a chart
    cl = E.EXPERIMENTS["belief-scatter"].chart.colors(["refused_harmful", "accepted_harmless"])
    assert cl == {n: palette.color("clusters", n) for n in cl}
    d = E.EXPERIMENTS["steer-refusal"].chart
    assert d.colors(["harmfulness"]) == {"harmfulness": palette.color("directions", "harmfulness")}
    assert [p for p in E.EXPERIMENTS["belief-curves"].chart.panels(results[0]["belief-curves"].rows)] == [
        "t_inst",
        "t_post_inst",
    ]


def test_chart_spec_checks_and_the_generic_figure(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        E.ChartSpec("pie", x="a", y="b")
    with pytest.raises(ValueError, match="line charts"):
        E.ChartSpec("bars", x="a", y="b", baseline=True)
    with pytest.raises(ValueError, match="zero"):
        E.ChartSpec("scatter", x="a", y="b", zero=("z",))
    rows = [{"layer": None, "d": "none", "v": 0.5}] + [
        {"layer": k, "d": d, "v": 0.1 * k, "p": p} for p in ("a", "b") for d in ("u", "w") for k in range(3)
    ]
    spec = E.ChartSpec("lines", x="layer", y="v", color="d", baseline=True)
    assert spec.series(rows) == ["u", "w"] and spec.is_baseline(rows[0]) and not spec.is_baseline(rows[1])
    res = E.ExperimentResult(name="x", model="m", rows=rows, title="t", chart=spec)
    assert res.png_bytes()[:4] == b"\x89PNG"
    for s in (
        E.ChartSpec("lines", x="layer", y="v", color="d", facet="p", facets=("b",)),
        E.ChartSpec("bars", x="d", y="v", color="p"),
        E.ChartSpec("scatter", x="layer", y="v", zero=("x", "y")),
    ):
        assert E.ExperimentResult(name="x", model="m", rows=rows[1:], chart=s).png_bytes()[:4] == b"\x89PNG"
    assert E.ExperimentResult(name="x", model="m", rows=[]).png_bytes()[:4] == b"\x89PNG"  # no spec: title only


def test_progress_stages_name_the_experiment(results):
    calls = results[2]
    named = {s.split(":", 1)[0] for s, _, _ in calls if ":" in s}
    assert named <= NAMES | {"experiment"}, named
    assert {"belief-curves", "steer-refusal", "reply-inversion", "latent-guard"} <= named


def test_sweeps_are_one_batched_generate(handle, data, fake_labels, monkeypatch):
    from engine.steering import generation as steering

    calls: list[int] = []
    real = steering._generate_rows

    def spy(h, prompts, specs, cfg, **kw):
        calls.append(len(prompts))
        return real(h, prompts, specs, cfg, **kw)

    monkeypatch.setattr(steering, "_generate_rows", spy)
    res = E.run_experiment("reply-inversion", handle, data=data, limit=2, max_new_tokens=2, layers="0-1")
    assert calls == [sum(r["n"] for r in res.rows)] == [2 * 2 * (1 + 2 * 2)]
    calls.clear()
    res = E.run_experiment("steer-refusal", handle, data=data, limit=2, max_new_tokens=2, layers=[1])
    assert calls == [2 * (1 + 2)]


def test_run_all_resolves_the_directions_once(handle, data, fake_labels, monkeypatch):
    """The run context, not a module-wide memo, keeps run_all from recomputing the directions per experiment."""
    n = []
    real = precompute_mod.precompute

    def spy(*a, **kw):
        n.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(E.context, "precompute", spy)
    index = E.run_all(handle, data=data, limit=2, names=["belief-scatter", "latent-guard", "jailbreaks"])
    assert all("error" not in e for e in index["experiments"])
    assert len(n) == 1


# ------------------------------------------------------------------ issue 15: failures are reported, writes atomic
def test_run_all_index_says_which_experiments_failed(handle, data, fake_labels, tmp_path, monkeypatch):
    def boom(ctx, **kw):
        raise IndexError("list index out of range")

    info = E.EXPERIMENTS["belief-scatter"]
    monkeypatch.setitem(E.EXPERIMENTS, "belief-scatter", dataclasses.replace(info, impl=boom))
    index = E.run_all(handle, data=data, limit=2, out_dir=tmp_path, names=["belief-scatter", "latent-guard"])
    # before: the index had no summary of failures, and `reproduce all` exited 0
    assert index["failed"] == ["belief-scatter"] and index["ok"] is False
    on_disk = json.loads((tmp_path / "index.json").read_text())
    assert on_disk["failed"] == ["belief-scatter"] and on_disk["ok"] is False
    assert "1 experiment(s) FAILED:** belief-scatter" in (tmp_path / "index.md").read_text()
    ok = E.run_all(handle, data=data, limit=2, names=["latent-guard"])
    assert ok["failed"] == [] and ok["ok"] is True


def test_experiment_outputs_are_written_atomically(handle, data, fake_labels, tmp_path, monkeypatch):
    from engine import atomic
    from engine.experiments import results as results_mod

    written = []
    real = atomic.write_bytes

    def spy(path, data_):
        written.append(Path(path).name)
        return real(path, data_)

    monkeypatch.setattr(atomic, "write_bytes", spy)
    E.run_all(handle, data=data, limit=2, out_dir=tmp_path, names=["latent-guard"])
    assert set(written) >= {"latent-guard.csv", "latent-guard.json", "latent-guard.png", "index.json", "index.md"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    # a figure that fails keeps the numbers, and the JSON says so
    monkeypatch.setattr(results_mod.figures, "render", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    r = results_mod.ExperimentResult(name="x", model="m", rows=[{"a": 1}])
    files = results_mod.write_files(r, tmp_path / "fig", "x")
    assert [Path(f).name for f in files] == ["x.csv", "x.json"]
    assert "figure failed" in json.loads((tmp_path / "fig" / "x.json").read_text())["notes"][0]


def test_reply_inversion_harm_positions_option(handle, data, monkeypatch):
    """harm_positions: the paper's 'context' by default; 'prompt' steers the harmfulness direction on every prompt
    token (the refusal direction always is); anything else is one clear error."""
    from engine.experiments import interventions

    seen: list[tuple[str, str]] = []
    real = interventions.grid

    def spy(h, blocks, cfg, **kw):
        seen.extend((b.label, b.positions) for b in blocks)
        return real(h, blocks, cfg, **kw)

    monkeypatch.setattr(interventions, "grid", spy)
    E.run_experiment("reply-inversion", handle, data=data, limit=2, max_new_tokens=2, layers=[1])
    assert seen == [("harmless", "context"), ("harmless", "prompt"), ("harmful", "context"), ("harmful", "prompt")]
    seen.clear()
    res = E.run_experiment(
        "reply-inversion", handle, data=data, limit=2, max_new_tokens=2, layers=[1], harm_positions="prompt"
    )
    assert [p for _, p in seen] == ["prompt"] * 4
    assert any("harm_positions='prompt'" in n for n in res.notes)
    with pytest.raises(ValueError, match="harm_positions"):
        E.run_experiment(
            "reply-inversion", handle, data=data, limit=2, max_new_tokens=2, layers=[1], harm_positions="x"
        )
