"""One real-browser test of the main flow: the app served by `streamlit run`, driven by headless Chromium.

- Uses Playwright for Python as a driver only, with the system Chromium (/usr/bin/chromium, the Debian package);
  no browser is downloaded. Skipped with a reason when Chromium or Playwright is missing.
- The server runs `app.py` on tiny-random (STEERING_EXPLORER_MODEL) on a free port bound to 127.0.0.1 and is
  killed at the end. Screenshots go to test-output/; with SAVE_SCREENSHOTS=1 they are also copied to
  docs/screenshots/ (steer.png, clusters.png) for the README.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
OUT = ROOT / "test-output"
DOCS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer {url}/_stcore/health within {timeout:.0f} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ)
    env.update(
        STEERING_EXPLORER_MODEL="tiny-random",
        STEERING_EXPLORER_CACHE=env.get("STEERING_EXPLORER_CACHE") or str(tmp_path_factory.mktemp("cache")),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(ROOT / "app.py"),
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, f"the server logged a traceback:\n{text[-4000:]}"


def _save(page, name: str) -> Path:
    """Screenshot the whole page: Streamlit scrolls inside its main container, so grow the viewport to fit."""
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    height = page.evaluate(
        'Math.max(...[...document.querySelectorAll(\'[data-testid="stMain"], [data-testid="stMainBlockContainer"]\')]'
        ".map(e => e.scrollHeight), 800)"
    )
    page.set_viewport_size({"width": 1440, "height": min(int(height) + 40, 4000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 1000})
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / name)
    return path


def test_steer_and_clusters_in_chromium(server: str) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (install the Debian package: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

    with tempfile.TemporaryDirectory(prefix="se-chromium-") as profile, sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1000},
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(120_000)
            # a deep link as the fresh server's first request: the page must still open inside app.py's frame
            page.goto(server.rstrip("/") + "/inspect", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Inspect").first.wait_for()
            page.locator("[data-testid='stSidebar']").get_by_text("3 blocks", exact=False).first.wait_for()
            page.get_by_role("link", name="Steer").first.click()

            # Steer: enter an instruction, generate, see both outputs with their refusal marks
            page.get_by_role("heading", name="Steer").first.wait_for()
            box = page.get_by_role("textbox", name="Instructions (one per line)")
            box.fill("Write a short poem about the ocean.")
            box.press("Control+Enter")  # commit the text area's value before the click
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("Baseline", exact=True).first.wait_for()
            page.get_by_text("Steered refusals").wait_for()
            outputs = page.locator("[data-testid='stMain'] pre")
            assert outputs.count() == 2, f"expected one baseline and one steered output, found {outputs.count()}"
            assert all(t.strip() for t in outputs.all_inner_texts())
            marks = page.get_by_text("refused", exact=True).count() + page.get_by_text("answered", exact=True).count()
            assert marks >= 2
            assert not page.locator("[data-testid='stException']").count()
            _save(page, "steer.png")

            # Clusters: the two maps render as Vega charts
            page.get_by_role("link", name="Clusters").first.click()
            page.get_by_role("heading", name="Clusters").first.wait_for()
            page.wait_for_function(
                'document.querySelectorAll(\'[data-testid="stVegaLiteChart"] canvas, '
                '[data-testid="stVegaLiteChart"] svg.marks\').length >= 2',
                timeout=180_000,
            )
            page.get_by_text("Nearest-centroid accuracy").first.wait_for()
            assert not page.locator("[data-testid='stException']").count()
            page.wait_for_timeout(1000)  # let the charts finish drawing
            _save(page, "clusters.png")
        except Exception:
            for pg in ctx.pages:
                try:
                    _save(pg, "failure.png")
                except Exception:
                    pass
            raise
        finally:
            ctx.close()


def test_steer_ablation_draws_the_trace_chart(server: str) -> None:
    """One ablation on the Steer page: the operation selector, the generation, and the per-token trace chart."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (install the Debian package: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

    with tempfile.TemporaryDirectory(prefix="se-chromium-") as profile, sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1000},
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(120_000)
            page.goto(server.rstrip("/") + "/", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Steer").first.wait_for()
            page.locator("[data-testid='stMain']").get_by_text("ablate", exact=True).first.click()
            page.get_by_text("Ablate at", exact=True).wait_for()  # the ablation controls replaced the coefficient
            box = page.get_by_role("textbox", name="Instructions (one per line)")
            box.fill("Write a short poem about the ocean.")
            box.press("Control+Enter")
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("Steered refusals").wait_for()
            page.get_by_text("Ablated: harmfulness", exact=False).first.wait_for()
            page.wait_for_function(
                'document.querySelectorAll(\'[data-testid="stVegaLiteChart"] canvas, '
                '[data-testid="stVegaLiteChart"] svg.marks\').length >= 1',
                timeout=120_000,
            )
            # the trace chart's legend names both directions and both columns
            legend = page.locator("[data-testid='stVegaLiteChart']").first
            legend.get_by_text("harmfulness", exact=True).first.wait_for()
            legend.get_by_text("steered", exact=True).first.wait_for()
            assert page.locator("[data-testid='stMain'] pre").count() == 2
            assert not page.locator("[data-testid='stException']").count()
            page.wait_for_timeout(800)
            _save(page, "steer-ablation.png")
        except Exception:
            for pg in ctx.pages:
                try:
                    _save(pg, "failure-ablation.png")
                except Exception:
                    pass
            raise
        finally:
            ctx.close()
