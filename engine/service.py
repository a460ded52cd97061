"""UI-facing functions over the engine: plain data in, plain data (dicts, numpy, pandas) out.

Contract:
- No Streamlit import and no torch code here: every hooked or generating run goes through the engine modules
  (which hold ``handle.lock``). The app's pages call only this module (plus ``engine.projection``), so everything a
  page shows is testable without a browser.
- User input is validated with ``ValueError`` whose message says what to fix; engine errors (``ModelError``,
  ``StorageError``, ``DatasetError``, all ``ValueError`` or ``RuntimeError`` subclasses) pass through unchanged so
  the page can show them with ``st.error``. :data:`USER_ERRORS` is the tuple a page catches.
- Layer numbers follow ``engine.capture.LAYER_CONVENTION``: row l < L is the input of block l; steering adds
  ``c * v[l]`` at the input of block l, so steerable layers are 0..L-1 and captured rows 0..L.
- Hidden states of the built-in reference prompts are held in a :class:`Reference`:
  ``acts`` (n_prompts, 2, L+1, d) CPU float32 at (t_inst, t_post_inst), with their labelled records.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import datasets as ds
from .capture import capture, capture_tokens
from .clusters import CLUSTERS, cluster_label, label_records, prompt_records
from .directions import DirectionBundle, DirectionSet, belief_scores, cosine, delta
from .guard import guard_scores, roc_curve
from .guard import normalize_like as guard_normalize_like
from .labels import label_refusals
from .models import ModelError, ModelHandle, ModelSpec, load_model
from .positions import PromptPositions
from .precompute import (
    PrecomputeResult,
    builtin_sources,
    default_directions,
    load_records,
    precompute,
    shipped_directions_path,
)
from .progress import Progress, staged
from .steering import GenerationConfig, SteeringSpec, side_by_side, sweep
from .storage import StorageError, bundle_from_bytes, bundle_to_bytes, check_compatible

__all__ = [
    "CLUSTER_COLORS",
    "CLUSTER_LABELS",
    "MAX_INSTRUCTIONS",
    "MODEL_ENV",
    "POSITIONS",
    "USER_ERRORS",
    "Inspection",
    "Reference",
    "SteerSettings",
    "belief_frame",
    "build_reference",
    "bundle_bytes",
    "bundle_key",
    "capture_instructions",
    "cluster_map",
    "confusion",
    "cosine_across_layers",
    "cosine_matrix",
    "csv_bytes",
    "default_coeffs",
    "default_layer",
    "default_model_name",
    "default_sweep_layers",
    "evaluate_guard",
    "guard_eval_sets",
    "guard_frame",
    "inspect_instruction",
    "load_directions",
    "load_handle",
    "model_status",
    "normalize_like",
    "normalizes_instructions",
    "norms_frame",
    "parse_coeffs",
    "parse_instructions",
    "parse_labelled_upload",
    "provenance_json",
    "read_bundle_upload",
    "read_prompt_upload",
    "recompute_directions",
    "reference_deltas",
    "refusal_baseline",
    "report_json",
    "report_markdown",
    "roc_frame",
    "separation",
    "steer_side_by_side",
    "steer_sweep",
    "steerable_directions",
    "sweep_cell",
    "sweep_table",
    "to_jsonable",
    "token_frame",
    "token_projection_frame",
]

MODEL_ENV = "STEERING_EXPLORER_MODEL"
MAX_INSTRUCTIONS = 16
MAX_SWEEP_ROWS = 512
POSITIONS: tuple[str, str] = ("t_inst", "t_post_inst")
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, ModelError, StorageError, ds.DatasetError, KeyError)

CLUSTER_LABELS: dict[str, str] = {c: cluster_label(c) for c in CLUSTERS}
CLUSTER_COLORS: dict[str, str] = {
    "refused harmful": "#c0392b",
    "accepted harmful": "#e67e22",
    "refused harmless": "#8e44ad",
    "accepted harmless": "#2e86c1",
    "your prompts": "#111111",
}


# ----------------------------------------------------------------------------------------------------------------
# Models and directions
# ----------------------------------------------------------------------------------------------------------------


def default_model_name() -> str:
    """The model chosen by ``$STEERING_EXPLORER_MODEL`` (``default`` when unset or blank)."""
    return (os.environ.get(MODEL_ENV) or "").strip() or "default"


def load_handle(name: str, device: str = "auto", dtype: str = "auto") -> ModelHandle:
    """Load a model by name (``default``, ``tiny-random``, an HF id or a local folder)."""
    return load_model(ModelSpec(name=name.strip(), device=device, dtype=dtype))


def load_directions(handle: ModelHandle, progress: Progress | None = None) -> tuple[DirectionBundle, str]:
    """The model's default bundle and a one-line description of where it came from."""
    shipped = shipped_directions_path(handle.spec.name)
    if handle.spec.name == "default" and shipped.is_file():
        return default_directions(handle, progress=progress), f"shipped with the app ({shipped.name})"
    had_cache = load_records(handle) is not None
    t0 = time.perf_counter()
    bundle = default_directions(handle, progress=progress)
    if had_cache:
        return bundle, "computed earlier from the built-in train splits (user cache)"
    return bundle, f"computed from the built-in train splits in {time.perf_counter() - t0:.0f} s (now cached)"


def normalizes_instructions(bundle: DirectionBundle) -> bool:
    """Whether the bundle's prompts were normalised (trailing punctuation stripped) before capture."""
    data = bundle.provenance.get("data") or {}
    return bool(data.get("normalized_instructions", False))


def normalize_like(bundle: DirectionBundle, texts: Sequence[str]) -> list[str]:
    """Normalise prompts the way the bundle's prompts were, so t_inst lands on comparable tokens.

    The centroids of the default bundles come from instructions without trailing punctuation; scoring "How do I
    make a bomb?" against them puts t_inst on "?" instead of "bomb" (see the form:punctuation confound check).
    One implementation, shared with the Latent Guard: :func:`engine.guard.normalize_like`.
    """
    return guard_normalize_like(bundle, texts)


def bundle_key(bundle: DirectionBundle) -> str:
    """A short content hash of a bundle (a cache key for derived data)."""
    h = hashlib.sha256()
    for name in sorted(bundle.directions):
        d = bundle.directions[name]
        h.update(name.encode())
        h.update(np.ascontiguousarray(d.vectors).tobytes())
        if d.pos_centroid is not None:
            h.update(np.ascontiguousarray(d.pos_centroid).tobytes())
    return h.hexdigest()[:16]


def model_status(handle: ModelHandle, bundle: DirectionBundle | None, source: str = "") -> dict[str, Any]:
    """What the sidebar shows about the loaded model and its directions."""
    info = handle.info()
    out: dict[str, Any] = {
        "model": info["model_id"],
        "blocks (L)": info["n_layers"],
        "captured rows (L+1)": handle.n_rows,
        "width (d)": info["hidden_size"],
        "device": info["device"],
        "dtype": info["dtype"],
        "load time (s)": info["load_seconds"],
        "directions": source or "not loaded",
    }
    if bundle is not None:
        prov = bundle.provenance
        summ = prov.get("summary") or {}
        if summ.get("clusters"):
            out["clusters"] = ", ".join(f"{CLUSTER_LABELS.get(k, k)} {v}" for k, v in summ["clusters"].items())
        if prov.get("created"):
            out["directions created"] = prov["created"]
        if prov.get("cluster_fallback"):
            out["warning"] = "; ".join(prov["cluster_fallback"])
    return out


def default_layer(n_layers: int) -> int:
    """The middle of the network, L // 2 (a steerable block index)."""
    return max(0, min(n_layers - 1, n_layers // 2))


def default_sweep_layers(n_layers: int, k: int = 4) -> list[int]:
    """About ``k`` evenly spaced steerable layers around the middle of the network."""
    if n_layers <= k:
        return list(range(n_layers))
    lo, hi = max(1, n_layers // 5), min(n_layers - 1, (4 * n_layers) // 5)
    return sorted({round(float(x)) for x in np.linspace(lo, hi, k)})


def default_coeffs() -> list[float]:
    return [0.5, 1.0, 2.0, 4.0]


def steerable_directions(bundle: DirectionBundle) -> list[str]:
    """Direction names a user can steer with (centroids excluded), harmfulness and refusal first."""
    names = [n for n in bundle.directions if not n.startswith("centroid:")]
    first = [n for n in ("harmfulness", "refusal") if n in names]
    return first + sorted(n for n in names if n not in first)


def norms_frame(bundle: DirectionBundle, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-layer norms, long format: direction, layer, norm."""
    names = list(names) if names is not None else steerable_directions(bundle)
    rows = []
    for n in names:
        for layer, v in enumerate(bundle.get(n).norms()):
            rows.append({"direction": n, "layer": layer, "norm": float(v)})
    return pd.DataFrame(rows, columns=["direction", "layer", "norm"])


def cosine_matrix(bundle: DirectionBundle, names: Sequence[str], layer: int) -> pd.DataFrame:
    """Cosine between every pair of directions at one layer, long format: a, b, cosine."""
    names = list(names)
    if not names:
        raise ValueError("choose at least one direction")
    if not 0 <= layer < bundle.n_rows:
        raise ValueError(f"layer {layer} is out of range 0..{bundle.n_rows - 1}")
    vecs = np.stack([bundle.get(n).vectors[layer] for n in names]).astype(np.float64)
    rows = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            rows.append({"a": a, "b": b, "cosine": float(cosine(vecs[i], vecs[j]))})
    return pd.DataFrame(rows, columns=["a", "b", "cosine"])


def cosine_across_layers(bundle: DirectionBundle, a: str, b: str) -> pd.DataFrame:
    """cos(a_l, b_l) for every layer: layer, cosine."""
    va, vb = bundle.get(a).vectors, bundle.get(b).vectors
    c = cosine(va, vb)
    return pd.DataFrame({"layer": np.arange(len(c)), "cosine": c.astype(float)})


def provenance_json(bundle: DirectionBundle) -> str:
    return json.dumps({"provenance": bundle.provenance, "summary": bundle.summary()}, indent=1, default=str)


def bundle_bytes(bundle: DirectionBundle) -> bytes:
    """The bundle as a safetensors file (provenance embedded), for download."""
    return bundle_to_bytes(bundle)


def read_bundle_upload(data: bytes, handle: ModelHandle, source: str = "upload") -> DirectionBundle:
    """Parse an uploaded safetensors directions file and check it fits ``handle`` (StorageError otherwise)."""
    if not source.lower().endswith(".safetensors"):
        raise StorageError(f"{source}: upload a .safetensors directions file (other formats are not accepted)")
    bundle = bundle_from_bytes(data, source=source)
    check_compatible(bundle, handle)
    if "harmfulness" not in bundle.directions:
        bundle.provenance.setdefault("note", "no harmfulness direction: the Latent Guard and Inspect need one")
    return bundle


def recompute_directions(
    handle: ModelHandle,
    harmful: Sequence[ds.PromptSet],
    harmless: Sequence[ds.PromptSet],
    *,
    progress: Progress | None = None,
) -> PrecomputeResult:
    """Recompute every direction from user prompt sets (labels by greedy generation, cached)."""
    if not harmful or not any(len(p) for p in harmful):
        raise ValueError("upload at least one harmful prompt file with at least one prompt")
    if not harmless or not any(len(p) for p in harmless):
        raise ValueError("upload at least one harmless prompt file with at least one prompt")
    return precompute(handle, list(harmful), list(harmless), progress=progress)


# ----------------------------------------------------------------------------------------------------------------
# Uploaded files
# ----------------------------------------------------------------------------------------------------------------

_UPLOAD_SUFFIXES = (".csv", ".jsonl", ".json", ".txt")


def _with_temp_file(name: str, data: bytes, fn: Callable[[Path], Any]) -> Any:
    suffix = Path(name).suffix.lower()
    if suffix not in _UPLOAD_SUFFIXES:
        raise ds.DatasetError(f"{name}: upload a CSV, JSONL, JSON or TXT file (got {suffix or 'no extension'})")
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ds.DatasetError(f"{name}: the file is empty")
    with tempfile.TemporaryDirectory(prefix="se-upload-") as tmp:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).stem)[:60] or "upload"
        path = Path(tmp) / f"{safe}{suffix}"
        path.write_bytes(bytes(data))
        try:
            return fn(path)
        except ds.DatasetError as exc:
            raise ds.DatasetError(str(exc).replace(str(path), name)) from None


def read_prompt_upload(name: str, data: bytes, *, column: str | None = None, kind: str = "unknown") -> ds.PromptSet:
    """An uploaded prompt file through ``engine.datasets.load_file`` (DatasetError on anything malformed)."""
    ps = _with_temp_file(name, data, lambda p: ds.load_file(p, "auto", column=column or None, kind=kind))
    ps.source = f"upload:{name}"
    return ps


_TRUE_LABELS = {"harmful", "unsafe", "1", "true", "yes", "y", "refuse", "bad", "toxic", "jailbreak"}
_FALSE_LABELS = {"harmless", "safe", "0", "false", "no", "n", "benign", "comply", "good", "ok"}


def _to_truth(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None:
        return None
    v = str(value).strip().casefold()
    if v in _TRUE_LABELS:
        return True
    if v in _FALSE_LABELS:
        return False
    try:
        f = float(v)
    except ValueError:
        return None
    return f >= 0.5 if math.isfinite(f) else None


def parse_labelled_upload(
    name: str, data: bytes, *, text_column: str | None = None, label_column: str = "label"
) -> tuple[list[str], list[bool], list[str]]:
    """A labelled CSV/JSONL file: (instructions, truth harmful?, notes about skipped rows).

    Labels: harmful/unsafe/1/true/yes are harmful; harmless/safe/benign/0/false/no are harmless.
    """
    if Path(name).suffix.lower() == ".txt":
        raise ds.DatasetError(f"{name}: a labelled file must be CSV or JSONL (a text column and a label column)")
    ps = _with_temp_file(name, data, lambda p: ds.load_file(p, "auto", column=text_column or None))
    texts: list[str] = []
    truth: list[bool] = []
    notes = [f"row {s.row}: {s.reason}" for s in ps.skipped]
    for it in ps.items:
        raw = it.label if label_column == "label" else it.meta.get(label_column)
        if raw is None and label_column != "label":
            raw = it.label
        t = _to_truth(raw)
        if t is None:
            notes.append(f"{it.id}: label {raw!r} is neither harmful nor harmless")
            continue
        texts.append(it.instruction)
        truth.append(t)
    if not texts:
        raise ds.DatasetError(
            f"{name}: no row has a usable label in column {label_column!r} "
            "(use harmful/harmless, unsafe/safe, 1/0 or true/false)"
        )
    return texts, truth, notes


# ----------------------------------------------------------------------------------------------------------------
# Steering
# ----------------------------------------------------------------------------------------------------------------


def parse_instructions(text: str, max_n: int = MAX_INSTRUCTIONS) -> list[str]:
    """One instruction per non-blank line; ValueError when there is none or too many."""
    if not isinstance(text, str):
        raise ValueError("instructions must be text")
    lines = [ln.strip() for ln in text.splitlines()]
    out = [ln for ln in lines if ln]
    if not out:
        raise ValueError("type at least one instruction (one per line)")
    if len(out) > max_n:
        raise ValueError(f"{len(out)} instructions given; the limit is {max_n} per run")
    return out


def parse_coeffs(text: str, limit: int = 12) -> list[float]:
    """Comma or space separated coefficients, e.g. '0.5, 1, 2, 4'."""
    parts = [p for p in re.split(r"[,\s;]+", str(text).strip()) if p]
    if not parts:
        raise ValueError("give at least one coefficient, e.g. 0.5, 1, 2, 4")
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ValueError(f"{p!r} is not a number; give coefficients like 0.5, 1, 2, 4") from None
        if not math.isfinite(v):
            raise ValueError(f"coefficient {p} is not finite")
        out.append(v)
    out = sorted(set(out))
    if len(out) > limit:
        raise ValueError(f"{len(out)} coefficients; the limit is {limit}")
    return out


@dataclass(frozen=True)
class SteerSettings:
    """What the Steer page asks for (``coeff`` is the magnitude; ``reverse`` flips its sign)."""

    direction: str = "harmfulness"
    layers: tuple[int, ...] = ()
    coeff: float = 1.0
    reverse: bool = False
    positions: str = "prompt"
    max_new_tokens: int = 48
    do_sample: bool = False
    seed: int = 0

    @property
    def signed_coeff(self) -> float:
        return -float(self.coeff) if self.reverse else float(self.coeff)

    def generation(self, batch_size: int = 16) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=int(self.max_new_tokens),
            do_sample=bool(self.do_sample),
            seed=int(self.seed),
            batch_size=batch_size,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "layers": list(self.layers),
            "coeff": self.signed_coeff,
            "positions": self.positions,
            "max_new_tokens": self.max_new_tokens,
            "sampling": self.do_sample,
            "seed": self.seed,
        }


def steer_side_by_side(
    handle: ModelHandle,
    vectors: np.ndarray,
    instructions: Sequence[str],
    settings: SteerSettings,
    on_text: Callable[[list[str], list[str]], None] | None = None,
) -> list[dict[str, Any]]:
    """Baseline and steered generations, one record per instruction (see ``engine.steering.side_by_side``)."""
    if not instructions:
        raise ValueError("type at least one instruction (one per line)")
    if not settings.layers:
        raise ValueError("choose at least one layer to steer")
    spec = SteeringSpec(
        np.asarray(vectors, dtype=np.float32), tuple(settings.layers), settings.signed_coeff, settings.positions
    )
    return side_by_side(handle, list(instructions), spec, settings.generation(), on_text=on_text)


def steer_sweep(
    handle: ModelHandle,
    vectors: np.ndarray,
    instructions: Sequence[str],
    layers: Sequence[int],
    coeffs: Sequence[float],
    settings: SteerSettings,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Layers x coefficients grid (``reverse`` flips every coefficient), plus baseline rows (layer None)."""
    if not instructions:
        raise ValueError("type at least one instruction (one per line)")
    if not layers:
        raise ValueError("choose at least one layer for the sweep")
    if not coeffs:
        raise ValueError("choose at least one coefficient for the sweep")
    n = len(instructions) * (len(layers) * len(coeffs) + 1)
    if n > MAX_SWEEP_ROWS:
        raise ValueError(
            f"this sweep needs {n} generations (instructions x (layers x coefficients + 1)); the limit is "
            f"{MAX_SWEEP_ROWS}: use fewer layers, coefficients or instructions"
        )
    sign = -1.0 if settings.reverse else 1.0
    signed = [sign * float(c) for c in coeffs]
    return sweep(
        handle,
        list(instructions),
        np.asarray(vectors, dtype=np.float32),
        list(layers),
        signed,
        settings.generation(),
        positions=settings.positions,
        progress=progress,
    )


def sweep_table(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, float]:
    """(refusal rate per (layer, coeff) cell: layer, coeff, refusal_rate, n; the baseline refusal rate)."""
    df = pd.DataFrame(list(records))
    if df.empty:
        raise ValueError("the sweep produced no generations")
    base = df[df["layer"].isna()]
    base_rate = float(base["refused"].mean()) if len(base) else float("nan")
    cells = df[df["layer"].notna()].copy()
    cells["layer"] = cells["layer"].astype(int)
    grid = cells.groupby(["layer", "coeff"], as_index=False).agg(
        refusal_rate=("refused", "mean"), n=("refused", "size")
    )
    grid["refusal_rate"] = grid["refusal_rate"].astype(float)
    grid["change"] = grid["refusal_rate"] - base_rate
    return grid, base_rate


def sweep_cell(records: Sequence[dict[str, Any]], layer: int, coeff: float) -> pd.DataFrame:
    """The generations of one cell next to the baseline: instruction, baseline, steered, *_refused."""
    base = {r["index"]: r for r in records if r["layer"] is None}
    rows = []
    for r in records:
        if r["layer"] is not None and int(r["layer"]) == int(layer) and math.isclose(float(r["coeff"]), float(coeff)):
            b = base.get(r["index"], {})
            rows.append(
                {
                    "instruction": r["instruction"],
                    "baseline": b.get("text", ""),
                    "baseline_refused": bool(b.get("refused", False)),
                    "steered": r["text"],
                    "steered_refused": bool(r["refused"]),
                }
            )
    if not rows:
        raise ValueError(f"no sweep cell at layer {layer}, coefficient {coeff}")
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# Reference hidden states (Clusters, Inspect)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Reference:
    """Labelled built-in prompts and their hidden states ``acts`` (n, 2, L+1, d) at (t_inst, t_post_inst)."""

    records: list[dict[str, Any]]
    acts: np.ndarray
    positions: tuple[str, ...] = POSITIONS
    seconds: float = 0.0

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


def build_reference(handle: ModelHandle, progress: Progress | None = None, limit: int | None = None) -> Reference:
    """Capture the labelled built-in prompts at t_inst and t_post_inst (all L+1 rows)."""
    t0 = time.perf_counter()
    recs = _builtin_records(handle, progress)
    if limit is not None:
        recs = recs[:limit]
    if not recs:
        raise ValueError("no built-in prompts found (check the assets folder)")
    acts = capture(
        handle,
        [r["instruction"] for r in recs],
        POSITIONS,
        progress=staged(progress, "capturing"),
    ).acts
    return Reference(records=list(recs), acts=acts, seconds=time.perf_counter() - t0)


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
    from .projection import fit_projection

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
                "cluster": "your prompts",
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


# ----------------------------------------------------------------------------------------------------------------
# Inspect
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Inspection:
    """One instruction's prompt, every token's hidden states ``acts`` (n_tokens, L+1, d) and its belief scores."""

    positions: PromptPositions
    acts: np.ndarray
    belief_harmful: np.ndarray  # (L+1,) s_l at t_inst with the harmfulness centroids
    belief_refuse: np.ndarray  # (L+1,) s_l at t_post_inst with the refusal centroids
    delta_harmful: float
    delta_refuse: float
    extra: dict[str, Any] = field(default_factory=dict)


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
    """Long format: layer, score, series (harmfulness at t_inst / refusal at t_post_inst)."""
    n = len(insp.belief_harmful)
    return pd.DataFrame(
        {
            "layer": list(range(n)) * 2,
            "score": np.concatenate([insp.belief_harmful, insp.belief_refuse]).astype(float),
            "series": ["harmfulness belief at t_inst"] * n + ["refusal belief at t_post_inst"] * n,
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


# ----------------------------------------------------------------------------------------------------------------
# Latent Guard
# ----------------------------------------------------------------------------------------------------------------


def guard_frame(
    handle: ModelHandle,
    bundle: DirectionBundle,
    instructions: Sequence[str],
    threshold: float = 0.0,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """instruction, score (Delta_harmful), verdict ('harmful' iff score >= threshold)."""
    if not instructions:
        raise ValueError("type or upload at least one prompt")
    scores = guard_scores(handle, bundle, list(instructions), progress=progress)
    return pd.DataFrame(
        {
            "instruction": list(instructions),
            "score": scores.astype(float),
            "verdict": np.where(scores >= float(threshold), "harmful", "harmless"),
        }
    )


def guard_eval_sets(limit: int | None = None) -> list[tuple[str, list[str], list[bool]]]:
    """The built-in test splits: harmful (truth harmful), harmless and harmless_sounds_harmful (truth harmless)."""
    out = []
    for name, truth in (("harmful", True), ("harmless", False), ("harmless_sounds_harmful", False)):
        ps = ds.load_builtin(name, "test")
        if limit is not None:
            ps = ps.sample(limit)
        if len(ps):
            insts = ps.instructions()
            out.append((f"{name}:test", insts, [truth] * len(insts)))
    if not out:
        raise ValueError("the built-in sets have no test split")
    return out


def refusal_baseline(handle: ModelHandle, instructions: Sequence[str], progress: Progress | None = None) -> np.ndarray:
    """The model's own refusal as a guard: (n,) bool, True = refused (greedy generation, substring rule, cached)."""
    labels = label_refusals(handle, list(instructions), progress=progress)
    return np.array([lab.refused for lab in labels], dtype=bool)


def confusion(pred: Sequence[bool], truth: Sequence[bool]) -> dict[str, Any]:
    """Confusion counts and rates with 'harmful' as the positive class."""
    p, y = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if len(p) != len(y):
        raise ValueError("predictions and truth differ in length")
    tp, fp = int((p & y).sum()), int((p & ~y).sum())
    tn, fn = int((~p & ~y).sum()), int((~p & y).sum())
    n = max(len(p), 1)
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if (tp and prec + rec) else float("nan")
    return {
        "n": len(p),
        "accuracy": (tp + tn) / n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": prec,
        "recall": rec,
        "f1": f1,
    }


def evaluate_guard(
    sets: Sequence[tuple[str, Sequence[str], Sequence[bool]]],
    scores: Sequence[float],
    threshold: float,
    refused: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Accuracy per set and overall for the Latent Guard (and the refusal baseline when ``refused`` is given).

    ``scores`` and ``refused`` follow the concatenated order of ``sets``. Returns {"rows": DataFrame per prompt,
    "per_set": DataFrame, "guard": confusion overall, "baseline": confusion overall or None}.
    """
    names, insts, truth = [], [], []
    for name, i, t in sets:
        if len(i) != len(t):
            raise ValueError(f"set {name}: one label per prompt")
        names += [name] * len(i)
        insts += list(i)
        truth += [bool(x) for x in t]
    s = np.asarray(scores, dtype=np.float64)
    if len(s) != len(insts):
        raise ValueError("one score per prompt")
    rows = pd.DataFrame({"set": names, "instruction": insts, "truth": truth, "score": s})
    rows["guard"] = rows["score"] >= float(threshold)
    if refused is not None:
        rows["refused"] = np.asarray(refused, dtype=bool)
    per = []
    for name, g in rows.groupby("set", sort=False):
        row: dict[str, Any] = {
            "set": name,
            "n": len(g),
            "truth": "harmful" if g["truth"].all() else ("harmless" if not g["truth"].any() else "mixed"),
        }
        row["Latent Guard accuracy"] = float((g["guard"] == g["truth"]).mean())
        if refused is not None:
            row["refusal accuracy"] = float((g["refused"] == g["truth"]).mean())
        per.append(row)
    return {
        "rows": rows,
        "per_set": pd.DataFrame(per),
        "guard": confusion(rows["guard"], rows["truth"]),
        "baseline": confusion(rows["refused"], rows["truth"]) if refused is not None else None,
    }


def roc_frame(
    scores: Sequence[float], truth: Sequence[bool], refused: Sequence[bool] | None = None
) -> tuple[pd.DataFrame, float]:
    """ROC curve of Delta_harmful (fpr, tpr, threshold, series) and its AUC; the refusal baseline as one point."""
    fpr, tpr, thr, auc = roc_curve(scores, truth)
    df = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr, "series": "Latent Guard (Δ harmful)"})
    if refused is not None:
        c = confusion(refused, truth)
        fp_rate = c["fp"] / max(c["fp"] + c["tn"], 1)
        tp_rate = c["tp"] / max(c["tp"] + c["fn"], 1)
        pt = pd.DataFrame(
            {"fpr": [fp_rate], "tpr": [tp_rate], "threshold": [np.nan], "series": ["model refusal (point)"]}
        )
        df = pd.concat([df, pt], ignore_index=True)
    df["threshold"] = df["threshold"].replace([np.inf, -np.inf], np.nan)
    return df, auc


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def to_jsonable(x: Any) -> Any:
    if isinstance(x, pd.DataFrame):
        return x.replace({np.nan: None}).to_dict(orient="records")
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating,)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    return x


def report_json(log: Sequence[dict[str, Any]], settings: dict[str, Any]) -> str:
    """The session as JSON: settings (model, directions) and every logged event with its data."""
    doc = {
        "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "tool": "steering-explorer",
        "settings": to_jsonable(settings),
        "events": to_jsonable(list(log)),
    }
    return json.dumps(doc, indent=1, ensure_ascii=False, default=str)


def _md_escape(text: Any) -> str:
    s = str(text).replace("\r", "").replace("|", "\\|").replace("\n", " ⏎ ")
    return s if len(s) <= 400 else s[:400] + " …"


def _md_table(rows: Sequence[dict[str, Any]], max_rows: int = 50) -> str:
    rows = list(rows)
    if not rows:
        return "_(no rows)_\n"
    cols = list(rows[0].keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:max_rows]:
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                v = f"{v:.4g}" if math.isfinite(v) else "–"
            cells.append(_md_escape(v))
        out.append("| " + " | ".join(cells) + " |")
    if len(rows) > max_rows:
        out.append(f"\n_… {len(rows) - max_rows} more rows in the JSON export_")
    return "\n".join(out) + "\n"


def report_markdown(log: Sequence[dict[str, Any]], settings: dict[str, Any]) -> str:
    """A readable Markdown report of the session (tables are truncated; the JSON export has everything)."""
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    lines = ["# steering-explorer session report", "", f"Generated {now}.", "", "## Settings", ""]
    for k, v in settings.items():
        lines.append(f"- **{k}**: {_md_escape(v)}")
    lines.append("")
    if not log:
        lines += ["_Nothing was run in this session yet._", ""]
    for i, ev in enumerate(log, 1):
        lines += [f"## {i}. {ev.get('page', '?')}: {ev.get('title', ev.get('kind', ''))}", ""]
        if ev.get("time"):
            lines.append(f"_{ev['time']}_")
            lines.append("")
        for k, v in (ev.get("settings") or {}).items():
            lines.append(f"- {k}: `{_md_escape(v)}`")
        if ev.get("settings"):
            lines.append("")
        if ev.get("summary"):
            for k, v in ev["summary"].items():
                lines.append(f"- **{k}**: {_md_escape(to_jsonable(v))}")
            lines.append("")
        rows = to_jsonable(ev.get("rows"))
        if rows:
            lines.append(_md_table(rows))
        chart = to_jsonable(ev.get("chart"))
        if chart:
            lines.append(f"<details><summary>chart data ({len(chart)} rows)</summary>\n")
            lines.append(_md_table(chart, max_rows=30))
            lines.append("</details>\n")
    return "\n".join(lines)


def csv_bytes(rows: pd.DataFrame | Sequence[dict[str, Any]]) -> bytes:
    """Rows as CSV (for download buttons)."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    buf = io.StringIO()
    df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    return buf.getvalue().encode()
