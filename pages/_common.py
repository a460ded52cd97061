"""Shared Streamlit plumbing for the pages: cached model and directions, progress, errors, the report log.

Charts live in pages/_charts.py, the frame workaround in pages/_frame.py, session-state keys in pages/_state.py;
like every page, this module imports the engine only through ``engine.service``.

Caching (see the design notes):
- ``get_handle(spec)`` is an ``st.cache_resource``: one loaded model per spec, shared by every session; every hooked
  run inside the engine takes ``handle.lock``.
- Per-model shared state that needs a progress bar while it is built (the direction bundle, the captures of the
  built-in prompts) lives in a :class:`Slot` from ``st.cache_resource``: the first session fills it under the
  slot's lock while showing progress; everyone else reuses it. Caching the slow function itself would make
  Streamlit replay its progress widgets on every cache hit.
- Derived data (projections, scores) are ``st.cache_data`` in the pages, keyed by small hashable values.
- ``st.session_state`` holds small per-session things only: the chosen spec, uploaded directions (CPU numpy), results
  to redraw, and the report log.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from engine import service as svc
from pages import _state as state

MAX_LOG = 200


@dataclass
class Slot:
    """A per-model shared value, filled once under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    value: Any = None
    source: str = ""
    token: str = ""


def _env_key() -> tuple[str, str]:
    # the cache and assets folders change what gets computed (tests point them at temporary folders)
    return os.environ.get("STEERING_EXPLORER_CACHE", ""), os.environ.get("STEERING_EXPLORER_ASSETS", "")


@st.cache_resource(show_spinner=False)
def _slot(kind: str, spec: svc.ModelSpec, env: tuple[str, str]) -> Slot:
    return Slot()


@st.cache_resource(show_spinner="Loading the model (first use only) …", max_entries=2)
def get_handle(spec: svc.ModelSpec) -> svc.ModelHandle:
    return svc.load_model(spec)


def current_spec() -> svc.ModelSpec:
    spec = st.session_state.get(state.SPEC)
    return spec if isinstance(spec, svc.ModelSpec) else svc.ModelSpec(svc.default_model_name())


def spec_key(spec: svc.ModelSpec) -> tuple[str, str, str]:
    """A small hashable cache key for ``st.cache_data``."""
    return (spec.name, spec.device, spec.dtype)


def progress_reporter(container: Any, what: str) -> Callable[..., None]:
    """A callback for engine progress, ``cb(stage, done, total)`` (engine.progress.Progress)."""
    bar = container.progress(0.0, text=f"{what} …")

    def cb(stage: str, done: int, total: int) -> None:
        label = f"{what}: {stage} {done}/{total}"
        frac = float(done) / float(total) if total else 1.0
        bar.progress(min(max(frac, 0.0), 1.0), text=label)

    return cb


def _fill(slot: Slot, label: str, build: Callable[[Callable[..., None]], tuple[Any, str]]) -> Slot:
    if slot.value is not None:
        return slot
    with slot.lock:
        if slot.value is None:
            with st.status(label, expanded=True) as status:
                value, source = build(progress_reporter(st, label))
                status.update(label=f"{label}: done", state="complete", expanded=False)
            slot.value, slot.source = value, source
            slot.token = f"{id(value):x}-{_dt.datetime.now().timestamp():.0f}"
    return slot


def shared_bundle(spec: svc.ModelSpec, handle: svc.ModelHandle) -> tuple[svc.DirectionBundle, str]:
    """The model's default directions (shared by all sessions; computed with progress on first use)."""
    slot = _slot("directions", spec, _env_key())
    _fill(slot, "Preparing the harmfulness and refusal directions", lambda cb: svc.load_directions(handle, progress=cb))
    return slot.value, slot.source


def active_bundle(spec: svc.ModelSpec, handle: svc.ModelHandle) -> tuple[svc.DirectionBundle, str]:
    """This session's directions: an uploaded or recomputed bundle for this model, else the shared default."""
    ov = st.session_state.get(state.OVERRIDE)
    if ov and ov.get("spec") == spec:
        return ov["bundle"], ov["source"]
    return shared_bundle(spec, handle)


def set_override(spec: svc.ModelSpec, bundle: svc.DirectionBundle, source: str) -> None:
    st.session_state[state.OVERRIDE] = {"spec": spec, "bundle": bundle, "source": source}


def clear_override() -> None:
    st.session_state.pop(state.OVERRIDE, None)


def reference(spec: svc.ModelSpec, handle: svc.ModelHandle) -> tuple[svc.Reference, str]:
    """Hidden states of the labelled built-in prompts at both positions (captured once per model)."""
    slot = _slot("reference", spec, _env_key())
    _fill(
        slot,
        "Capturing the built-in prompts at t_inst and t_post_inst",
        lambda cb: (svc.build_reference(handle, progress=cb), "built-in train split"),
    )
    return slot.value, slot.token


@dataclass
class Ctx:
    spec: svc.ModelSpec
    handle: svc.ModelHandle
    bundle: svc.DirectionBundle
    source: str

    @property
    def key(self) -> tuple[str, str, str]:
        return spec_key(self.spec)

    @property
    def bundle_key(self) -> str:
        return svc.bundle_key(self.bundle)


def require_model() -> Ctx:
    """The loaded model and this session's directions, or an error message and ``st.stop()``."""
    if state.SPEC in st.session_state and st.session_state[state.SPEC] is None:
        st.info("Choose a model in the sidebar: `default`, `tiny-random`, a Hugging Face id or a local folder.")
        st.stop()
    spec = current_spec()
    err = st.session_state.get(state.MODEL_ERROR)
    if err:
        st.error(f"The model {spec.name!r} could not be loaded: {err}")
        st.info("Pick another model in the sidebar (`tiny-random` always works).")
        st.stop()
    try:
        handle = get_handle(spec)
        bundle, source = active_bundle(spec, handle)
    except svc.USER_ERRORS as exc:
        st.error(str(exc))
        st.stop()
    except Exception as exc:  # e.g. out of memory while computing the directions
        st.error(f"Could not prepare {spec.name!r} ({type(exc).__name__}): {exc}")
        st.stop()
    return Ctx(spec, handle, bundle, source)


@contextlib.contextmanager
def errors_shown() -> Iterator[None]:
    """Show engine and input errors as ``st.error`` (the message only); anything else with details collapsed."""
    try:
        yield
    except svc.USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        st.error(str(msg))
    except Exception as exc:
        st.error(f"Unexpected error ({type(exc).__name__}): {exc}")
        with st.expander("Details for a bug report"):
            st.code("".join(traceback.format_exception(exc)), language=None)


def log_event(
    page: str,
    title: str,
    *,
    settings: dict[str, Any] | None = None,
    rows: Any = None,
    chart: Any = None,
    summary: dict[str, Any] | None = None,
) -> None:
    """Append an event to this session's report log (read by the Report page)."""
    log = st.session_state.setdefault(state.LOG, [])
    log.append(
        {
            "page": page,
            "title": title,
            "time": _dt.datetime.now().isoformat(timespec="seconds"),
            "settings": settings or {},
            "summary": summary or {},
            "rows": rows,
            "chart": chart,
        }
    )
    del log[:-MAX_LOG]


def page_header(title: str, claim: str, look_for: str, *, claim_label: str = "Paper") -> None:
    """Title plus the two captions every page carries: the paper's claim and what to look for."""
    st.title(title)
    st.caption(f"**{claim_label}:** {claim}")
    st.caption(f"**Look for:** {look_for}")


def refusal_badge(refused: bool) -> str:
    return ":red-badge[refused]" if refused else ":green-badge[answered]"


def fmt_layers(layers: Any) -> str:
    layers = list(layers)
    return f"layer {layers[0]}" if len(layers) == 1 else "layers " + ", ".join(str(x) for x in layers)
