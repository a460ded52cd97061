"""The Experiments page: the registry, running one experiment, and the committed reproduction results.

Contract:
- ``experiment_infos()`` is the registry (``engine.experiments.EXPERIMENTS``) in its order; ``run_one`` runs one
  experiment on the loaded model (``engine.experiments.run_experiment``).
- ``stored_results(model)`` reads the committed reproduction of ``model`` on the built-in sets
  (``docs/reproduction/<model>/builtin/<experiment>.json``, written by ``python -m engine reproduce all --model
  <model> --out docs/reproduction/<model>/builtin``), so the page shows the paper-vs-model comparison before anything
  runs. Unreadable files are skipped (their paths listed in ``StoredResults.problems``), never raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..experiments import EXPERIMENTS, ChartSpec, ExperimentInfo, ExperimentResult, run_experiment
from ..experiments.results import load_result
from ..models import ModelHandle
from ..progress import Progress
from ..resources import project_root

__all__ = ["REPRODUCTION_DIR", "ChartSpec", "StoredResults", "experiment_infos", "run_one", "stored_results"]

REPRODUCTION_DIR = project_root() / "docs" / "reproduction"  # checkout, or the installed package data


def experiment_infos() -> dict[str, ExperimentInfo]:
    return dict(EXPERIMENTS)


def run_one(
    name: str,
    handle: ModelHandle,
    bundle: Any,
    *,
    limit: int | None,
    out_dir: Path,
    progress: Progress | None = None,
) -> ExperimentResult:
    return run_experiment(name, handle, bundle, limit=limit, out_dir=out_dir, progress=progress)


@dataclass
class StoredResults:
    """The committed results of one model (name -> result) and the folder they came from."""

    folder: Path
    results: dict[str, ExperimentResult] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def stored_results(model: str, data: str = "builtin", root: Path | None = None) -> StoredResults:
    """The committed reproduction results of ``model`` (see the module docstring); empty when there are none."""
    folder = (root or REPRODUCTION_DIR) / model.replace("/", "_") / data
    out = StoredResults(folder=folder)
    if not folder.is_dir():
        return out
    for name, info in EXPERIMENTS.items():
        p = folder / f"{name}.json"
        if not p.is_file():
            continue
        try:
            out.results[name] = load_result(p, info.chart)
        except ValueError as e:
            out.problems.append(str(e))
    return out
