"""engine.service.limits: the row cap and the time budget of the app's long runs (one place, env overrides)."""

from __future__ import annotations

import threading
import time

import pytest

from engine.service import limits


def test_caps_read_the_environment_each_call(monkeypatch):
    monkeypatch.delenv(limits.MAX_ROWS_ENV, raising=False)
    monkeypatch.delenv(limits.MAX_RUN_S_ENV, raising=False)
    assert limits.max_rows() == limits.DEFAULT_MAX_ROWS and limits.max_run_s() == limits.DEFAULT_MAX_RUN_S
    monkeypatch.setenv(limits.MAX_ROWS_ENV, "7")
    monkeypatch.setenv(limits.MAX_RUN_S_ENV, "1.5")
    assert limits.max_rows() == 7 and limits.max_run_s() == 1.5
    for bad in ("0", "-3", "many", "nan", "inf", ""):
        monkeypatch.setenv(limits.MAX_ROWS_ENV, bad)
        assert limits.max_rows() == limits.DEFAULT_MAX_ROWS, bad


def test_cap_rows_says_how_many_were_dropped(monkeypatch):
    monkeypatch.setenv(limits.MAX_ROWS_ENV, "3")
    assert limits.cap_rows([1, 2, 3], "f.txt") == ([1, 2, 3], None)
    kept, msg = limits.cap_rows(list(range(10)), "f.txt")
    assert kept == [0, 1, 2] and msg is not None and "f.txt" in msg and "7 dropped" in msg
    assert limits.MAX_ROWS_ENV in msg
    limits.check_rows(3, "x")
    with pytest.raises(ValueError, match=r"4 prompts.*at most 3"):
        limits.check_rows(4, "x")


def test_run_chunked_stops_at_the_budget_and_keeps_finished_chunks():
    calls = []

    def fn(part):
        calls.append(part)
        time.sleep(0.02)
        return len(part)

    res = limits.run_chunked(list(range(100)), fn, limits.Budget(seconds=0.05), chunk=10)
    assert res.stopped and 0 < res.done < 100 and res.done == sum(res.results) == 10 * len(calls)
    full = limits.run_chunked(list(range(25)), fn, limits.Budget(seconds=60), chunk=10)
    assert not full.stopped and full.done == 25 and full.results == [10, 10, 5]
    with pytest.raises(ValueError):
        limits.run_chunked([1], fn, chunk=0)


def test_budget_guard_raises_a_one_line_value_error():
    seen = []
    cb = limits.Budget(seconds=1e-9).guard(lambda *a: seen.append(a), "Recomputing")
    with pytest.raises(limits.RunBudgetExceeded, match=r"Recomputing stopped.*time budget") as exc:
        cb("labels", 1, 10)
    assert seen == [("labels", 1, 10)] and isinstance(exc.value, ValueError) and "\n" not in str(exc.value)


def test_a_waiting_session_gets_the_lock_between_chunks():
    """Each chunk takes the (shared) lock; a second thread waiting on it runs before the chunked run ends."""
    lock = threading.RLock()
    order = []

    def fn(part):
        with lock:
            order.append("chunk")
            time.sleep(0.01)
        return part

    def other():
        with lock:
            order.append("other")

    t = threading.Thread(target=other)
    with lock:  # start the other thread while the first chunk would run
        t.start()
        time.sleep(0.01)
    limits.run_chunked(list(range(50)), fn, limits.Budget(seconds=60), chunk=5)
    t.join(5)
    assert "other" in order and order.index("other") < len(order) - 1
