"""Run every page inside app.py's navigation frame, even on a fresh server's first deep link.

Why this exists: Streamlit treats a ``pages/`` folder next to the entrypoint as its old directory-based navigation
until ``st.navigation`` has run once in the server process. On a fresh server the first request may be a deep link
(e.g. /inspect); Streamlit then runs that page file bare, without app.py's frame (no sidebar, no model picker, no
chosen model). AppTest resets the same flag before every run. :func:`require_frame` detects that legacy mode,
switches it off, runs app.py in place (which calls ``st.navigation``, and that runs the requested page inside the
frame), and stops the bare run.

Contract: every page calls ``require_frame()`` before anything else; app.py calls ``require_frame(is_frame=True)``
before ``st.set_page_config`` (it only switches the legacy mode off). Outside the legacy mode it does nothing.
tests/test_browser.py opens a deep link as a fresh server's first request to check this.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st

__all__ = ["APP", "require_frame"]

APP = Path(__file__).resolve().parent.parent / "app.py"


def require_frame(*, is_frame: bool = False) -> None:
    """Run the current page inside app.py's frame (see the module docstring); app.py passes ``is_frame=True``."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - a future Streamlit without the legacy mode
        return
    if not PagesManager.uses_pages_directory:
        return
    PagesManager.uses_pages_directory = False
    if is_frame:
        return
    try:
        from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

        ctx = get_script_run_ctx()
    except ImportError:  # pragma: no cover
        ctx = None
    if ctx is not None and hasattr(ctx, "run_with_active_hash"):
        # the frame's widgets must get the ids they get in a normal run (ids depend on the active script)
        with ctx.run_with_active_hash(ctx.pages_manager.main_script_hash):
            runpy.run_path(str(APP), run_name="__main__")
    else:  # pragma: no cover
        runpy.run_path(str(APP), run_name="__main__")
    st.stop()
