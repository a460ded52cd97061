"""The Streamlit app through streamlit.testing.v1.AppTest, on tiny-random.

Every page renders without an exception; the main widgets drive the engine (Steer gives two outputs and coefficient
0 reproduces the baseline; Clusters has one point per prompt; the guard gives verdicts); bad input and malformed
uploads show st.error, never a traceback. STEERING_EXPLORER_MODEL is tiny-random; the cache is the session's
temporary folder (tests/conftest.py). The model and its directions are st.cache_resource, shared by all tests.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine import service as svc
from engine.directions import DirectionBundle, DirectionSet
from engine.precompute import load_records

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"


def app_module_other() -> str:
    """The picker's 'other' option, read from app.py (so a relabelled option does not break the tests)."""
    import re as _re

    m = _re.search(r'^OTHER = "(.+)"$', APP.read_text(encoding="utf-8"), _re.M)
    assert m, "app.py defines OTHER"
    return m.group(1)


TIMEOUT = 180  # seconds per AppTest run: generous, for a loaded 2-core machine


@pytest.fixture(autouse=True)
def _no_legacy_pages_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """AppTest resets Streamlit's legacy ``pages/``-directory flag before *every* run, so each run would start in the
    legacy mode that a real server is in only for its first run after start (app.py's ``require_frame`` handles that
    one; the browser test opens a deep link on a fresh server to check it). Keep the flag off, as a running server
    has it after its first run."""
    from streamlit.runtime.pages_manager import PagesManager

    orig = PagesManager.__init__

    def init(self: PagesManager, *args: object, **kwargs: object) -> None:
        orig(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture(autouse=True)
def _tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERING_EXPLORER_MODEL", "tiny-random")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert os.environ.get("STEERING_EXPLORER_CACHE"), "conftest points the cache at a temporary folder"


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _open(page: str | None = None, **state: object) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    _ok(at)
    if page:
        at.switch_page(page).run()
        _ok(at)
    return at


def _errors(at: AppTest) -> list[str]:
    return [str(e.value) for e in at.error]


def _texts(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in [*at.markdown, *at.caption, *at.info, *at.success, *at.warning])


@pytest.fixture(scope="module")
def handle_and_bundle():
    """The same model and directions the app uses (for expectations), loaded outside Streamlit."""
    handle = svc.load_handle("tiny-random")
    bundle, _ = svc.load_directions(handle)
    return handle, bundle


# ------------------------------------------------------------------------------------------------ frame
def test_frame_loads_tiny_random_and_shows_status():
    at = _open()
    assert at.title[0].value == "Steer"  # the default page
    assert at.selectbox(key="model_choice").value == "tiny-random"
    side = "\n".join(str(m.value) for m in [*at.sidebar.markdown, *at.sidebar.caption])
    assert "3 blocks" in side and "width 64" in side and "Directions:" in side
    assert not _errors(at)


def test_bad_model_shows_error_not_trace(tmp_path: Path):
    at = _open()
    at.selectbox(key="model_choice").set_value(app_module_other()).run()
    _ok(at)
    at.text_input(key="model_custom").input(str(tmp_path)).run()  # an empty folder: not a model
    _ok(at)
    assert any("could not" in e.lower() for e in _errors(at))
    at.selectbox(key="model_choice").set_value("tiny-random").run()  # and the app recovers
    _ok(at)
    assert not _errors(at) and at.title[0].value == "Steer"


def test_a_local_gguf_file_is_a_model(tmp_path: Path):
    """The picker's 'other' box takes a .gguf path: verified, dequantised once, cached, and used like any model."""
    from test_models import write_tiny_gguf

    path = tmp_path / "tiny-qwen2.gguf"
    write_tiny_gguf(path)
    at = _open()
    at.selectbox(key="model_choice").set_value(app_module_other()).run()
    at.text_input(key="model_custom").input(str(path)).run()
    _ok(at)
    assert not [e for e in _errors(at) if "could not load" in e.lower()], _errors(at)
    status = "\n".join(str(m.value) for m in at.sidebar.markdown)
    assert "2 blocks" in status and "width 64" in status, status


# ------------------------------------------------------------------------------------------------ steer
def _steer(at: AppTest, text: str, coeff: float = 1.0, max_new: int = 6) -> AppTest:
    at.text_area(key="steer_instructions").input(text)
    at.number_input(key="steer_max_new").set_value(max_new)
    at.slider(key="steer_coeff").set_value(coeff)
    return _ok(at.button(key="steer_go").click().run())


def test_steer_gives_baseline_and_steered_outputs():
    at = _steer(_open("pages/steer.py"), "Write a short poem about the ocean.", coeff=4.0)
    res = at.session_state["steer_result"]
    assert len(res["rows"]) == 1
    row = res["rows"][0]
    assert isinstance(row["baseline"], str) and isinstance(row["steered"], str)
    assert len(at.code) == 2  # one baseline and one steered box
    assert {at.code[0].value, at.code[1].value} >= {row["baseline"] or "(empty)"}
    assert "answered" in _texts(at) or "refused" in _texts(at)
    assert [m.label for m in at.metric] == ["Baseline refusals", "Steered refusals"]
    assert at.session_state["report_log"][-1]["page"] == "Steer"


def test_steer_coefficient_zero_reproduces_baseline():
    at = _steer(_open("pages/steer.py"), "Tell me a joke\nHow do I pick a lock", coeff=0.0)
    rows = at.session_state["steer_result"]["rows"]
    assert len(rows) == 2 and len(at.code) == 4
    for r in rows:
        assert r["baseline"] == r["steered"]


def test_steer_bad_input_shows_errors():
    at = _steer(_open("pages/steer.py"), "   \n  ")
    assert any("at least one instruction" in e for e in _errors(at))
    assert "steer_result" not in at.session_state
    at.multiselect(key="steer_layers").set_value([])
    at.text_area(key="steer_instructions").input("hello")
    _ok(at.button(key="steer_go").click().run())
    assert any("layer" in e for e in _errors(at))


def test_steer_malformed_direction_upload_shows_error():
    at = _open("pages/steer.py")
    at.file_uploader(key="steer_upload").set_value(
        ("mine.safetensors", b"\x00not safetensors" * 4, "application/octet-stream")
    )
    _ok(at.run())
    assert any("safetensors" in e for e in _errors(at))


def test_steer_uploaded_direction_can_be_used(handle_and_bundle):
    _, bundle = handle_and_bundle
    at = _open("pages/steer.py")
    at.file_uploader(key="steer_upload").set_value(
        ("mine.safetensors", svc.bundle_bytes(bundle), "application/octet-stream")
    )
    _ok(at.run())
    assert not _errors(at)
    assert "uploaded: refusal" in at.selectbox(key="steer_direction").options
    at.selectbox(key="steer_direction").set_value("uploaded: refusal")
    at = _steer(at, "Tell me a joke", coeff=0.0)
    assert at.session_state["steer_result"]["settings"]["direction"] == "uploaded: refusal"


def test_sweep_heatmap_and_cell():
    at = _open("pages/steer.py")
    at.segmented_control(key="steer_mode").set_value("Sweep").run()
    _ok(at)
    at.text_area(key="steer_instructions").input("Tell me a joke")
    at.number_input(key="steer_max_new").set_value(4)
    at.multiselect(key="sweep_layers").set_value([0, 2])
    at.text_input(key="sweep_coeffs").input("0, 2")
    _ok(at.button(key="sweep_go").click().run())
    recs = at.session_state["sweep_result"]["records"]
    assert len(recs) == 1 * (2 * 2 + 1)
    assert len(at.get("vega_lite_chart")) == 1
    cell = next(s for s in at.selectbox if str(s.key).startswith("sweep_cell_"))
    assert len(cell.options) == 4
    cell.set_value("layer 0 · coeff +0").run()
    _ok(at)
    assert len(at.code) == 2 and at.code[0].value == at.code[1].value  # coefficient 0: steered == baseline
    at.text_input(key="sweep_coeffs").input("a, b")
    _ok(at.button(key="sweep_go").click().run())
    assert any("not a number" in e for e in _errors(at))


# ------------------------------------------------------------------------------------------------ steer: operations
def _charts(at: AppTest) -> int:
    return len(at.get("vega_lite_chart"))


def _generate(at: AppTest, text: str, max_new: int) -> AppTest:
    """Generate on the Steer page as it is set (ablation has no coefficient slider)."""
    at.text_area(key="steer_instructions").input(text)
    at.number_input(key="steer_max_new").set_value(max_new)
    return _ok(at.button(key="steer_go").click().run())


def test_steer_ablation_with_traces_and_next_token_panel(handle_and_bundle):
    handle, _ = handle_and_bundle
    at = _open("pages/steer.py")
    at.segmented_control(key="steer_op").set_value("ablate").run()
    _ok(at)
    assert at.radio(key="steer_positions_ablate").value == "all"  # ablation defaults to every position
    assert at.radio(key="steer_ablate_where").value == "every layer"
    at = _generate(at, "Tell me a joke\nHow do I pick a lock", max_new=5)
    res = at.session_state["steer_result"]
    s = res["settings"]
    assert (s["operation"], s["layers"], s["direction_row"], s["coeff"]) == ("ablate", "all", handle.n_layers // 2, 1.0)
    assert res["label"].startswith("Ablated: harmfulness")
    for r in res["rows"]:
        assert set(r["trace"]) == {"baseline", "steered"} and r["trace"]["steered"]
        assert {t["row"] for t in r["trace"]["baseline"]} == {handle.n_layers // 2}
        assert set(r["kl"]) == {"steered"} and r["topk"]["baseline"]
    # per instruction: the trace chart, and the next-token panel's KL curve and top-k bars
    assert _charts(at) == 3 * len(res["rows"])
    assert any("KL(baseline" in e.label for e in at.expander)
    assert at.session_state["report_log"][-1]["title"] == "directional ablation"
    assert "trace" not in at.session_state["report_log"][-1]["rows"][0]  # the report keeps texts, not traces
    at.radio(key="steer_trace_value").set_value("cosine").run()  # redraw from the session's result
    _ok(at)
    assert _charts(at) == 3 * len(res["rows"]) and not _errors(at)
    steps = [s for s in at.slider if str(s.key).startswith("steer_topk_step_")]
    if steps:
        steps[0].set_value(steps[0].max).run()
        _ok(at)


def test_steer_system_prompt_column_equals_a_separate_generation(handle_and_bundle):
    from engine.positions import locate
    from engine.steering import GenerationConfig, generate

    handle, _ = handle_and_bundle
    at = _open("pages/steer.py")
    at.toggle(key="steer_system_on").set_value(True)
    at.number_input(key="steer_topk").set_value(0)
    at = _steer(at, "Tell me a joke", max_new=5)
    row = at.session_state["steer_result"]["rows"][0]
    system = at.text_area(key="steer_system").value
    assert at.session_state["steer_result"]["system_prompt"] == system
    expected = generate(handle, [locate(handle.tokenizer, "Tell me a joke", system=system)], None, GenerationConfig(5))
    assert row["prompted"] == expected[0]
    assert len(at.code) == 3  # baseline, steered, system prompt
    assert [m.label for m in at.metric] == ["Baseline refusals", "Steered refusals", "System-prompt refusals"]
    assert "topk" not in row and _charts(at) == 1  # top-k off: the trace chart only


def test_steer_ablating_a_zero_row_shows_an_error():
    at = _open("pages/steer.py")
    at.selectbox(key="steer_direction").set_value("refusal")
    at.segmented_control(key="steer_op").set_value("ablate").run()
    at.radio(key="steer_ablate_rows").set_value("each layer its own row").run()
    at = _generate(at, "Tell me a joke", max_new=2)
    assert any("zero vector" in e for e in _errors(at)), _errors(at)
    assert "steer_result" not in at.session_state


# ------------------------------------------------------------------------------------------------ clusters
def test_clusters_one_point_per_prompt(handle_and_bundle):
    handle, _ = handle_and_bundle
    at = _open("pages/clusters.py", clusters_method="PCA")
    assert len(at.get("vega_lite_chart")) == 2  # t_inst and t_post_inst side by side
    pts = at.session_state["clusters_points"]
    assert set(pts) == {"t_inst", "t_post_inst"}
    n_ref = len(load_records(handle))
    assert pts["t_inst"] == {"n": n_ref, "n_yours": 0}
    at.text_area(key="clusters_own").input("How do I kill a Python process?\nWrite a poem").run()
    _ok(at)
    pts = at.session_state["clusters_points"]
    assert pts["t_inst"] == {"n": n_ref + 2, "n_yours": 2} and pts["t_post_inst"]["n_yours"] == 2
    at.slider(key="clusters_layer").set_value(0).run()  # row 0 at t_post_inst: identical template token
    _ok(at)
    assert not _errors(at)
    at.toggle(key="clusters_side").set_value(False).run()
    _ok(at)
    assert len(at.get("vega_lite_chart")) == 1


# ------------------------------------------------------------------------------------------------ inspect
def test_inspect_renders_and_rejects_empty():
    at = _open("pages/inspect.py")
    assert [m.label for m in at.metric] == ["Δ harmful (t_inst)", "Δ refuse (t_post_inst)", "Latent Guard verdict"]
    assert at.metric[2].value in ("harmful", "harmless")
    html = at.get("html")[0].proto.body
    assert "t_inst" in html and "t_post_inst" in html
    assert len(at.get("vega_lite_chart")) == 3
    at.text_input(key="inspect_instruction").input("   ").run()
    _ok(at)
    assert any("empty" in e or "at least one" in e for e in _errors(at))
    at.text_input(key="inspect_instruction").input("<b>bold</b> & more").run()  # escaped, not rendered
    _ok(at)
    body = at.get("html")[0].proto.body
    assert "&lt;" in body and "<b>" not in body


# ------------------------------------------------------------------------------------------------ guard
def test_guard_classifies_prompts(handle_and_bundle):
    handle, bundle = handle_and_bundle
    at = _open("pages/guard.py")
    at.text_area(key="guard_text").input("How do I kill a Python process?\nHow do I make a bomb?")
    _ok(at.button(key="guard_go").click().run())
    df = at.dataframe[0].value
    assert list(df["verdict"]) and set(df["verdict"]) <= {"harmful", "harmless"}
    prompts = ["How do I kill a Python process?", "How do I make a bomb?"]
    # by default prompts are normalised like the directions' prompts (trailing '?' stripped)
    assert at.toggle(key="guard_normalize").value is svc.normalizes_instructions(bundle) is True
    expected = svc.guard_frame(handle, bundle, svc.normalize_like(bundle, prompts))
    np.testing.assert_allclose(df["Δ harmful"].to_numpy(), expected["score"].to_numpy(), atol=1e-6)
    assert list(df["verdict"]) == list(expected["verdict"])
    assert list(df["instruction"]) == prompts  # shown as typed
    at.slider(key="guard_threshold").set_value(0.5).run()  # the verdicts follow the threshold without recapture
    assert (at.dataframe[0].value["verdict"] == "harmless").all()
    at.slider(key="guard_threshold").set_value(0.0)
    at.toggle(key="guard_normalize").set_value(False)
    _ok(at.button(key="guard_go").click().run())
    raw = svc.guard_frame(handle, bundle, prompts, normalize=False)  # the toggle off scores the text as typed
    np.testing.assert_allclose(at.dataframe[0].value["Δ harmful"].to_numpy(), raw["score"].to_numpy(), atol=1e-6)


def test_guard_bad_upload_and_empty_input_show_errors():
    at = _open("pages/guard.py")
    at.text_area(key="guard_text").input("")
    _ok(at.button(key="guard_go").click().run())
    assert any("at least one prompt" in e for e in _errors(at))
    at.file_uploader(key="guard_upload").set_value(("bad.txt", "caf\u00e9".encode("latin-1"), "text/plain"))
    _ok(at.button(key="guard_go").click().run())
    assert any("bad.txt" in e for e in _errors(at))
    at.file_uploader(key="guard_upload").set_value(("bad.jsonl", b"{broken\n", "application/json"))
    _ok(at.button(key="guard_go").click().run())
    assert _errors(at)


def test_guard_evaluation_with_labelled_upload():
    at = _open("pages/guard.py")
    at.number_input(key="guard_limit").set_value(3)
    labelled = b"text,label\nHow to bake bread,harmless\nHow to build a pipe bomb,harmful\nHello,unknown\n"
    at.file_uploader(key="guard_labelled").set_value(("mine.csv", labelled, "text/csv"))
    _ok(at.button(key="guard_eval_go").click().run())
    assert not _errors(at)
    labels = [m.label for m in at.metric]
    assert labels == ["Latent Guard accuracy", "Model refusal accuracy", "ROC AUC (Δ harmful)", "Prompts"]
    assert at.metric[3].value == str(3 * 3 + 2)
    per_set = at.dataframe[0].value
    assert list(per_set["set"]) == ["harmful:test", "harmless:test", "harmless_sounds_harmful:test", "upload:mine.csv"]
    assert any("left out" in w for w in [str(x.value) for x in at.warning])
    assert len(at.get("vega_lite_chart")) == 2  # ROC and confusion matrices


def test_guard_methods_thresholds_and_roc_of_every_method(handle_and_bundle):
    """The method selector scores with the chosen reader; one threshold slider per method (0 / calibrated buttons);
    the evaluation draws every method's ROC curve on one chart and a per-source table with one column per method."""
    handle, bundle = handle_and_bundle
    at = _open("pages/guard.py")
    assert at.selectbox(key="guard_method").value == "centroid"
    assert next(iter(at.selectbox(key="guard_method").options)).startswith("centroid")
    keys = {s.key for s in at.slider}
    assert keys == {"guard_threshold", "guard_threshold_lda", "guard_threshold_probe", "guard_threshold_lda-band"}
    at.selectbox(key="guard_method").set_value("probe")
    at.text_area(key="guard_text").input("How do I kill a Python process?\nHow do I make a bomb?")
    _ok(at.button(key="guard_go").click().run())
    df = at.dataframe[0].value
    prompts = ["How do I kill a Python process?", "How do I make a bomb?"]
    expected = svc.guard_frame(handle, bundle, prompts, method="probe")
    np.testing.assert_allclose(df["score (probe)"].to_numpy(), expected["score"].to_numpy(), atol=1e-6)
    assert list(df["verdict"]) == list(expected["verdict"])
    g = svc.guard_method_info(handle, bundle, "probe")
    _ok(at.button(key="guard_thr_cal").click().run())
    lo, hi, _ = svc.threshold_range(g)
    assert at.slider(key="guard_threshold_probe").value == pytest.approx(min(max(g.calibrated, lo), hi))
    verdicts = np.where(expected["score"] >= at.slider(key="guard_threshold_probe").value, "harmful", "harmless")
    assert list(at.dataframe[0].value["verdict"]) == list(verdicts)
    _ok(at.button(key="guard_thr_zero").click().run())
    assert all(s.value == 0.0 for s in at.slider)
    # evaluation: every method on one ROC chart, per-source accuracy per method, uploaded prompt files as sources
    at.number_input(key="guard_limit").set_value(3)
    at.toggle(key="guard_baseline").set_value(False)
    at.file_uploader(key="guard_harmful_files").set_value(
        [("mine.txt", b"How to build a pipe bomb\nSteal a car\n", "text/plain")]
    )
    _ok(at.button(key="guard_eval_go").click().run())
    assert not _errors(at)
    per = next(d.value for d in at.dataframe if "set" in d.value.columns)
    assert list(per["set"])[-1] == "upload:mine.txt" and list(per["n"])[-1] == 2
    for m in svc.GUARD_METHODS:
        assert svc.method_label(m) in per.columns
    assert at.metric[2].label == "ROC AUC (probe)"
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2
    spec = charts[0].proto.spec
    for m in svc.GUARD_METHODS:
        label = svc.method_label(m)
        assert label in spec or json.dumps(label)[1:-1] in spec  # every method's curve is on the ROC chart


def test_guard_page_offers_to_fit_readers_for_an_older_bundle(handle_and_bundle):
    """A bundle without stored readers (and none cached): the readers are marked 'fitted on first use' and only the
    centroid guard has a threshold slider until they are fitted."""
    handle, bundle = handle_and_bundle
    old = DirectionBundle(
        {k: v for k, v in bundle.directions.items() if not k.startswith("guard:")},
        {k: v for k, v in bundle.provenance.items() if k != "guard_readers"},
    )
    from engine.guard.store import cached_readers_path

    cached_readers_path(handle, old).unlink(missing_ok=True)
    from pages import _state

    at = _open("pages/guard.py")
    at.session_state[_state.OVERRIDE] = {"spec": at.session_state[_state.SPEC], "bundle": old, "source": "test"}
    _ok(at.run())
    assert [s.key for s in at.slider] == ["guard_threshold"]
    at.selectbox(key="guard_method").set_value("lda").run()
    assert any("fitted once" in str(i.value) for i in at.info)
    assert at.button(key="guard_fit")


# ------------------------------------------------------------------------------------------------ directions
def test_directions_page_and_uploads(handle_and_bundle):
    handle, bundle = handle_and_bundle
    at = _open("pages/directions.py")
    assert len(at.get("vega_lite_chart")) == 3
    assert len(at.download_button) == 3  # safetensors, provenance JSON, llama.cpp control vector
    up = at.file_uploader(key="dir_upload")
    up.set_value(("x.safetensors", b"definitely not a safetensors file", "application/octet-stream"))
    _ok(at.run())
    assert any("not a valid safetensors" in e or "x.safetensors" in e for e in _errors(at))
    wide = DirectionBundle(
        {"harmfulness": DirectionSet("harmfulness", np.ones((handle.n_rows, 128), dtype=np.float32))},
        provenance={"model_id": "a-wider-model"},
    )
    at.file_uploader(key="dir_upload").set_value(
        ("wide.safetensors", svc.bundle_bytes(wide), "application/octet-stream")
    )
    _ok(at.run())
    assert any("a-wider-model" in e for e in _errors(at))
    at.file_uploader(key="dir_upload").set_value(
        ("good.safetensors", svc.bundle_bytes(bundle), "application/octet-stream")
    )
    _ok(at.run())
    assert not _errors(at) and at.success
    _ok(at.button(key="dir_use").click().run())
    assert "uploaded file good.safetensors" in "\n".join(str(c.value) for c in at.sidebar.caption)


def test_directions_page_control_vector_block(handle_and_bundle):
    """The llama.cpp block: rows in this app's numbering, the command in llama.cpp's (row l -> direction.(l-1))."""
    handle, _ = handle_and_bundle
    at = _open("pages/directions.py")
    mid = svc.default_layer(handle.n_layers)  # 1 on the 3-block tiny model: raised to the first exportable row, 2
    first = max(mid, 2)
    cmd = "\n".join(str(c.value) for c in at.code)
    assert f"--control-vector-layer-range {first - 1} {first - 1}" in cmd
    assert at.download_button(key="dir_cv_dl") is not None
    at.slider(key="dir_cv_rows").set_value((2, 3))
    at.toggle(key="dir_cv_reverse").set_value(True)
    _ok(at.run())
    assert not _errors(at)
    assert "--control-vector-layer-range 1 2" in "\n".join(str(c.value) for c in at.code)
    assert "direction.1–direction.2" in _texts(at)
    want = svc.control_vector_download(handle_and_bundle[1], handle, "harmfulness", -1.0, [2, 3])
    assert want.file_name in "\n".join(str(c.value) for c in at.code)


def test_directions_cosine_interval_stored_and_on_demand(handle_and_bundle):
    """The interval stored at precompute time is drawn as a band; a bundle without one gets it on demand from the
    built-in train prompts, and a bundle those prompts do not reproduce gets an error, not a wrong band."""
    import copy

    _, bundle = handle_and_bundle
    assert svc.stored_cosine_interval(bundle) is not None  # precomputed now, in the test cache
    at = _open("pages/directions.py")
    assert "bootstrap 95% interval" in _texts(at) and "stored with these directions" in _texts(at)
    assert not [b for b in at.button if b.key == "dir_ci_go"]
    old = copy.deepcopy(bundle)
    old.provenance["summary"].pop("cosine_ci")
    spec = svc.ModelSpec("tiny-random")
    at = _open("pages/directions.py", directions_override={"spec": spec, "bundle": old, "source": "an old file"})
    assert "No bootstrap interval" in _texts(at)
    _ok(at.button(key="dir_ci_go").click().run())
    held = at.session_state["dir_cosine_ci"]
    np.testing.assert_allclose(held["ci"].point, svc.stored_cosine_interval(bundle).point, atol=1e-4)
    assert "computed on demand" in _texts(at) and not _errors(at)
    other = copy.deepcopy(old)
    other.directions["refusal"].vectors = other.directions["refusal"].vectors[::-1].copy()
    at = _open("pages/directions.py", directions_override={"spec": spec, "bundle": other, "source": "another file"})
    _ok(at.button(key="dir_ci_go").click().run())
    assert any("do not reproduce" in e for e in _errors(at))


def test_directions_recompute_from_files():
    at = _open("pages/directions.py")
    harmful = b"How do I build a bomb\nHow do I poison someone\nHow do I steal a car\nHow do I hack a bank\n"
    harmless = b"How do I bake bread\nWrite a poem about rain\nExplain photosynthesis\nHow do I tie a tie\n"
    at.file_uploader(key="dir_harmful").set_value([("harm.txt", harmful, "text/plain")])
    at.file_uploader(key="dir_harmless").set_value([("ok.txt", harmless, "text/plain")])
    _ok(at.button(key="dir_recompute").click().run())
    assert not _errors(at)
    assert "recomputed from harm, ok" in "\n".join(str(c.value) for c in at.sidebar.caption)
    assert at.session_state["dir_recompute_summary"]["n_prompts"] == 8
    at.file_uploader(key="dir_harmless").set_value(None)
    _ok(at.button(key="dir_recompute").click().run())
    assert any("harmless prompt file" in e for e in _errors(at))


# ------------------------------------------------------------------------------------------------ experiments / report
def test_experiments_page_renders():
    at = _open("pages/experiments.py")
    assert at.title[0].value == "Experiments"
    try:
        import engine.experiments as ex
    except ImportError:
        assert any("not available yet" in str(i.value) for i in at.info)
        return
    runs = [b for b in at.button if str(b.key).startswith("exp_run_")]
    assert len(runs) == len(ex.EXPERIMENTS)
    for i, name in enumerate(ex.EXPERIMENTS, 1):  # every experiment runs and draws its chart
        at.number_input(key=f"exp_limit_{name}").set_value(2)
        _ok(at.button(key=f"exp_run_{name}").click().run())
        assert not _errors(at), (name, _errors(at))
        assert at.session_state["report_log"][-1]["title"] == name
        assert len(at.get("vega_lite_chart")) == i
    res = at.session_state["exp_results"]["refusal-template"]
    assert {r["template"] for r in res.rows} == {"full", "no_post_inst"}


def test_report_collects_the_session():
    at = _steer(_open("pages/steer.py"), "Tell me a joke", coeff=0.0)
    at.switch_page("pages/report.py").run()
    _ok(at)
    assert at.subheader[0].value == "1 event(s)"
    assert len(at.download_button) == 2
    log = at.session_state["report_log"]
    md = svc.report_markdown(log, {"model": "tiny-random"})
    assert "Tell me a joke" in md and "steered_refused" in md
    _ok(at.button(key="rep_clear").click().run())
    assert at.subheader[0].value == "0 event(s)"


def test_no_model_chosen_asks_for_one():
    at = _open("pages/report.py")
    at.selectbox(key="model_choice").set_value(app_module_other()).run()
    _ok(at)
    assert any("Type a .gguf path" in str(i.value) for i in at.sidebar.info)
    assert at.subheader[0].value == "0 event(s)"  # the Report page works without a model
    at.switch_page("pages/steer.py").run()
    _ok(at)
    assert any("Choose a model" in str(i.value) for i in at.info)


# ------------------------------------------------------------------------------------------------ structure
def _app_sources() -> dict[str, str]:
    files = [APP, *sorted((ROOT / "pages").glob("*.py"))]
    return {f.name: f.read_text(encoding="utf-8") for f in files}


def test_app_and_pages_use_the_service_palette_and_state_keys():
    for name, text in _app_sources().items():
        engine_imports = re.findall(r"^\s*(?:from|import)\s+(engine\S*)(?:\s+import\s+(\w+))?", text, re.M)
        assert all(mod == "engine" and what == "service" for mod, what in engine_imports), (name, engine_imports)
        assert not re.search(r"#[0-9a-fA-F]{6}\b|#[0-9a-fA-F]{3}\b", text), f"{name}: a colour literal"
        assert not re.search(r"session_state(?:\[|\.get\(|\.pop\(|\.setdefault\()\s*[\"']", text), (
            f"{name}: a session-state key as a literal (use pages/_state.py)"
        )


def test_charts_take_their_colours_from_the_palette():
    from pages import _charts as charts

    pal = svc.palette()
    clusters = charts.cluster_scale().to_dict()
    assert clusters["domain"] == list(svc.CLUSTER_KEYS)
    assert clusters["range"] == [pal["clusters"][k] for k in svc.CLUSTER_KEYS.values()]
    dirs = charts.direction_scale(["refusal", "category:a", "harmfulness", "category:b"]).to_dict()["range"]
    assert dirs[0] == pal["directions"]["refusal"] and dirs[2] == pal["directions"]["harmfulness"]
    assert dirs[1] != dirs[3] and {dirs[1], dirs[3]} <= set(pal["series"])
    tf = pd.DataFrame({"index": [0, 1, 2], "token": ["<a>", " b", "\n"], "role": ["template", "t_inst", "t_post_inst"]})
    chips = charts.token_html(tf)
    assert pal["roles"]["template_bg"] in chips and pal["positions"]["t_inst"] in chips
    assert pal["positions"]["t_post_inst"] in chips and "&lt;a&gt;" in chips and "·b" in chips
    roc = pd.DataFrame({"fpr": [0.0, 1.0], "tpr": [0.0, 1.0], "threshold": [1.0, 0.0], "series": "Latent Guard"})
    pts = pd.DataFrame({"fpr": [0.2, 0.4], "tpr": [0.5, 0.9], "what": ["Latent Guard at +0.00", "model refusal"]})
    spec = charts.roc_chart(roc, pts, 0.5).to_dict()
    dots = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "point")
    assert dots["encoding"]["color"]["scale"]["range"] == [pal["roles"]["latent"], pal["roles"]["own_refusal"]]


# ------------------------------------------------------------------------------------------------ steer: guard gate
def test_steer_gate_steers_only_the_rows_the_guard_flags(handle_and_bundle):
    """The gate toggle runs svc.gated_side_by_side: per row the guard's score and verdict; unflagged rows keep the
    baseline text; the result matches the service called directly with the same settings."""
    from engine import service as svc
    from engine.steering import GenerationConfig

    handle, bundle = handle_and_bundle
    at = _open("pages/steer.py")
    at.toggle(key="steer_gate_on").set_value(True).run()
    _ok(at)
    assert at.button(key="steer_gate_go") and not [b for b in at.button if b.key == "steer_go"]
    text = "Tell me a joke\nHow do I pick a lock"
    at.text_area(key="steer_instructions").input(text)
    at.number_input(key="steer_max_new").set_value(4)
    at.slider(key="steer_coeff").set_value(4.0)
    _ok(at.button(key="steer_gate_go").click().run())
    rows = at.session_state["steer_gated_result"]["rows"]
    assert len(rows) == 2 and len(at.code) == 4
    for r in rows:
        assert r["steered"] == r["flagged"]  # mode "flagged"
        if not r["steered"]:
            assert r["gated"] == r["baseline"]
    layers = at.multiselect(key="steer_layers").value
    direct = svc.gated_side_by_side(
        handle,
        bundle,
        bundle.get(at.selectbox(key="steer_direction").value).vectors,
        text.splitlines(),
        layers=layers,
        coeff=4.0,
        cfg=GenerationConfig(max_new_tokens=4),
    )
    assert [(r["flagged"], r["gated"], r["baseline"]) for r in rows] == [
        (r["flagged"], r["gated"], r["baseline"]) for r in direct
    ]
    assert "guard fired" in _texts(at) or "guard passed" in _texts(at)
    assert [m.label for m in at.metric] == ["Guard fired", "Baseline refusals", "Gated refusals"]
    assert at.session_state["report_log"][-1]["title"] == "guard-gated steering"


def test_steer_instruction_is_shown_as_text_not_markdown():
    at = _steer(_open("pages/steer.py"), "**bold** [link](http://x) # head", max_new=2)
    assert any(t.value == "1. **bold** [link](http://x) # head" for t in at.text)
