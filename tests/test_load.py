"""Load and soak (issue 15), bounded, loopback only, on tiny-random.

- ``test_eight_sessions_steer_at_once``: one `streamlit run app.py` server (tests/test_browser.py's ``_serve``: a
  free port on 127.0.0.1, killed afterwards, its log must hold no "Traceback") and 8 Playwright contexts (8 browser
  sessions, separate cookies and Streamlit sessions). Each fills the Steer page with its own instruction and
  sign (Reverse), then all 8 press Generate within a moment of each other, so their runs overlap on the one
  shared model. Each session must show exactly its own baseline and steered texts: the engine's outputs for the same
  settings, computed sequentially in this process.
- ``test_soak_200_sequential_requests``: 200 Steer requests in a row through the service function the Steer page
  calls (``svc.steer_side_by_side``), in-process, with the resident set size measured after a warm-up and at the
  end; the growth must stay under ``SOAK_RSS_BOUND_MB``.

Both write their figures to test-output/load.json (gitignored) for RELIABILITY.md. The module is marked ``browser``
(skipped without /usr/bin/chromium or Playwright) and takes about a minute or two.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, OUT, _serve

from engine import service as svc

pytestmark = pytest.mark.browser
N_SESSIONS = 8
MAX_NEW = 48  # the Steer page's default (left as it is in the browser)
SOAK_N = 200
SOAK_RSS_BOUND_MB = 150.0
LAYER = 1  # svc.default_layer(3): the page's default on tiny-random


def _settings(i: int) -> tuple[str, float, bool]:
    """Session i's instruction, coefficient and sign. The coefficient stays at the page's default (1.0): Streamlit's
    slider thumb exposes no keyboard-focusable role to drive reliably; the sign (Reverse) and the text differ."""
    return f"Tell me something about topic number {i}", 1.0, i % 2 == 1


def _record(key: str, value: Any) -> None:
    OUT.mkdir(exist_ok=True)
    path = OUT / "load.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[key] = value
    path.write_text(json.dumps(doc, indent=1))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def tiny_service():
    handle = svc.load_handle("tiny-random")
    bundle, _ = svc.load_directions(handle)
    return handle, bundle


def _expected(handle: Any, bundle: Any, i: int) -> tuple[str, str]:
    text, coeff, reverse = _settings(i)
    settings = svc.SteerSettings("harmfulness", (LAYER,), coeff, reverse, "prompt", MAX_NEW)
    row = svc.steer_side_by_side(handle, bundle.get("harmfulness").vectors, [text], settings)[0]
    return row["baseline"], row["steered"]


def _shown(text: str) -> str:
    return (text if text.strip() else "(empty)").strip()


def _prepare_page(ctx: Any, url: str, i: int) -> Any:
    page = ctx.new_page()
    page.set_default_timeout(90_000)
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("heading", name="Steer").first.wait_for()
    page.get_by_role("button", name="Generate").wait_for()
    text, coeff, reverse = _settings(i)
    box = page.get_by_role("textbox", name="Instructions (one per line)")
    box.fill(text)
    box.press("Control+Enter")
    assert coeff == 1.0  # the slider is left at its default (see _settings)
    if reverse:
        page.get_by_text("Reverse (subtract)").click()
    page.wait_for_timeout(300)  # let the last widget change reach the server before Generate
    return page


def test_eight_sessions_steer_at_once(tmp_path: Path, tiny_service) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (install the Debian package: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    handle, bundle = tiny_service
    expected = [_expected(handle, bundle, i) for i in range(N_SESSIONS)]  # sequential, in this process
    cache = os.environ.get("STEERING_EXPLORER_CACHE")
    with _serve("tiny-random", cache, tmp_path) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            contexts = [browser.new_context(viewport={"width": 1280, "height": 900}) for _ in range(N_SESSIONS)]
            pages = [_prepare_page(ctx, url, i) for i, ctx in enumerate(contexts)]
            t0 = time.monotonic()
            for page in pages:  # all 8 start within a moment: their runs overlap on the shared model
                page.get_by_role("button", name="Generate").click()
            got = []
            for page in pages:
                page.get_by_text("Steered refusals").wait_for()
                outs = page.locator("[data-testid='stMain'] pre").all_inner_texts()
                assert not page.locator("[data-testid='stException']").count()
                got.append([o.strip() for o in outs])
            wall = time.monotonic() - t0
            for i, (outs, (base, steered)) in enumerate(zip(got, expected, strict=True)):
                assert outs == [_shown(base), _shown(steered)], (i, _settings(i), outs, (base, steered))
            assert len({tuple(o) for o in got}) > 1, "the sessions' settings should give different outputs"
        finally:
            browser.close()
    _record(
        "concurrent",
        {"sessions": N_SESSIONS, "max_new_tokens": MAX_NEW, "wall_s_all_results": round(wall, 2), "all_own": True},
    )


def test_soak_200_sequential_requests(tiny_service) -> None:
    handle, bundle = tiny_service
    vectors = bundle.get("harmfulness").vectors
    settings = [
        svc.SteerSettings("harmfulness", (LAYER,), 1.0 + (k % 4), k % 2 == 1, "prompt", MAX_NEW) for k in range(4)
    ]

    def request(k: int) -> None:
        rows = svc.steer_side_by_side(handle, vectors, [f"Soak request {k}: tell me a fact"], settings[k % 4])
        assert len(rows) == 1 and isinstance(rows[0]["steered"], str)

    soak_new = 8
    settings = [dataclasses.replace(s, max_new_tokens=soak_new) for s in settings]
    for k in range(10):  # warm-up: allocator pools, tokenizer caches
        request(k)
    gc.collect()
    start = _rss_mb()
    t0 = time.monotonic()
    for k in range(SOAK_N):
        request(k)
    seconds = time.monotonic() - t0
    gc.collect()
    end = _rss_mb()
    _record(
        "soak",
        {
            "requests": SOAK_N,
            "max_new_tokens": soak_new,
            "rss_start_mb": round(start, 1),
            "rss_end_mb": round(end, 1),
            "growth_mb": round(end - start, 1),
            "seconds": round(seconds, 1),
        },
    )
    assert end - start < SOAK_RSS_BOUND_MB, (start, end)
