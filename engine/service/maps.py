"""The Clusters and Inspect pages: reference captures, 2-D cluster maps, separation, one instruction's inspection.

Contract:
- A :class:`Reference` holds the labelled built-in train prompts (records from ``engine.clusters``, saved beside
  the bundle or labelled now) and their hidden states ``acts`` (n, 2, L+1, d) CPU float32 at ``POSITIONS``
  (t_inst, t_post_inst); ``Reference.at(position, layer)`` slices it (``ValueError`` for a bad position or layer).
  ``build_reference`` reads the capture from the user cache when it has it (``engine.refcache``: keyed by weights,
  template, records, dtype, engine version; ``Reference.cached`` says so) and writes it there after capturing.
- Maps: ``cluster_map`` projects the prompts at (layer, position) to 2-D (UMAP or PCA, seeded) and places the user's
  prompts into the same map; its frame has x, y, cluster (display text, see ``core.CLUSTER_KEYS``), instruction,
  set, category, source ("built-in" or "yours"). ``separation`` is the in-sample nearest-centroid accuracy.
- Inspect: ``inspect_instruction`` captures every token of one instruction (``Inspection.acts`` (n_tokens, L+1, d))
  with its per-layer beliefs s_l and Delta scores; ``token_frame``, ``belief_frame`` (series ``BELIEF_SERIES``),
  ``token_projection_frame``, ``reference_deltas`` and ``delta_point`` are the frames the page draws.
- ``warm_up_umap()`` (called by app.py after the first page's run) imports umap and compiles its numba code once per
  process in a daemon thread (a fit + transform of tiny random data through ``fit_projection``, the thread at the
  lowest CPU priority where the OS allows it), so a UMAP map asked for after it takes ~1 s instead of ~20 s. The
  warm-up takes ~23 s (2 cores) in the first process ever; numba's compiled code is then kept in the user cache
  (``engine.umapcache``) and later processes need ~3-4 s. It never blocks and never raises: a failure is one log
  line. ``STEERING_EXPLORER_UMAP_WARMUP=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..capture import capture, capture_tokens
from ..clusters import label_records, prompt_records
from ..directions import DirectionBundle, DirectionSet, belief_scores, cosine, delta
from ..models import ModelHandle
from ..positions import PromptPositions
from ..precompute import builtin_sources, load_records
from ..progress import Progress, staged
from ..refcache import cached_capture
from .core import CLUSTER_LABELS, POSITIONS, YOUR_PROMPTS

__all__ = [
    "BELIEF_SERIES",
    "Inspection",
    "Reference",
    "belief_frame",
    "build_reference",
    "capture_instructions",
    "cluster_map",
    "delta_point",
    "inspect_instruction",
    "reference_deltas",
    "separation",
    "token_frame",
    "token_projection_frame",
    "warm_up_umap",
]

log = logging.getLogger(__name__)

# the two belief curves of the Inspect page, by the direction whose centroids they use
BELIEF_SERIES: dict[str, str] = {
    "harmfulness": "harmfulness belief at t_inst",
    "refusal": "refusal belief at t_post_inst",
}


@dataclass
class Reference:
    """Labelled built-in prompts and their hidden states ``acts`` (n, 2, L+1, d) at (t_inst, t_post_inst)."""

    records: list[dict[str, Any]]
    acts: np.ndarray
    positions: tuple[str, ...] = POSITIONS
    seconds: float = 0.0
    cached: bool = False  # read from the disk cache (engine.refcache) instead of captured now

    def at(self, position: str, layer: int | None = None) -> np.ndarray:
        if position not in self.positions:
            raise ValueError(f"position must be one of {self.positions}, not {position!r}")
        a = self.acts[:, self.positions.index(position)]
        if layer is None:
            return a
        if not 0 <= layer < a.shape[1]:
            raise ValueError(f"layer {layer} is out of range 0..{a.shape[1] - 1}")
        return a[:, layer]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "instruction": [r["instruction"] for r in self.records],
                "cluster": [CLUSTER_LABELS.get(r["cluster"], r["cluster"]) for r in self.records],
                "set": [r.get("set", "") for r in self.records],
                "category": [r.get("category") or "" for r in self.records],
            }
        )


def _builtin_records(handle: ModelHandle, progress: Progress | None) -> list[dict[str, Any]]:
    """Labelled built-in train prompts: saved beside the bundle, else labelled now (cached on disk)."""
    recs = load_records(handle)
    if recs:
        return recs
    harmful, harmless = builtin_sources("train")
    return label_records(handle, prompt_records(harmful, harmless), progress=progress)


def build_reference(
    handle: ModelHandle, progress: Progress | None = None, limit: int | None = None, *, use_cache: bool = True
) -> Reference:
    """Capture the labelled built-in prompts at t_inst and t_post_inst (all L+1 rows); from the disk cache when
    ``use_cache`` and it holds this capture (see ``engine.refcache``), else captured now and written there."""
    t0 = time.perf_counter()
    recs = _builtin_records(handle, progress)
    if limit is not None:
        recs = recs[:limit]
    if not recs:
        raise ValueError("no built-in prompts found (check the assets folder)")

    def compute() -> np.ndarray:
        return capture(
            handle,
            [r["instruction"] for r in recs],
            POSITIONS,
            progress=staged(progress, "capturing"),
        ).acts

    if use_cache:
        acts, hit = cached_capture(handle, recs, POSITIONS, compute)
    else:
        acts, hit = compute(), False
    return Reference(records=list(recs), acts=acts, seconds=time.perf_counter() - t0, cached=hit)


def capture_instructions(handle: ModelHandle, instructions: Sequence[str]) -> np.ndarray:
    """(n, 2, L+1, d) at (t_inst, t_post_inst) for the user's own prompts."""
    if not instructions:
        return np.zeros((0, 2, handle.n_rows, handle.hidden_size), dtype=np.float32)
    return capture(handle, list(instructions), POSITIONS).acts


def cluster_map(
    reference: Reference,
    layer: int,
    position: str,
    method: str = "umap",
    *,
    seed: int = 0,
    n_neighbors: int = 15,
    extra_acts: np.ndarray | None = None,
    extra_texts: Sequence[str] = (),
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """2-D map of the reference prompts at (layer, position), plus the user's prompts placed into it.

    Returns a frame (x, y, cluster, instruction, source) with one row per prompt, and info about the fit.
    """
    from ..projection import fit_projection

    X = reference.at(position, layer)
    proj = fit_projection(X, method, seed=seed, n_neighbors=n_neighbors)
    df = reference.frame()
    df["x"], df["y"] = proj.embedding[:, 0], proj.embedding[:, 1]
    df["source"] = "built-in"
    if extra_acts is not None and len(extra_acts):
        if len(extra_texts) != len(extra_acts):
            raise ValueError("one text per extra hidden state")
        Y = extra_acts[:, POSITIONS.index(position), layer]
        xy = proj.transform(Y)
        mine = pd.DataFrame(
            {
                "instruction": list(extra_texts),
                "cluster": YOUR_PROMPTS,
                "set": "yours",
                "category": "",
                "x": xy[:, 0],
                "y": xy[:, 1],
                "source": "yours",
            }
        )
        df = pd.concat([df, mine], ignore_index=True)
    info = {"method": proj.method, "seed": seed, "n_neighbors": proj.n_neighbors, "degenerate": proj.degenerate}
    if proj.explained is not None:
        info["explained_variance"] = [round(v, 3) for v in proj.explained]
    return df, info


def separation(reference: Reference, layer: int, position: str) -> dict[str, float]:
    """Nearest-centroid (cosine) accuracy at (layer, position) for harmful vs harmless and refused vs accepted.

    A quick, in-sample read of what the position encodes: the paper predicts harmfulness separates at t_inst and
    refusal at t_post_inst.
    """
    X = reference.at(position, layer).astype(np.float64)
    out: dict[str, float] = {}
    for name, key in (("harmful vs harmless", "harmful"), ("refused vs accepted", "refused")):
        y = np.array([bool(r[key]) for r in reference.records])
        if y.all() or not y.any():
            out[name] = float("nan")
            continue
        mp, mn = X[y].mean(0), X[~y].mean(0)
        pred = cosine(X, mp[None]) > cosine(X, mn[None])
        out[name] = float((pred == y).mean())
    return out


@dataclass
class Inspection:
    """One instruction's prompt, every token's hidden states ``acts`` (n_tokens, L+1, d) and its belief scores."""

    positions: PromptPositions
    acts: np.ndarray
    belief_harmful: np.ndarray  # (L+1,) s_l at t_inst with the harmfulness centroids
    belief_refuse: np.ndarray  # (L+1,) s_l at t_post_inst with the refusal centroids
    delta_harmful: float
    delta_refuse: float


def _centroids(d: DirectionSet) -> tuple[np.ndarray, np.ndarray]:
    if d.pos_centroid is None or d.neg_centroid is None:
        raise ValueError(f"direction {d.name!r} has no centroids; belief scores need them (recompute the directions)")
    return d.pos_centroid, d.neg_centroid


def inspect_instruction(handle: ModelHandle, bundle: DirectionBundle, instruction: str) -> Inspection:
    """Tokens, positions, per-layer beliefs and Delta scores of one instruction."""
    pos, acts = capture_tokens(handle, instruction)
    hp, hn = _centroids(bundle.harmfulness)
    rp, rn = _centroids(bundle.refusal)
    h_inst, h_post = acts[pos.t_inst], acts[pos.t_post_inst]
    bh = belief_scores(h_inst, hp, hn)[0]
    br = belief_scores(h_post, rp, rn)[0]
    return Inspection(pos, acts, bh, br, float(bh.mean()), float(br.mean()))


def token_frame(insp: Inspection) -> pd.DataFrame:
    """index, token, role ('t_inst', 't_post_inst', 'instruction' or 'template')."""
    p = insp.positions
    roles = []
    for i in range(p.n_tokens):
        if i == p.t_inst:
            roles.append("t_inst")
        elif i == p.t_post_inst:
            roles.append("t_post_inst")
        elif p.inst_start <= i <= p.t_inst:
            roles.append("instruction")
        else:
            roles.append("template")
    return pd.DataFrame({"index": range(p.n_tokens), "token": list(p.tokens), "role": roles})


def belief_frame(insp: Inspection) -> pd.DataFrame:
    """Long format: layer, score, series (``BELIEF_SERIES``: harmfulness at t_inst / refusal at t_post_inst)."""
    n = len(insp.belief_harmful)
    return pd.DataFrame(
        {
            "layer": list(range(n)) * 2,
            "score": np.concatenate([insp.belief_harmful, insp.belief_refuse]).astype(float),
            "series": [BELIEF_SERIES["harmfulness"]] * n + [BELIEF_SERIES["refusal"]] * n,
        }
    )


def token_projection_frame(
    insp: Inspection, bundle: DirectionBundle, layer: int, names: Sequence[str] = ("harmfulness", "refusal")
) -> pd.DataFrame:
    """Per-token dot product with each unit direction at ``layer``: index, token, direction, projection, role."""
    if not 0 <= layer < insp.acts.shape[1]:
        raise ValueError(f"layer {layer} is out of range 0..{insp.acts.shape[1] - 1}")
    tf = token_frame(insp)
    rows = []
    for n in names:
        v = bundle.get(n).vectors[layer].astype(np.float64)
        norm = np.linalg.norm(v)
        u = v / norm if norm > 0 else v
        proj = insp.acts[:, layer].astype(np.float64) @ u
        for i, val in enumerate(proj):
            rows.append(
                {"index": i, "token": tf["token"][i], "direction": n, "projection": float(val), "role": tf["role"][i]}
            )
    return pd.DataFrame(rows)


def reference_deltas(reference: Reference, bundle: DirectionBundle) -> pd.DataFrame:
    """Delta_harmful (t_inst, harmfulness centroids) and Delta_refuse (t_post_inst, refusal centroids) per prompt."""
    hp, hn = _centroids(bundle.harmfulness)
    rp, rn = _centroids(bundle.refusal)
    df = reference.frame()
    df["delta_harmful"] = delta(reference.at("t_inst"), hp, hn)
    df["delta_refuse"] = delta(reference.at("t_post_inst"), rp, rn)
    return df


def delta_point(insp: Inspection, instruction: str) -> pd.DataFrame:
    """The inspected instruction as one row in the frame of :func:`reference_deltas` (cluster ``YOUR_PROMPTS``)."""
    return pd.DataFrame(
        {
            "delta_harmful": [insp.delta_harmful],
            "delta_refuse": [insp.delta_refuse],
            "instruction": [instruction],
            "cluster": [YOUR_PROMPTS],
        }
    )


# ------------------------------------------------------------------------------------------------ UMAP warm-up
WARMUP_ENV = "STEERING_EXPLORER_UMAP_WARMUP"
_warm_lock = threading.Lock()
_warm_thread: threading.Thread | None = None


def _warm_fit() -> None:
    """A UMAP fit and transform of tiny random data: the same code path (and dtypes) as ``cluster_map``."""
    from ..projection import fit_projection

    rng = np.random.default_rng(0)
    proj = fit_projection(rng.standard_normal((40, 16)), "umap", seed=0)
    proj.transform(rng.standard_normal((2, 16)))


def _lowest_priority() -> None:
    """Lower this thread's CPU priority (Linux: nice applies per thread); elsewhere nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


def _warm(fit: Callable[[], None], after: threading.Thread | None = None) -> None:
    if after is not None:
        after.join()
    t0 = time.perf_counter()
    try:
        _lowest_priority()
        fit()
    except Exception as exc:  # a warm-up must never take the app down: say it once and go on
        log.warning("UMAP warm-up failed (the first map will compile it instead): %s: %s", type(exc).__name__, exc)
        return
    log.info("UMAP warm-up done in %.1f s", time.perf_counter() - t0)


def warm_up_umap(
    fit: Callable[[], None] | None = None, after: threading.Thread | None = None
) -> threading.Thread | None:
    """Start the UMAP warm-up once per process in a daemon thread (see the module docstring), after the thread
    ``after`` (if any) has ended; the thread, or None when it is turned off. Later calls return the same thread."""
    global _warm_thread
    if os.environ.get(WARMUP_ENV, "1").strip() in ("0", "false", "no", "off"):
        return None
    with _warm_lock:
        if _warm_thread is None:
            _warm_thread = threading.Thread(
                target=_warm, args=(fit or _warm_fit, after), name="umap-warm-up", daemon=True
            )
            _warm_thread.start()
        return _warm_thread
