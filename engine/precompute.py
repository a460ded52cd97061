"""Precompute: labels, the four clusters, harmfulness / refusal / category directions, centroids, provenance.

Contract:
- ``precompute(handle, harmful, harmless, ...)`` labels every prompt with the full template (cached), captures
  t_inst and t_post_inst from the labelling's own prompt pass (``capture.PrefillStates``: each prompt runs through
  the model once; with labels cached, ``labels.prompt_states`` runs the same pass, so the result does not depend on
  the label cache, bit for bit), and builds, by difference of means (unnormalised unless asked):
    * ``harmfulness`` = mean(refused harmful at t_inst) - mean(accepted harmless at t_inst)   (paper §3.2)
    * ``refusal``     = mean(refused at t_post_inst) - mean(accepted at t_post_inst); by default refused harmful vs
                        accepted harmless (the paper's default), ``refusal_pool="all"`` pools every refused vs every
                        accepted prompt (harmless-sounding-harmful ones included)
    * ``guard``       = mean(every harmful prompt at t_inst) - mean(every harmless prompt at t_inst): the Latent
                        Guard's centroids (paper §5: harmful vs harmless training prompts, behaviour not used)
    * ``category:<name>`` = mean(harmful prompts of that category at t_inst) - mean(accepted harmless at t_inst)
    * ``form:punctuation`` and ``form:question`` (confound checks; see REPRODUCTION.md)
    * ``guard:lda``, ``guard:probe``, ``guard:lda-band``: the Latent Guard's trained readers of t_inst (every
      harmful vs every harmless prompt, choices by cross-validation inside these prompts; ``engine.guard.readers``),
      with their summary (layers, hyperparameters, CV figures, calibrated thresholds, data hashes) in the
      provenance's ``guard_readers``; ``guard_readers=False`` skips them
- Instructions are normalised (trailing punctuation and whitespace stripped) by default, recorded in provenance.
- ``cosine_interval(records, acts)``: cos(harmfulness, refusal) per layer with a bootstrap 95% interval over the
  prompts behind the centroids (``engine.directions.bootstrap_cosine``, seeded); ``precompute`` stores it as
  ``summary["cosine_ci"]`` and in the bundle's ``provenance["summary"]["cosine_ci"]`` (bundles made before this have
  none: callers can recompute it from the labelled records and their states).
- ``default_directions(handle)``: the shipped bundle of a registry model (``assets/directions/<name>.safetensors``,
  e.g. ``default``, ``qwen-1.5b``), else a per-model bundle computed from the built-in train splits on first use and
  cached in the user cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import atomic
from . import datasets as ds
from .capture import PrefillStates, capture
from .clusters import CLUSTERS, label_records, prompt_records, valid_saved_records
from .directions import CosineInterval, DirectionBundle, DirectionSet, bootstrap_cosine, layer_cosines
from .labels import DEFAULT_LABEL_TOKENS, prompt_states
from .models import REGISTRY, ModelHandle, cache_dir
from .progress import Progress, staged
from .resources import ASSETS_DIR
from .storage import StorageError, bundle_path, load_bundle, make_provenance, save_bundle

__all__ = [
    "PrecomputeResult",
    "builtin_sources",
    "cosine_interval",
    "default_directions",
    "precompute",
    "shipped_directions_path",
]

ASSET_DIRECTIONS = ASSETS_DIR / "directions"  # checkout, or the installed package data (engine/resources.py)
MIN_READER_PROMPTS = 10  # per class, for the guard readers' 5-fold cross-validation


@dataclass
class PrecomputeResult:
    bundle: DirectionBundle
    records: list[dict[str, Any]]  # one per prompt: id, set, instruction, harmful, refused, cluster, category, split
    acts: np.ndarray  # (n, 2, L+1, d) at (t_inst, t_post_inst)
    summary: dict[str, Any] = field(default_factory=dict)


POSITIONS: tuple[str, str] = ("t_inst", "t_post_inst")  # what precompute captures (acts[:, 0] and acts[:, 1])


def shipped_directions_path(name: str = "default") -> Path:
    return ASSET_DIRECTIONS / f"{name}.safetensors"


def _shipped(name: str, suffix: str = ".safetensors") -> Path | None:
    """The shipped file of a registry model (only registry names: a path or HF id never maps into assets/)."""
    if name not in REGISTRY:
        return None
    path = ASSET_DIRECTIONS / f"{name}{suffix}"
    return path if path.is_file() else None


def _hash(items: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def builtin_sources(split: str | None = "train") -> tuple[list[ds.PromptSet], list[ds.PromptSet]]:
    """(harmful sets, harmless sets) of the built-in data for one split."""
    harmful = [ds.load_builtin("harmful", split)]
    harmless = [ds.load_builtin("harmless", split), ds.load_builtin("harmless_sounds_harmful", split)]
    return harmful, harmless


def precompute(
    handle: ModelHandle,
    harmful: Sequence[ds.PromptSet],
    harmless: Sequence[ds.PromptSet],
    *,
    normalize: bool = True,
    normalize_directions: bool = False,
    labeller: str = "substring",
    label_tokens: int = DEFAULT_LABEL_TOKENS,
    refusal_pool: str = "default",
    batch_size: int = 16,
    label_batch_size: int = 64,
    min_category: int = 4,
    allow_fallback: bool = True,
    guard_readers: bool = True,
    progress: Progress | None = None,
) -> PrecomputeResult:
    """Label, cluster and build every direction (see module docstring)."""
    if refusal_pool not in ("default", "all"):
        raise ValueError("refusal_pool must be 'default' or 'all'")
    t0 = time.perf_counter()
    records = prompt_records(harmful, harmless, normalize=normalize)
    if not any(r["harmful"] for r in records) or all(r["harmful"] for r in records):
        raise ValueError("precompute needs at least one harmful and one harmless prompt")
    insts = [r["instruction"] for r in records]
    # labelling by generation runs every uncached prompt through the model once: keep its states (PrefillStates)
    prefill = PrefillStates(POSITIONS)
    label_records(
        handle,
        records,
        labeller=labeller,
        label_tokens=label_tokens,
        batch_size=label_batch_size,
        progress=progress,
        prefill=prefill,
    )
    t_label = time.perf_counter() - t0
    acts = _states(handle, insts, prefill, label_batch_size, progress)
    t_capture = time.perf_counter() - t0 - t_label
    a_inst, a_post = acts[:, 0], acts[:, 1]

    def mask(pred: Callable[[dict[str, Any]], bool]) -> np.ndarray:
        return np.array([pred(r) for r in records], dtype=bool)

    rh = mask(lambda r: r["harmful"] and r["refused"])
    ah_l = mask(lambda r: not r["harmful"] and not r["refused"])
    fallback = []
    if rh.sum() == 0:
        if not allow_fallback:
            raise ValueError(
                "the model refused none of the harmful prompts, so there is no refused-harmful cluster; use more or other harmful prompts"
            )
        rh = mask(lambda r: r["harmful"])
        fallback.append("no refused-harmful prompt: the harmful side uses every harmful prompt")
    if ah_l.sum() == 0:
        if not allow_fallback:
            raise ValueError("the model refused every harmless prompt, so there is no accepted-harmless cluster")
        ah_l = mask(lambda r: not r["harmful"])
        fallback.append("no accepted-harmless prompt: the harmless side uses every harmless prompt")
    data_prov = {
        "harmful": [ps.provenance() for ps in harmful],
        "harmless": [ps.provenance() for ps in harmless],
        "normalized_instructions": normalize,
        "labeller": labeller,
        "label_max_new_tokens": label_tokens,
    }
    dirs: dict[str, DirectionSet] = {}
    dirs["harmfulness"] = DirectionSet.from_diff_of_means(
        "harmfulness",
        a_inst[rh],
        a_inst[ah_l],
        position="t_inst",
        normalize=normalize_directions,
        meta={"pos": "refused_harmful", "neg": "accepted_harmless"},
    )
    # Latent Guard centroids (paper §5): harmful vs harmless training prompts, whatever the model did with them
    all_h, all_l = mask(lambda r: r["harmful"]), mask(lambda r: not r["harmful"])
    dirs["guard"] = DirectionSet.from_diff_of_means(
        "guard",
        a_inst[all_h],
        a_inst[all_l],
        position="t_inst",
        normalize=normalize_directions,
        meta={"pos": "all harmful", "neg": "all harmless", "use": "Latent Guard centroids"},
    )
    if refusal_pool == "all":
        ref, acc = mask(lambda r: r["refused"]), mask(lambda r: not r["refused"])
        pos_name, neg_name = "refused (all)", "accepted (all)"
    else:
        ref, acc = rh, ah_l
        pos_name, neg_name = "refused_harmful", "accepted_harmless"
    dirs["refusal"] = DirectionSet.from_diff_of_means(
        "refusal",
        a_post[ref],
        a_post[acc],
        position="t_post_inst",
        normalize=normalize_directions,
        meta={"pos": pos_name, "neg": neg_name},
    )
    # cluster centroids at both positions, for the scatter, clusters and guard pages
    cluster_of = np.array([r["cluster"] for r in records], dtype=object)
    for pos_i, pos_name_ in ((0, "t_inst"), (1, "t_post_inst")):
        for c in CLUSTERS:
            m = cluster_of == c
            if m.sum():
                mu = acts[m, pos_i].mean(0)
                dirs[f"centroid:{c}:{pos_name_}"] = DirectionSet(
                    name=f"centroid:{c}:{pos_name_}",
                    vectors=mu,
                    position=pos_name_,
                    n_pos=int(m.sum()),
                    meta={"kind": "centroid"},
                )
    cats = Counter(r["category"] for r in records if r["harmful"] and r["category"])
    harmful_of = mask(lambda r: bool(r["harmful"]))
    category_of = np.array([r["category"] for r in records], dtype=object)
    for cat, n in sorted(cats.items()):
        if n < min_category:
            continue
        m = harmful_of & (category_of == cat)
        dirs[f"category:{cat}"] = DirectionSet.from_diff_of_means(
            f"category:{cat}",
            a_inst[m],
            a_inst[ah_l],
            position="t_inst",
            normalize=normalize_directions,
            meta={"pos": f"harmful/{cat}", "neg": "accepted_harmless"},
        )
    # form confound checks, on the harmless prompts only: the same prompts with and without a trailing period / '?'
    t1 = time.perf_counter()
    known = {inst: acts[i, 0] for i, inst in enumerate(insts)}
    form = _form_directions(handle, [r["raw"] for r in records if not r["harmful"]], batch_size, known)
    dirs.update(form)
    t_form = time.perf_counter() - t1
    counts = Counter(r["cluster"] for r in records)
    bundle = DirectionBundle(
        directions=dirs,
        provenance=make_provenance(
            handle,
            positions={"harmfulness": "t_inst", "refusal": "t_post_inst"},
            data=data_prov,
            clusters=dict(counts),
            refusal_pool=refusal_pool,
            cluster_fallback=fallback,
            normalized_directions=normalize_directions,
            coefficients_note="directions are raw differences of means (paper scale)"
            if not normalize_directions
            else "unit norm per layer",
        ),
    )
    cos_hr = layer_cosines(dirs["harmfulness"], dirs["refusal"])
    seconds = {
        "labelling": round(t_label, 1),
        "capture": round(t_capture, 1),
        "form": round(t_form, 1),
        "total": round(time.perf_counter() - t0, 1),  # before the guard readers (seconds["guard_readers"])
    }
    summary: dict[str, Any] = {
        "model": handle.spec.name,
        "n_prompts": len(records),
        "clusters": {c: int(counts.get(c, 0)) for c in CLUSTERS},
        "refusal_rate": {
            "harmful": float(np.mean([r["refused"] for r in records if r["harmful"]])),
            "harmless": float(np.mean([r["refused"] for r in records if not r["harmful"]])),
        },
        "norms": {k: [round(float(x), 4) for x in dirs[k].norms()] for k in ("harmfulness", "refusal")},
        "cosine_harmfulness_refusal": [round(float(x), 4) for x in cos_hr],
        "confound_cosine": {
            k: [round(float(x), 4) for x in layer_cosines(dirs["harmfulness"], v)] for k, v in form.items()
        },
        "cluster_fallback": fallback,
        "categories": sorted(k.split(":", 1)[1] for k in dirs if k.startswith("category:")),
        "cosine_ci": cosine_interval(records, acts, refusal_pool=refusal_pool).to_dict(),
        "seconds": seconds,
        "captured_in_labelling": len(prefill.states),
    }
    bundle.provenance["summary"] = {k: summary[k] for k in ("clusters", "refusal_rate", "n_prompts", "cosine_ci")}
    if guard_readers and min(int(all_h.sum()), int((~all_h).sum())) >= MIN_READER_PROMPTS:
        t2 = time.perf_counter()
        bundle = _with_guard_readers(bundle, a_inst, all_h, insts, data_prov, progress)
        summary["guard_readers"] = _guard_readers_summary(bundle)
        seconds["guard_readers"] = round(time.perf_counter() - t2, 1)
    elif guard_readers:
        summary["guard_readers"] = f"skipped: the trained readers need at least {MIN_READER_PROMPTS} prompts per class"
    return PrecomputeResult(bundle=bundle, records=records, acts=acts, summary=summary)


def _with_guard_readers(
    bundle: DirectionBundle,
    a_inst: np.ndarray,
    harmful: np.ndarray,
    insts: Sequence[str],
    data_prov: dict[str, Any],
    progress: Progress | None,
) -> DirectionBundle:
    """The bundle plus the Latent Guard's trained readers, fitted on these t_inst states (engine.guard.store)."""
    from .guard.store import fit_guard_readers, instructions_hash, with_readers

    data = {
        "source": "the prompts of this precompute (harmful vs harmless, behaviour not used)",
        "harmful": data_prov["harmful"],
        "harmless": data_prov["harmless"],
        "normalized_instructions": data_prov["normalized_instructions"],
        "instructions_sha256": instructions_hash(insts),
        "n": len(insts),
        "n_harmful": int(harmful.sum()),
    }
    record = fit_guard_readers(a_inst, harmful, data=data, progress=staged(progress, "fitting guard readers"))
    return with_readers(bundle, record)


def _guard_readers_summary(bundle: DirectionBundle) -> dict[str, Any]:
    """Per reader: layers, features, hyperparameters and CV AUC / balanced accuracy (for the precompute summary)."""
    from .guard.store import PROVENANCE_KEY

    rec = bundle.provenance.get(PROVENANCE_KEY) or {}
    out: dict[str, Any] = {}
    for m, info in (rec.get("methods") or {}).items():
        hyper = {k: v for k, v in info["hyper"].items() if k not in ("grid", "bands")}
        cv = {k: v for k, v in info["cv"].items() if not k.startswith("auc_per")}
        out[m] = {"layers": info["layers"], "features": info["features"], "hyper": hyper, "cv": cv}
    if "centroid" in rec:
        out["centroid"] = {k: round(float(v), 5) for k, v in rec["centroid"].items()}
    return out


def cosine_interval(
    records: Sequence[dict[str, Any]],
    acts: np.ndarray,
    *,
    refusal_pool: str = "default",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> CosineInterval:
    """cos(harmfulness, refusal) per layer with a bootstrap interval, from labelled records (``harmful``,
    ``refused``) and their states ``acts`` (n, 2, L+1, d) at (t_inst, t_post_inst), with the clusters ``precompute``
    uses: refused harmful vs accepted harmless (each side falling back to every harmful / harmless prompt when
    empty); ``refusal_pool="all"`` pools every refused vs every accepted prompt for the refusal direction."""
    harmful = np.array([bool(r["harmful"]) for r in records])
    refused = np.array([bool(r["refused"]) for r in records])
    rh, ah = harmful & refused, ~harmful & ~refused
    rh = rh if rh.any() else harmful
    ah = ah if ah.any() else ~harmful
    ref, acc = (refused, ~refused) if refusal_pool == "all" else (rh, ah)
    return bootstrap_cosine(acts[:, 0], rh, ah, acts[:, 1], ref, acc, n_boot=n_boot, seed=seed, level=level)


def _states(
    handle: ModelHandle, insts: Sequence[str], prefill: PrefillStates, label_batch_size: int, progress: Progress | None
) -> np.ndarray:
    """(n, 2, L+1, d) at POSITIONS from the labelling's prompt pass; when it did not cover every prompt (labels
    cached, or the log-odds labeller), ``labels.prompt_states`` runs that pass with the same batches, so the states
    (and the directions) are bit-identical whatever the label cache held."""
    if any(inst not in prefill.states for inst in insts):
        prefill = prompt_states(
            handle, insts, PrefillStates(POSITIONS), batch_size=label_batch_size, progress=staged(progress, "capturing")
        )
    return np.stack([prefill.states[inst] for inst in insts]).astype(np.float32, copy=False)


def _form_directions(
    handle: ModelHandle,
    harmless_raw: Sequence[str],
    batch_size: int,
    known: dict[str, np.ndarray] | None = None,
) -> dict[str, DirectionSet]:
    """Confound directions on the harmless prompts; ``known`` (instruction -> (L+1, d) at t_inst) spares capturing
    the bare prompts again when precompute already has their states."""
    bare = [ds.normalize_instruction(t) or t for t in harmless_raw]
    bare = [b for b in bare if b][:80]
    if len(bare) < 4:
        return {}
    with_period = [b + "." for b in bare]
    as_question = [b + "?" for b in bare]
    known = known or {}
    todo = [t for t in bare if t not in known] + with_period + as_question
    got = capture(handle, todo, ("t_inst",), batch_size=batch_size).at("t_inst")
    state = dict(known)
    state.update(zip(todo, got, strict=True))
    n = len(bare)
    acts = np.stack([state[t] for t in bare + with_period + as_question])
    a_bare, a_per, a_q = acts[:n], acts[n : 2 * n], acts[2 * n :]
    return {
        "form:punctuation": DirectionSet.from_diff_of_means(
            "form:punctuation", a_per, a_bare, meta={"pos": "with '.'", "neg": "no trailing punctuation"}
        ),
        "form:question": DirectionSet.from_diff_of_means(
            "form:question", a_q, a_per, meta={"pos": "ending '?'", "neg": "ending '.'"}
        ),
    }


def save_result(result: PrecomputeResult, out_dir: Path, name: str, *, dtype: str = "float32") -> dict[str, str]:
    """Write the bundle (safetensors + JSON; tensors in ``dtype``, float16 for small shipped assets) and the labelled
    records (JSON) under ``out_dir``."""
    path = save_bundle(result.bundle, bundle_path(out_dir, name), dtype=dtype)
    rec_path = out_dir / f"{name}.labels.json"
    keep = ("id", "set", "instruction", "harmful", "category", "split", "refused", "cluster", "response")
    atomic.write_json(rec_path, [{k: r[k] for k in keep} for r in result.records], indent=0)
    atomic.write_json(out_dir / f"{name}.summary.json", result.summary, indent=1)
    return {"directions": str(path), "sidecar": str(path.with_suffix(".json")), "labels": str(rec_path)}


def _cached_bundle_path(handle: ModelHandle) -> Path:
    """Where a model's computed bundle is cached (keyed by its fingerprint)."""
    key = handle.fingerprint()
    if handle.dtype != torch.float32:  # a reduced-precision model's own directions (float32 paths unchanged)
        key = {**key, "dtype": str(handle.dtype)}
    safe = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "directions" / f"{handle.spec.name.replace('/', '_')}-{safe}.safetensors"


def default_directions(
    handle: ModelHandle, *, progress: Progress | None = None, compute: bool = True
) -> DirectionBundle:
    """The model's precomputed bundle: shipped for registry models, else computed from the built-in sets and cached."""
    shipped = _shipped(handle.spec.name)
    if shipped is not None:
        return load_bundle(shipped, handle)
    cached = _cached_bundle_path(handle)
    if cached.is_file():
        try:
            return load_bundle(cached, handle)
        except StorageError as exc:  # a damaged cache: keep it aside for inspection and recompute
            atomic.set_aside(cached, str(exc))
    if not compute:
        raise StorageError(
            f"no precomputed directions for {handle.spec.name}; run `python -m engine precompute --model {handle.spec.name}` "
            "or pass --directions FILE"
        )
    harmful, harmless = builtin_sources("train")
    result = precompute(handle, harmful, harmless, progress=progress)
    save_result(result, cached.parent, cached.stem)
    return result.bundle


def load_records(handle: ModelHandle) -> list[dict[str, Any]] | None:
    """Labelled records saved beside the model's bundle (shipped or cached), if any."""
    shipped = _shipped(handle.spec.name, ".labels.json")
    if shipped is not None:
        return json.loads(shipped.read_text())
    p = _cached_bundle_path(handle).with_suffix(".labels.json")
    doc = atomic.read_json_cache(p, validate=valid_saved_records, what="labels cache")
    return list(doc) if doc is not None else None
