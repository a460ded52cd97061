"""The experiment registry: ONE table in which each of the paper's experiments is declared exactly once.

Contract:
- Each :class:`ExperimentInfo` row gives the experiment's ``name`` (the CLI, the file stem and the page key),
  ``title``, the paper's ``figure`` / table, the paper's claim (``paper``), the implementation ``impl(ctx,
  **options) -> (rows, notes)``, its ``options`` with their defaults (the common options ``labeller`` and ``seed``
  are added to every row), and the ``chart`` spec that both the PNG writer and the Experiments page render.
- ``EXPERIMENTS`` maps name -> info in the table's order (the order ``run_all`` runs them in). ``info.func`` is
  ``run_experiment`` bound to the name.
- An implementation's keyword parameters are exactly its own options (checked by the tests), so a default is
  written here and nowhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .ablation import directional_ablation
from .behaviour import latent_guard, refusal_template
from .beliefs import belief_curves, belief_scatter, jailbreak_plane
from .categories import category_directions
from .charts import ChartSpec
from .gated import gated_steering
from .interventions import reply_inversion, steer_refusal

if TYPE_CHECKING:
    from .results import ExperimentResult

__all__ = ["COMMON_OPTIONS", "EXPERIMENTS", "ExperimentInfo"]

COMMON_OPTIONS: dict[str, Any] = {"labeller": "substring", "seed": 0}

Impl = Callable[..., tuple[list[dict[str, Any]], list[str]]]


@dataclass(frozen=True)
class ExperimentInfo:
    """One experiment: its name, title, paper figure and claim, implementation, options (with defaults), chart."""

    name: str
    title: str
    figure: str
    paper: str
    impl: Impl
    options: dict[str, Any]
    chart: ChartSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", {**COMMON_OPTIONS, **self.options})

    @property
    def own_options(self) -> dict[str, Any]:
        """The experiment's own options and defaults (without ``labeller`` and ``seed``)."""
        return {k: v for k, v in self.options.items() if k not in COMMON_OPTIONS}

    @property
    def func(self) -> Callable[..., ExperimentResult]:
        """``run_experiment(name, handle, bundle=None, *, data, limit, out_dir, progress, **options)`` for this one."""
        from .runner import run_experiment

        return functools.partial(run_experiment, self.name)


_RATE = (0.0, 1.0)
_PLANE: dict[str, Any] = {
    "x": "delta_harmful",
    "y": "delta_refuse",
    "x_title": "Δ harmful (t_inst)",
    "y_title": "Δ refuse (t_post_inst)",
    "palette": "clusters",
    "zero": ("x", "y"),
}

_TABLE: tuple[ExperimentInfo, ...] = (
    ExperimentInfo(
        name="refusal-template",
        title="Refusal with and without post-instruction tokens",
        figure="Table 1",
        paper="Table 1: removing the post-instruction template tokens lowers the refusal rate on AdvBench harmful "
        "prompts (Llama2 100 -> 85.3%, Llama3 96.0 -> 58.9%, Qwen2 98.0 -> 81.3%).",
        impl=refusal_template,
        options={},
        chart=ChartSpec("bars", x="template", y="refusal_rate", y_title="refusal rate (harmful test)", y_domain=_RATE),
    ),
    ExperimentInfo(
        name="belief-curves",
        title="Per-layer belief scores at t_inst and t_post_inst",
        figure="Fig. 2",
        paper="Fig. 2: at t_inst accepted-harmful prompts score above 0 and refused-harmless below 0 (grouped by "
        "harmfulness); at t_post_inst the signs flip (grouped by refusal): from early layers in Llama3/Qwen2, after "
        "~layer 10 in Llama2.",
        impl=belief_curves,
        options={"post_positions": True},
        chart=ChartSpec(
            "lines",
            x="layer",
            y="mean",
            x_title="layer",
            y_title="mean s_l ± std",
            color="group",
            palette="clusters",
            facet="position",
            facets=("t_inst", "t_post_inst"),
            band="std",
            zero=("y",),
        ),
    ),
    ExperimentInfo(
        name="belief-scatter",
        title="Harmfulness belief vs refusal belief",
        figure="Fig. 3",
        paper="Fig. 3 (Llama2): refused-harmless prompts have negative Delta_harmful (~-0.1) yet Delta_refuse up to "
        "~0.19; many accepted-harmful prompts keep Delta_harmful > 0; refused harmful sit at ~(0.04-0.15, 0.22-0.33), "
        "accepted harmless at ~(-0.18..-0.03, -0.31..-0.1).",
        impl=belief_scatter,
        options={},
        chart=ChartSpec("scatter", color="cluster", **_PLANE),
    ),
    ExperimentInfo(
        name="steer-refusal",
        title="Refusal rate on harmless prompts, steering one layer",
        figure="Fig. 4",
        paper="Fig. 4: adding the refusal direction to harmless prompts elicits far more refusals than the "
        "harmfulness direction on Llama2/Qwen2 (Qwen2: refusal direction peaks at 81% at layer 16, harmfulness ~37% "
        "at layer 13; baseline ~5%); on Llama3 both exceed 90% in the middle layers.",
        impl=steer_refusal,
        options={"coeff": 1.0, "layers": None, "max_new_tokens": 32, "batch_size": 64, "n_prompts": 16},
        chart=ChartSpec(
            "lines",
            x="layer",
            y="refusal_rate",
            x_title="steered layer",
            y_title="refusal rate (harmless test)",
            color="direction",
            palette="directions",
            baseline=True,
            y_domain=_RATE,
        ),
    ),
    ExperimentInfo(
        name="reply-inversion",
        title="Reply inversion: steering the harmfulness judgement",
        figure="Fig. 5 / Table 2",
        paper="Fig. 5 (Qwen2): the harmfulness direction on the context drops the 'No' rate on harmless prompts from "
        "~95% to ~0-10% at layers 9-13 (they are now judged harmful) while the refusal direction keeps it at 72-98%; "
        "on harmful prompts the reversed harmfulness direction raises 'No' to ~42-52% at layers 12-13, the reversed "
        "refusal direction barely moves it (~0-2%).",
        impl=reply_inversion,
        options={
            "coeff": 2.0,
            "layers": None,
            "max_new_tokens": 12,
            "batch_size": 64,
            "n_prompts": 12,
            "question": 0,
            "directions": "main",
            "harm_positions": "context",
        },
        chart=ChartSpec(
            "lines",
            x="layer",
            y="no_rate",
            x_title="steered layer",
            y_title="share answering 'No'",
            color="direction",
            palette="directions",
            facet="prompts",
            baseline=True,
            y_domain=_RATE,
        ),
    ),
    ExperimentInfo(
        name="ablation",
        title="Directional ablation: refusal vs harmfulness direction",
        figure="Arditi et al. 2024",
        paper="Arditi et al.: ablating the refusal direction at every layer and position drops refusal on harmful "
        "prompts to near 0 (7B+ chat models). This paper's reading: that removes the refusal, not the harm "
        "judgement (the reply-inversion 'Certainly' stays), while ablating the harmfulness direction moves the "
        "judgement.",
        impl=directional_ablation,
        options={
            "row": None,
            "positions": "all",
            "max_new_tokens": 32,
            "inversion_tokens": 12,
            "batch_size": 64,
            "n_prompts": 32,
            "question": 0,
        },
        chart=ChartSpec("bars", x="ablated", y="rate", y_title="rate (harmful test)", color="task", y_domain=_RATE),
    ),
    ExperimentInfo(
        name="latent-guard",
        title="Latent Guard accuracy",
        figure="Table 3",
        paper="Table 3: the Latent Guard (Delta_harmful >= 0 at t_inst, no training) is accurate on refused-harmless "
        "(Llama2 100%, Llama3 78.5%, Qwen2 91.6%), accepted-harmful (93.9/59.3/54.6%) and template jailbreaks "
        "(100/100/53.5%), often beating Llama Guard 3.",
        impl=latent_guard,
        options={"threshold": 0.0, "n_jailbreak_prompts": 8, "n_templates": 24},
        chart=ChartSpec(
            "bars", x="set", y="accuracy", y_title="accuracy", color="guard", palette="roles", y_domain=_RATE
        ),
    ),
    ExperimentInfo(
        name="gated-steering",
        title="Guard-gated steering: +refusal only where the Latent Guard fires",
        figure="Extension (§5 + §3.4)",
        paper="Not in the paper: since the harmfulness belief survives jailbreaks that suppress refusal (§4-5), a "
        "latent guard can decide when to steer. Claim tested: gating +refusal steering by the guard keeps most of the "
        "refusal gain on harmful prompts the model answers while adding little over-refusal on harmless ones.",
        impl=gated_steering,
        options={
            "methods": "centroid,probe",
            "threshold": 0.0,
            "layer": None,
            "coeff": None,
            "layers": None,
            "coeffs": "1,2",
            "n_select": 16,
            "n_prompts": 48,
            "n_jailbreak_prompts": 8,
            "n_templates": 24,
            "max_new_tokens": 32,
            "batch_size": 64,
        },
        chart=ChartSpec("bars", x="set", y="refusal_rate", y_title="refusal rate", color="condition", y_domain=_RATE),
    ),
    ExperimentInfo(
        name="jailbreaks",
        title="Template jailbreaks on the belief plane",
        figure="Fig. 6",
        paper="Fig. 6: successful jailbreaks have negative Delta_refuse (~-0.05 to -0.2 vs ~+0.3 for refused harmful) "
        "while template jailbreaks keep Delta_harmful >= 0 (~0.06-0.14): they suppress refusal, not the harmfulness "
        "belief.",
        impl=jailbreak_plane,
        options={"n_jailbreak_prompts": 8, "n_templates": 24},
        chart=ChartSpec("scatter", color="kind", **_PLANE),
    ),
    ExperimentInfo(
        name="category-directions",
        title="Per-category harmfulness directions",
        figure="LessWrong reply",
        paper="Harmfulness directions vary by risk category (released Qwen2 files: mean pairwise cosine 0.58-0.69 per "
        "layer; cosine with the general direction 0.47-0.71 at layer 20), while refusal directions are more "
        "consistent.",
        impl=category_directions,
        options={"source": "auto"},
        chart=ChartSpec(
            "lines",
            x="layer",
            y="cosine",
            x_title="layer",
            y_title="cosine with 'general'",
            color="b",
            where=(("a", "general"),),
            y_domain=(-1.0, 1.0),
        ),
    ),
)

EXPERIMENTS: dict[str, ExperimentInfo] = {info.name: info for info in _TABLE}
if len(EXPERIMENTS) != len(_TABLE):  # pragma: no cover - a duplicated row is a programming error
    raise RuntimeError("an experiment name is declared twice in the registry")
