"""The UMAP warm-up (engine.service.maps.warm_up_umap) and its start from app.py: once per process, in a daemon
thread that never blocks the app and never raises."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.service import maps

APP = Path(__file__).resolve().parent.parent / "app.py"


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget this process's warm-up thread for the test (and restore it afterwards)."""
    monkeypatch.setattr(maps, "_warm_thread", None)
    monkeypatch.delenv(maps.WARMUP_ENV, raising=False)


def test_warm_up_runs_in_a_daemon_thread_without_blocking(fresh):
    release, started = threading.Event(), threading.Event()

    def slow_fit() -> None:
        started.set()
        release.wait(30)

    t0 = time.perf_counter()
    th = maps.warm_up_umap(slow_fit)
    assert time.perf_counter() - t0 < 1.0
    assert th is not None and th.daemon and th.name == "umap-warm-up"
    assert started.wait(10) and th.is_alive()
    assert maps.warm_up_umap(slow_fit) is th  # once per process
    release.set()
    th.join(10)
    assert not th.is_alive()


def test_a_failing_warm_up_is_one_log_line(fresh, caplog):
    def broken() -> None:
        raise RuntimeError("no numba here")

    with caplog.at_level(logging.WARNING, logger=maps.__name__):
        th = maps.warm_up_umap(broken)
        assert th is not None
        th.join(10)
    lines = [r for r in caplog.records if r.name == maps.__name__]
    assert len(lines) == 1 and "no numba here" in lines[0].getMessage()


@pytest.mark.parametrize("value", ["0", "off"])
def test_the_warm_up_can_be_turned_off(fresh, monkeypatch, value):
    monkeypatch.setenv(maps.WARMUP_ENV, value)
    assert maps.warm_up_umap(lambda: None) is None


def test_the_warm_up_waits_for_the_thread_it_follows(fresh):
    go = threading.Event()
    before = threading.Thread(target=go.wait, args=(60,), daemon=True)
    before.start()
    calls: list[int] = []
    th = maps.warm_up_umap(lambda: calls.append(1), after=before)
    assert th is not None
    time.sleep(0.3)
    assert not calls and th.is_alive()  # still waiting for `before`
    go.set()
    th.join(10)
    assert calls == [1]


def test_the_warm_up_fit_uses_the_real_umap_path():
    pytest.importorskip("umap")
    maps._warm_fit()  # compiles (or reuses) the same kernels a map uses; must not raise


def test_the_app_starts_the_warm_up_and_does_not_wait_for_it(fresh, monkeypatch):
    from streamlit.runtime.pages_manager import PagesManager

    orig = PagesManager.__init__

    def init(self: PagesManager, *args: object, **kwargs: object) -> None:  # as in tests/test_app.py
        orig(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)
    monkeypatch.setenv("STEERING_EXPLORER_MODEL", "tiny-random")
    release = threading.Event()
    calls: list[int] = []

    def blocked_fit() -> None:
        calls.append(1)
        release.wait(60)

    monkeypatch.setattr(maps, "_warm_fit", blocked_fit)
    try:
        at = AppTest.from_file(str(APP), default_timeout=90).run()
        assert not at.exception
        assert any(b.label == "Generate" for b in at.button)  # the Steer page rendered
        th = maps._warm_thread
        assert th is not None and th.is_alive()  # the app finished its run while the warm-up still runs
        from engine.service import models as svc_models

        assert svc_models._pack_threads  # and it started packing the model's weights for generation
        at.run()
        deadline = time.monotonic() + 60
        while not calls and time.monotonic() < deadline:  # it starts once the weights are packed
            time.sleep(0.05)
        assert maps._warm_thread is th and len(calls) == 1  # a rerun starts no second warm-up
    finally:
        release.set()
    th.join(10)
