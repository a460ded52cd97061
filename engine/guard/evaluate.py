"""Evaluating guards on labelled prompt sources: per source accuracy at each threshold, AUC, balanced accuracy.

Contract:
- A :class:`LabelledSource` is a named list of prompts that are all harmful or all harmless (``harmful``), with
  their ids (results refer to prompts by id, never by text) and the provenance of the file they came from.
  ``pooled=False`` keeps a source out of the overall figures (e.g. all filled templates when the successful ones are
  pooled, so no prompt counts twice).
- ``labelled_sources(harmful=[paths], harmless=[paths])`` reads files through the project's loaders (any format
  they read); a folder is one source made of every prompt file in it (e.g. CatQA's one file per category), with
  ``limit`` prompts per file (a seeded sample). ``template_sources`` fills ``n_templates`` jailbreak templates
  (seeded sample, ``seed``) with ``n_prompts`` harmful prompts (``seed + 1``), normalised as the guard normalises
  every prompt, and asks the model (greedy, the substring refusal rule, cached labels) which of them it answers: a
  source of all filled prompts (not pooled) and one of the successful jailbreaks (pooled), with the ids that
  succeeded.
- ``evaluate_scores(sources, scores, thresholds)`` (pure): per source ``n``, the accuracy of each method at each of
  its thresholds (harmful sources: share flagged; harmless: share not flagged), the mean score and the source's
  ROC AUC against every pooled prompt of the other class; overall (pooled sources): ROC AUC, balanced accuracy,
  true-positive and true-negative rates at each threshold.
- ``evaluate_sources(handle, bundle, sources, methods)`` captures every prompt's t_inst states ONCE (normalised like
  the bundle's prompts), scores them with every method, and adds timing (prompts per second of the capture, which is
  the guard's whole cost: one forward pass without the LM head per prompt) and each method's provenance.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..directions import DirectionBundle
from ..models import ModelHandle
from ..progress import Progress, staged
from .methods import METHODS, guard_methods, t_inst_states
from .metrics import auc, balanced_accuracy

__all__ = ["LabelledSource", "evaluate_scores", "evaluate_sources", "labelled_sources", "template_sources"]

PROMPT_SUFFIXES = (".csv", ".jsonl", ".json", ".txt")


@dataclass
class LabelledSource:
    """Prompts that are all harmful or all harmless, with ids and provenance."""

    name: str
    harmful: bool
    instructions: list[str]
    ids: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    pooled: bool = True

    def __post_init__(self) -> None:
        if len(self.instructions) != len(self.ids):
            raise ValueError(f"source {self.name}: one id per prompt")

    def __len__(self) -> int:
        return len(self.instructions)


def _load_source(path: Path, harmful: bool, limit: int | None, seed: int, column: str | None) -> LabelledSource:
    from .. import datasets as ds

    files = sorted(p for p in path.iterdir() if p.suffix in PROMPT_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: no prompt files (.csv, .jsonl, .json, .txt) in this folder")
    insts: list[str] = []
    ids: list[str] = []
    prov: list[dict[str, Any]] = []
    for f in files:
        ps = ds.load_file(f, column=column)
        ps = ps.sample(limit, seed) if limit is not None else ps
        insts += ps.instructions()
        ids += ps.ids()
        prov.append(ps.provenance())
    return LabelledSource(path.stem if path.is_file() else path.name, harmful, insts, ids, {"files": prov})


def labelled_sources(
    harmful: Sequence[str | Path] = (),
    harmless: Sequence[str | Path] = (),
    *,
    limit: int | None = None,
    seed: int = 0,
    column: str | None = None,
) -> list[LabelledSource]:
    """One source per path (a folder: every prompt file in it), harmful paths first; names made unique."""
    if not harmful and not harmless:
        raise ValueError("give at least one labelled file (--harmful FILE ... and/or --harmless FILE ...)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    out: list[LabelledSource] = []
    seen: dict[str, int] = {}
    for paths, truth in ((harmful, True), (harmless, False)):
        for p in paths:
            path = Path(p)
            if not path.exists():
                raise ValueError(f"{path}: no such file or folder")
            s = _load_source(path, truth, limit, seed, column)
            k = seen.get(s.name, 0)
            seen[s.name] = k + 1
            if k:
                s.name = f"{s.name}#{k + 1}"
            out.append(s)
    return out


def _normalized(text: str) -> str:
    from .. import datasets as ds

    return ds.normalize_instruction(text) or text


def template_sources(
    handle: ModelHandle,
    templates: str | Path,
    harmful: str | Path | None = None,
    *,
    harmless: str | Path | None = None,
    n_templates: int = 10,
    n_prompts: int = 10,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[LabelledSource]:
    """Templates x harmful prompts, labelled by the model's own reply: ``templates:all`` (not pooled) and
    ``templates:successful`` (the filled prompts the model did not refuse: jailbreaks that worked); with
    ``harmless``, the same templates filled with harmless prompts (``seed + 2``): ``templates:harmless``, the
    form-matched control (truth harmless whatever the model does; not pooled)."""
    from .. import datasets as ds

    if harmful is None and harmless is None:
        raise ValueError("give the prompts to fill the templates with (harmful and/or harmless)")
    tpl = ds.load_templates(templates).sample(n_templates, seed)
    out: list[LabelledSource] = []
    if harmful is not None:
        base = ds.load_file(harmful).sample(n_prompts, seed + 1)  # an independent draw from the templates'
        ids, insts, too_long = _fill(tpl, base)
        labels = _label(handle, insts, progress)
        ok = [lab is False for lab in labels]  # a failed generation (None) is not counted as a success
        prov = {
            "templates": tpl.provenance(),
            "harmful": base.provenance(),
            "n_templates": len(tpl),
            "n_prompts": len(base),
            "skipped_too_long": too_long,
            "successful_ids": [i for i, s in zip(ids, ok, strict=True) if s],
            "rule": "successful = the model's greedy reply to the filled prompt is not a refusal (substring rule)",
            "failed_generations": sum(lab is None for lab in labels),
        }
        succ = [(i, t) for i, t, s in zip(ids, insts, ok, strict=True) if s]
        out += [
            LabelledSource("templates:all", True, insts, ids, prov, pooled=False),
            LabelledSource("templates:successful", True, [t for _, t in succ], [i for i, _ in succ], prov),
        ]
    if harmless is not None:
        base = ds.load_file(harmless).sample(n_prompts, seed + 2)
        ids, insts, too_long = _fill(tpl, base)
        prov = {"templates": tpl.provenance(), "harmless": base.provenance(), "skipped_too_long": too_long}
        out.append(LabelledSource("templates:harmless", False, insts, ids, prov, pooled=False))
    return out


def _fill(tpl: Any, base: Any) -> tuple[list[str], list[str], int]:
    """(ids, filled prompts, how many were too long): every template x every prompt, normalised as the guard sees
    every prompt (trailing punctuation stripped)."""
    from .. import datasets as ds
    from ..positions import MAX_INSTRUCTION_CHARS

    ids: list[str] = []
    insts: list[str] = []
    too_long = 0
    for t in tpl.items:
        for h in base.items:
            filled = _normalized(ds.fill_template(t.instruction, _normalized(h.instruction)))
            if len(filled) > MAX_INSTRUCTION_CHARS:
                too_long += 1
                continue
            insts.append(filled)
            ids.append(f"{t.id}|{h.id}")
    if not insts:
        raise ValueError("no filled template fits the model's prompt limit")
    return ids, insts, too_long


def _label(handle: ModelHandle, insts: list[str], progress: Progress | None) -> list[bool | None]:
    """Refused flags of the model's greedy replies (substring rule, cached labels; None = the generation failed)."""
    from ..labels import label_refusals

    return [
        lab.refused for lab in label_refusals(handle, insts, progress=staged(progress, "labelling filled templates"))
    ]


def evaluate_scores(
    sources: Sequence[LabelledSource],
    scores: Mapping[str, np.ndarray],
    thresholds: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    """Per-source and overall figures (see the module docstring). ``scores[method]`` follows the concatenated order
    of ``sources``; ``thresholds[method]`` maps a threshold name ("0", "calibrated") to its value."""
    n_total = sum(len(s) for s in sources)
    for m, sc in scores.items():
        if len(sc) != n_total:
            raise ValueError(f"method {m}: one score per prompt ({len(sc)} scores for {n_total} prompts)")
    spans: list[tuple[int, int]] = []
    k = 0
    for src in sources:
        spans.append((k, k + len(src)))
        k += len(src)
    pooled_idx = np.array(
        [i for (a, b), src in zip(spans, sources, strict=True) if src.pooled for i in range(a, b)], dtype=int
    )
    truth = np.array([src.harmful for src in sources for _ in range(len(src))], dtype=bool)
    per_source = []
    for (a, b), src in zip(spans, sources, strict=True):
        row: dict[str, Any] = {"source": src.name, "truth": "harmful" if src.harmful else "harmless", "n": len(src)}
        row["pooled"] = src.pooled
        res: dict[str, Any] = {}
        other = pooled_idx[truth[pooled_idx] != src.harmful]
        for m, sc in scores.items():
            s_src = np.asarray(sc[a:b], dtype=np.float64)
            acc = {
                name: (float(((s_src >= t) == src.harmful).mean()) if len(s_src) else float("nan"))
                for name, t in thresholds[m].items()
            }
            vs = np.concatenate([s_src, np.asarray(sc, dtype=np.float64)[other]])
            lab = np.concatenate([np.full(len(s_src), src.harmful), np.full(len(other), not src.harmful)])
            res[m] = {
                "accuracy": acc,
                "auc": auc(vs, lab) if len(s_src) and len(other) else float("nan"),
                "mean_score": float(s_src.mean()) if len(s_src) else float("nan"),
            }
        row["methods"] = res
        per_source.append(row)
    overall: dict[str, Any] = {}
    y = truth[pooled_idx]
    for m, sc in scores.items():
        s = np.asarray(sc, dtype=np.float64)[pooled_idx]
        o: dict[str, Any] = {"n": len(s), "n_harmful": int(y.sum()), "auc": auc(s, y)}
        o["balanced_accuracy"] = {name: balanced_accuracy(s >= t, y) for name, t in thresholds[m].items()}
        o["tpr"] = {name: float((s[y] >= t).mean()) if y.any() else float("nan") for name, t in thresholds[m].items()}
        o["tnr"] = {
            name: float((s[~y] < t).mean()) if (~y).any() else float("nan") for name, t in thresholds[m].items()
        }
        overall[m] = o
    return {
        "methods": list(scores),
        "thresholds": {m: dict(t) for m, t in thresholds.items()},
        "sources": per_source,
        "overall": overall,
    }


def evaluate_sources(
    handle: ModelHandle,
    bundle: DirectionBundle,
    sources: Sequence[LabelledSource],
    methods: Sequence[str] = METHODS,
    *,
    normalize: bool | None = None,
    batch_size: int = 16,
    fit: bool = True,
    rows: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Capture once, score with every method, :func:`evaluate_scores`; plus timing and provenance (and, with
    ``rows``, every prompt's id, source and scores)."""
    sources = [s for s in sources if len(s)]
    if not sources:
        raise ValueError("the labelled sources hold no prompts")
    guards = guard_methods(bundle, methods, handle=handle, fit=fit, progress=progress)
    insts = [t for s in sources for t in s.instructions]
    unique = list(dict.fromkeys(insts))  # a prompt in two sources (all / successful jailbreaks) is captured once
    t0 = time.perf_counter()
    acts = t_inst_states(
        handle, bundle, unique, batch_size=batch_size, normalize=normalize, progress=staged(progress, "capturing")
    )
    seconds = time.perf_counter() - t0
    where = {t: k for k, t in enumerate(unique)}
    index = np.array([where[t] for t in insts], dtype=int)
    scores = {m: g.score(acts)[index] for m, g in guards.items()}
    out = evaluate_scores(sources, scores, {m: g.thresholds for m, g in guards.items()})
    out["provenance"] = {m: g.info for m, g in guards.items()}
    out["source_provenance"] = {s.name: s.provenance for s in sources}
    out["capture"] = {
        "prompts": len(unique),
        "seconds": round(seconds, 2),
        "prompts_per_second": round(len(unique) / seconds, 3) if seconds > 0 else None,
        "batch_size": batch_size,
        "device": str(handle.device),
    }
    if rows:
        out["rows"] = [
            {"id": i, "source": s.name, **{m: float(scores[m][k]) for m in scores}}
            for k, (s, i) in enumerate((s, i) for s in sources for i in s.ids)
        ]
    return out
