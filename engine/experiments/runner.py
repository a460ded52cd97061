"""Running experiments: ``run_experiment`` (one) and ``run_all`` (several on one shared context, with an index).

Contract:
- ``run_experiment(name, handle, bundle, data=..., limit=..., out_dir=..., progress=..., **options)`` checks the
  name and options against the registry, runs the experiment on a fresh :class:`~.context.RunContext` and returns
  an :class:`~.results.ExperimentResult` (flat rows; ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png`` under
  ``out_dir`` when given; ``stem`` is the name, or ``<name>-<labeller>`` for a labeller other than substring).
- ``run_all`` runs every experiment (or ``names``) on ONE context (labels, activations and directions computed
  once) and writes ``index.json`` and ``index.md`` (atomically); an experiment that fails is recorded with its
  error and the others still run. The index says what failed: ``index["failed"]`` lists the failed experiments'
  names (empty when all ran) and ``index["ok"]`` is ``not failed``; a caller (the CLI) must report a failure
  (non-zero exit) when ``failed`` is not empty. Options go to every chosen experiment that has an option of that
  name; a key none of them knows is an error.
- Common options for every experiment: ``labeller`` ('substring' | 'logodds') and ``seed`` (for the seeded caps).
- ``progress(stage, done, total)`` is called during the long parts, stages labelled ``"<experiment>: ..."``.

Cost of ``run_all`` (built-in data, ``default`` model, default options): the two steering sweeps (see
``interventions``: ~57k and ~90k token forwards) plus labels of the 232 test prompts (~21k), the generations
without post-instruction tokens (~8k), 21 templates x 8 prompts (~20k) and captures (~35k).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import atomic
from ..directions import DirectionBundle
from ..models import ModelHandle
from ..progress import Progress
from .context import RunContext
from .data import ExperimentData
from .registry import COMMON_OPTIONS, EXPERIMENTS
from .results import ExperimentResult, md_table, write_files

__all__ = ["run_all", "run_experiment"]


def _check_names(names: Sequence[str]) -> None:
    for n in names:
        if n not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {n!r}; known: {', '.join(EXPERIMENTS)}")


def _context(
    handle: ModelHandle,
    bundle: DirectionBundle | None,
    data: ExperimentData | None,
    limit: int | None,
    progress: Progress | None,
    options: dict[str, Any],
) -> RunContext:
    """The shared context, with the common options (labeller, seed) taken from ``options``."""
    return RunContext(
        handle,
        bundle,
        data,
        limit,
        progress,
        labeller=options.get("labeller", COMMON_OPTIONS["labeller"]),
        seed=int(options.get("seed", COMMON_OPTIONS["seed"])),
    )


def _run(name: str, ctx: RunContext, out_dir: str | Path | None, options: dict[str, Any]) -> ExperimentResult:
    info = EXPERIMENTS[name]
    used = {k: options.get(k, v) for k, v in info.own_options.items()}
    ctx.experiment = name
    t0 = time.perf_counter()
    rows, notes = info.impl(ctx, **used)
    dt = time.perf_counter() - t0
    notes = [
        *notes,
        *ctx.note_common(),
        f"options: {json.dumps(used, default=str)}; limit: {ctx.limit}",
        f"took {dt:.1f} s",
    ]
    res = ExperimentResult(
        name=name,
        model=ctx.handle.spec.name,
        rows=rows,
        title=info.title,
        paper=info.paper,
        notes=notes,
        seconds=round(dt, 2),
        chart=info.chart,
    )
    if out_dir is not None:
        stem = name if ctx.labeller == "substring" else f"{name}-{ctx.labeller}"
        write_files(res, Path(out_dir), stem)
    return res


def run_experiment(
    name: str,
    handle: ModelHandle,
    bundle: DirectionBundle | None = None,
    *,
    data: ExperimentData | None = None,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> ExperimentResult:
    """Run one experiment (see ``EXPERIMENTS[name].options`` for its options and defaults).

    Common options: ``labeller`` ('substring' | 'logodds'; files are then named ``<name>-logodds.*``) and ``seed``
    (for the seeded caps).
    """
    _check_names([name])
    allowed = EXPERIMENTS[name].options
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for {name}; known: {sorted(allowed)}")
    return _run(name, _context(handle, bundle, data, limit, progress, options), out_dir, options)


def run_all(
    handle: ModelHandle,
    bundle: DirectionBundle | None = None,
    *,
    data: ExperimentData | None = None,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    names: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run every experiment (or ``names``) with one shared context; write ``index.json`` and ``index.md``.

    ``options`` go to every experiment that has an option of that name (``labeller`` and ``seed`` to all); a key
    that none of the chosen experiments knows is an error. An experiment that fails is recorded with its error and
    the others still run. Returns the index.
    """
    t0 = time.perf_counter()
    names = list(names) if names is not None else list(EXPERIMENTS)
    _check_names(names)
    known = set().union(*(EXPERIMENTS[n].options for n in names))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for {', '.join(names)}; known: {', '.join(sorted(known))}"
        )
    per_exp = {n: {k: v for k, v in options.items() if k in EXPERIMENTS[n].options} for n in names}
    ctx = _context(handle, bundle, data, limit, progress, options)
    entries: list[dict[str, Any]] = []
    results: dict[str, ExperimentResult] = {}
    for i, n in enumerate(names):
        if progress:
            progress(f"experiment {n}", i, len(names))
        try:
            res = _run(n, ctx, out_dir, per_exp[n])
        except Exception as e:  # keep going; the index says what failed
            entries.append(
                {
                    "name": n,
                    "title": EXPERIMENTS[n].title,
                    "paper": EXPERIMENTS[n].paper,
                    "error": f"{type(e).__name__}: {e}",
                }
            )
            continue
        results[n] = res
        entries.append(
            {
                "name": n,
                "title": res.title,
                "paper": res.paper,
                "files": res.files,
                "notes": res.notes,
                "n_rows": len(res.rows),
                "seconds": res.seconds,
            }
        )
    if progress:
        progress("experiments done", len(names), len(names))
    failed = [e["name"] for e in entries if "error" in e]
    index = {
        "ok": not failed,
        "failed": failed,
        "model": handle.spec.name,
        "model_id": handle.model_id,
        "limit": limit,
        "options": options,
        "directions": ctx.bundle_note,
        "data": ctx.data.describe(),
        "experiments": entries,
        "seconds": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if out_dir is not None:
        _write_index(index, entries, results, Path(out_dir), handle, ctx.bundle_note, limit)
    return index


def _write_index(
    index: dict[str, Any],
    entries: list[dict[str, Any]],
    results: dict[str, ExperimentResult],
    out: Path,
    handle: ModelHandle,
    bundle_note: str,
    limit: int | None,
) -> None:
    atomic.write_json(out / "index.json", index)
    md = [
        f"# Experiments: {handle.spec.name} ({handle.model_id})",
        "",
        f"{bundle_note}. Limit: {limit}. Total {index['seconds']} s.",
        "",
    ]
    if index["failed"]:
        md += [f"**{len(index['failed'])} experiment(s) FAILED:** {', '.join(index['failed'])}", ""]
    for e in entries:
        md += [f"## {e['name']}: {e['title']}", "", f"**Paper.** {e['paper']}", ""]
        if "error" in e:
            md += [f"**FAILED:** {e['error']}", ""]
            continue
        res = results[e["name"]]
        md += ["**Here.**", ""] + [f"- {n}" for n in res.notes] + [""]
        if len(res.rows) <= 14:
            md += [*md_table(res.rows), ""]
        md += ["Files: " + ", ".join(f"[{Path(f).name}]({Path(f).name})" for f in res.files), ""]
    atomic.write_text(out / "index.md", "\n".join(md))
