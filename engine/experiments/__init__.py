"""The paper's experiments (Zhao et al., NeurIPS 2025), as functions that return flat records and write figures.

Contract:
- ``EXPERIMENTS`` (``registry``) maps a name to an :class:`ExperimentInfo`: title, the paper's figure and claim,
  the implementation, its options with their defaults, and the chart spec; each experiment is declared there once.
- ``run_experiment(name, handle, bundle, data=..., limit=..., out_dir=...)`` runs one and returns an
  :class:`ExperimentResult`; ``run_all`` runs several on one shared context and writes ``index.json`` / ``index.md``
  (``runner``).
- Held-out discipline: directions and centroids come from the **train** split of ``data`` (:class:`ExperimentData`,
  ``data``); every reported number is measured on the **test** split; a test instruction that also occurs in the
  train data is dropped (``context``).
- Rates and accuracies are **fractions** in [0, 1] (the paper prints percentages); an empty group gives ``None``
  (``results``). Figures are drawn from the registry's :class:`ChartSpec` (``charts``, ``figures``).
- Steering sweeps are one call of :func:`engine.steering.grid` (``interventions``).

Modules: ``data`` (which prompts), ``context`` (the shared run context), ``behaviour`` / ``beliefs`` /
``interventions`` / ``categories`` (the eight experiments), ``charts`` / ``figures`` / ``results`` (what comes out),
``registry`` (the one table), ``runner`` (running them).
"""

from __future__ import annotations

from .charts import ChartSpec
from .context import GROUPS, RunContext, resolve_bundle
from .data import ExperimentData
from .interventions import score_inversion, steer_refusal_sweep
from .registry import COMMON_OPTIONS, EXPERIMENTS, ExperimentInfo
from .results import ExperimentResult
from .runner import run_all, run_experiment

__all__ = [
    "COMMON_OPTIONS",
    "EXPERIMENTS",
    "GROUPS",
    "ChartSpec",
    "ExperimentData",
    "ExperimentInfo",
    "ExperimentResult",
    "RunContext",
    "resolve_bundle",
    "run_all",
    "run_experiment",
    "score_inversion",
    "steer_refusal_sweep",
]
