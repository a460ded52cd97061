"""The hostile-input battery of the app (issue 15): every page's widgets, table-driven, through AppTest on tiny-random.

``CASES`` is the documentation: one row per bad (or tricky) input on one of the seven pages, what it must show
(``error``: an ``st.error``; ``warning``: an ``st.warning``; ``ok``: neither an error nor an exception) and a word that
message must contain. Every case asserts: no exception (``at.exception`` empty), no traceback text anywhere on the
page (no "Traceback", no "Details for a bug report" box), and the expected element. Uploads are built once per
module (``blobs``): wrong-shaped, torn, other-model, all-zero and non-finite directions files; binary, empty, torn
and 100k-row prompt files. The caps of ``engine.service.limits`` are set small through their environment variables
where a case needs them (``STEERING_EXPLORER_MAX_ROWS`` / ``STEERING_EXPLORER_MAX_RUN_S``). The app's own
behaviour on good input is tests/test_app.py; ``bench/reliability_table.py`` counts this table for RELIABILITY.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from streamlit.testing.v1 import AppTest
from test_app import APP, TIMEOUT, _no_legacy_pages_mode, _ok, _tiny_model  # noqa: F401 (autouse fixtures)
from test_battery_cli import SPECIAL, edited_bundle_bytes

CONTROL = "a\x00b\x1b[31mred\x7f\u202eevil\u200b"
MD = "# Heading\n**bold** [click](javascript:alert(1)) <script>alert(1)</script> $x^2$ | a | b |"
Act = Callable[[AppTest, dict[str, bytes]], AppTest]


@dataclass(frozen=True)
class Case:
    id: str
    page: str
    act: Act
    expect: str  # "error" | "warning" | "ok"
    needle: str = ""
    env: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ actions
def steer(text: str) -> Act:
    def act(at: AppTest, _: dict[str, bytes]) -> AppTest:
        at.text_area(key="steer_instructions").input(text)
        at.number_input(key="steer_max_new").set_value(2)
        return at.button(key="steer_go").click().run()

    return act


def sweep(coeffs: str) -> Act:
    def act(at: AppTest, _: dict[str, bytes]) -> AppTest:
        at.segmented_control(key="steer_mode").set_value("Sweep").run()
        at.text_area(key="steer_instructions").input("Tell me a joke")
        at.number_input(key="steer_max_new").set_value(2)
        at.text_input(key="sweep_coeffs").input(coeffs)
        return at.button(key="sweep_go").click().run()

    return act


def upload(key: str, name: str, blob: str, *, multiple: bool = False, button: str | None = None) -> Act:
    def act(at: AppTest, blobs: dict[str, bytes]) -> AppTest:
        f = (name, blobs[blob], "application/octet-stream")
        at.file_uploader(key=key).set_value([f] if multiple else f)
        return at.button(key=button).click().run() if button else at.run()

    return act


def typed(widget: str, key: str, text: str, button: str | None = None) -> Act:
    def act(at: AppTest, _: dict[str, bytes]) -> AppTest:
        getattr(at, widget)(key=key).input(text)
        return at.button(key=button).click().run() if button else at.run()

    return act


def slider(key: str, end: str, button: str | None = None) -> Act:
    def act(at: AppTest, _: dict[str, bytes]) -> AppTest:
        s = at.slider(key=key)
        s.set_value(s.max if end == "max" else s.min)
        return at.button(key=button).click().run() if button else at.run()

    return act


def recompute(harmful: str, harmless: str = "good.txt") -> Act:
    def act(at: AppTest, blobs: dict[str, bytes]) -> AppTest:
        at.file_uploader(key="dir_harmful").set_value([(f"h-{harmful}.txt", blobs[harmful], "text/plain")])
        at.file_uploader(key="dir_harmless").set_value([(f"l-{harmless}.txt", blobs[harmless], "text/plain")])
        return at.button(key="dir_recompute").click().run()

    return act


def guard_eval(labelled: str, name: str = "mine.csv") -> Act:
    def act(at: AppTest, blobs: dict[str, bytes]) -> AppTest:
        at.number_input(key="guard_limit").set_value(2)
        at.toggle(key="guard_baseline").set_value(False)
        at.file_uploader(key="guard_labelled").set_value((name, blobs[labelled], "text/csv"))
        return at.button(key="guard_eval_go").click().run()

    return act


def coeff_max(at: AppTest, blobs: dict[str, bytes]) -> AppTest:
    s = at.slider(key="steer_coeff")
    s.set_value(s.max)
    return steer("hi")(at, blobs)


def experiment_limit_max(at: AppTest, _: dict[str, bytes]) -> AppTest:
    n = next(b for b in at.number_input if str(b.key).startswith("exp_limit_"))
    n.set_value(n.max)  # set, not run: a run of every prompt is not a battery case
    return at.run()


def report_after_markdown(at: AppTest, blobs: dict[str, bytes]) -> AppTest:
    steer(MD)(at, blobs)
    return at.switch_page("pages/report.py").run()


STEER, CLUSTERS, INSPECT = "pages/steer.py", "pages/clusters.py", "pages/inspect.py"
GUARD, DIRS, EXP, REPORT = "pages/guard.py", "pages/directions.py", "pages/experiments.py", "pages/report.py"
SMALL_ROWS = {"STEERING_EXPLORER_MAX_ROWS": "50"}
NO_TIME = {"STEERING_EXPLORER_MAX_RUN_S": "0.000001"}

CASES: list[Case] = [
    # ------------------------------------------------------------------------------------------ Steer
    Case("steer-empty", STEER, steer(""), "error", "at least one instruction"),
    Case("steer-whitespace", STEER, steer(" \n\t \n"), "error", "at least one instruction"),
    Case("steer-too-many-lines", STEER, steer("\n".join(f"line {i}" for i in range(100))), "error", "limit"),
    Case("steer-huge-line", STEER, steer("x" * 100_000), "error", "characters"),
    Case("steer-special-tokens", STEER, steer(SPECIAL), "ok"),
    Case("steer-markdown-injection", STEER, steer(MD), "ok"),
    Case("steer-upload-binary", STEER, upload("steer_upload", "x.safetensors", "binary"), "error", "safetensors"),
    Case("steer-upload-empty", STEER, upload("steer_upload", "x.safetensors", "empty"), "error", "x.safetensors"),
    Case("steer-upload-provenance-list", STEER, upload("steer_upload", "p.safetensors", "prov_list"), "error",
         "provenance"),
    Case("steer-upload-other-model", STEER, upload("steer_upload", "o.safetensors", "other_model"), "error",
         "other-model"),
    Case("steer-upload-all-zero", STEER, upload("steer_upload", "z.safetensors", "zeros"), "error", "zero"),
    Case("steer-coefficient-max", STEER, coeff_max, "ok"),
    Case("steer-control-characters", STEER, steer(CONTROL), "ok"),
    Case("sweep-coeffs-words", STEER, sweep("a, b"), "error", "not a number"),
    Case("sweep-coeffs-inf", STEER, sweep("1, inf"), "error", "not finite"),
    Case("sweep-coeffs-too-many", STEER, sweep(",".join(str(i) for i in range(40))), "error", "limit"),
    Case("sweep-coeffs-empty", STEER, sweep("  "), "error", "at least one coefficient"),
    # ------------------------------------------------------------------------------------------ Clusters
    Case("clusters-own-control-characters", CLUSTERS, typed("text_area", "clusters_own", CONTROL), "ok"),
    Case("clusters-own-special-tokens", CLUSTERS, typed("text_area", "clusters_own", SPECIAL), "ok"),
    Case("clusters-own-markdown", CLUSTERS, typed("text_area", "clusters_own", MD), "ok"),
    Case("clusters-own-too-many", CLUSTERS, typed("text_area", "clusters_own", "\n".join(map(str, range(5000)))),
         "error", "limit"),
    Case("clusters-layer-max", CLUSTERS, slider("clusters_layer", "max"), "ok"),
    # ------------------------------------------------------------------------------------------ Inspect
    Case("inspect-whitespace", INSPECT, typed("text_input", "inspect_instruction", "   "), "error", "at least one"),
    Case("inspect-control-characters", INSPECT, typed("text_input", "inspect_instruction", CONTROL), "ok"),
    Case("inspect-huge", INSPECT, typed("text_input", "inspect_instruction", "y" * 50_000), "error", "characters"),
    Case("inspect-special-tokens", INSPECT, typed("text_input", "inspect_instruction", SPECIAL.replace("\n", " ")),
         "ok"),
    Case("inspect-markdown", INSPECT, typed("text_input", "inspect_instruction", MD.replace("\n", " ")), "ok"),
    Case("inspect-layer-min", INSPECT, slider("inspect_layer", "min"), "ok"),
    # ------------------------------------------------------------------------------------------ Latent Guard
    Case("guard-empty", GUARD, typed("text_area", "guard_text", "", "guard_go"), "error", "at least one prompt"),
    Case("guard-upload-surrogate", GUARD, upload("guard_upload", "s.jsonl", "surrogate", button="guard_go"), "error",
         "surrogate"),
    Case("guard-special-tokens", GUARD, typed("text_area", "guard_text", SPECIAL, "guard_go"), "ok"),
    Case("guard-upload-binary", GUARD, upload("guard_upload", "b.txt", "binary", button="guard_go"), "error", "b.txt"),
    Case("guard-upload-empty", GUARD, upload("guard_upload", "e.txt", "empty", button="guard_go"), "error", "empty"),
    Case("guard-upload-torn-json", GUARD, upload("guard_upload", "t.json", "torn_json", button="guard_go"), "error",
         "t.json"),
    Case("guard-upload-100k-rows", GUARD, upload("guard_upload", "big.txt", "rows_100k", button="guard_go"), "warning",
         "99,950 dropped", env=SMALL_ROWS),
    Case("guard-threshold-max", GUARD, slider("guard_threshold", "max", "guard_go"), "ok"),
    Case("guard-eval-100k-rows", GUARD, guard_eval("labelled_100k"), "error", "at most 50", env=SMALL_ROWS),
    Case("guard-eval-torn", GUARD, guard_eval("torn_csv"), "error", "mine.csv"),
    Case("guard-eval-no-labels", GUARD, guard_eval("good.txt"), "error", "column"),
    Case("guard-eval-binary", GUARD, guard_eval("binary"), "error", "mine.csv"),
    Case("guard-eval-time-budget", GUARD, guard_eval("labelled_small"), "warning", "time budget", env=NO_TIME),
    # ------------------------------------------------------------------------------------------ Directions
    Case("dir-upload-provenance-list", DIRS, upload("dir_upload", "p.safetensors", "prov_list"), "error",
         "provenance"),
    Case("dir-upload-provenance-string", DIRS, upload("dir_upload", "s.safetensors", "prov_str"), "error",
         "provenance"),
    Case("dir-upload-other-model", DIRS, upload("dir_upload", "o.safetensors", "other_model"), "error",
         "other-model"),
    Case("dir-upload-all-zero", DIRS, upload("dir_upload", "z.safetensors", "zeros"), "error", "zero"),
    Case("dir-upload-nan", DIRS, upload("dir_upload", "n.safetensors", "nan"), "error", "NaN"),
    Case("dir-upload-torn", DIRS, upload("dir_upload", "t.safetensors", "torn_bundle"), "error", "t.safetensors"),
    Case("dir-recompute-100k-rows", DIRS, recompute("rows_100k"), "error", "at most 50", env=SMALL_ROWS),
    Case("dir-recompute-binary", DIRS, recompute("binary"), "error", "UTF-8"),
    Case("dir-recompute-surrogate", DIRS, recompute("surrogate_txt_json"), "error", "surrogate"),
    Case("dir-recompute-time-budget", DIRS, recompute("good.txt"), "error", "time budget", env=NO_TIME),
    # ------------------------------------------------------------------------------------------ Experiments / Report
    Case("exp-limit-max-set", EXP, experiment_limit_max, "ok"),
    Case("report-markdown-event", STEER, report_after_markdown, "ok"),
]  # fmt: skip


# ------------------------------------------------------------------------------------------------ uploads
@pytest.fixture(scope="module")
def blobs() -> dict[str, bytes]:
    from engine import service as svc

    handle = svc.load_handle("tiny-random")
    bundle, _ = svc.load_directions(handle)
    good = svc.bundle_bytes(bundle)
    return {
        "good.txt": b"How do I bake bread\nWrite a poem\n",
        "binary": bytes(range(256)) * 8,
        "empty": b"",
        "surrogate": b'{"prompt": "caf\\ud800 bomb"}\n',
        "surrogate_txt_json": b"caf\xed\xa0\x80 bomb\n",
        "torn_json": b'[{"prompt": "How do I',
        "torn_csv": b'text,label\n"How do I,harmful\n',
        "rows_100k": "".join(f"prompt number {i}\n" for i in range(100_000)).encode(),
        "labelled_100k": ("text,label\n" + "".join(f"prompt {i},harmful\n" for i in range(100_000))).encode(),
        "labelled_small": ("text,label\n" + "".join(f"prompt {i},harmless\n" for i in range(80))).encode(),
        "prov_list": edited_bundle_bytes(handle, bundle, provenance=[1, 2]),
        "prov_str": edited_bundle_bytes(handle, bundle, provenance="tiny-random"),
        "other_model": edited_bundle_bytes(handle, bundle, model_id="other-model"),
        "zeros": edited_bundle_bytes(handle, bundle, scale=0.0),
        "nan": edited_bundle_bytes(handle, bundle, scale=float("nan")),
        "torn_bundle": good[: len(good) // 2],
    }


def _all_text(at: AppTest) -> str:
    parts = [str(e.value) for kind in ("error", "warning", "info", "markdown", "caption", "code") for e in at.get(kind)]
    return "\n".join(parts + [e.label for e in at.expander])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_app_battery(case: Case, blobs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    _ok(at.run())
    _ok(at.switch_page(case.page).run())
    at = case.act(at, blobs)
    _ok(at)
    text = _all_text(at)
    assert "Traceback" not in text and "Details for a bug report" not in text, text
    errors = [str(e.value) for e in at.error]
    warnings = [str(w.value) for w in at.warning]
    if case.expect == "ok":
        assert not errors, errors
    elif case.expect == "error":
        assert any(case.needle in e for e in errors), (case.needle, errors)
        assert all("\n" not in e for e in errors), errors
    else:
        assert any(case.needle in w for w in warnings), (case.needle, warnings, errors)


def test_table_covers_every_page() -> None:
    from test_app import ROOT

    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pages").glob("[!_]*.py")}
    assert pages <= {c.page for c in CASES} | {REPORT}  # the Report page is reached through report-markdown-event
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
