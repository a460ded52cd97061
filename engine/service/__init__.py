"""UI-facing functions over the engine: plain data in, plain data (dicts, numpy, pandas) out.

The face of a package with one module per page; ``from engine import service as svc`` and every ``svc.NAME``
below keep working whichever module holds the name:

- ``core``       shared constants (POSITIONS, USER_ERRORS, cluster display names), ``default_layer``
- ``models``     model choice (registry, ``$STEERING_EXPLORER_MODEL``), loading, the sidebar's status
- ``directions`` direction names, norm / cosine frames, bundle download / upload / recompute
- ``uploads``    typed instructions and coefficients, uploaded prompt files and labelled files
- ``steer``      the Steer page: settings, side by side, the layers x coefficients sweep and its tables
- ``maps``       the Clusters and Inspect pages: reference captures, cluster maps, separation, inspection
- ``guard``      the Latent Guard page: scores by method, evaluation, ROC and confusion frames; guard-gated steering
- ``report``     the Report page: JSON / Markdown report, CSV bytes
- ``experiments`` the Experiments page: the registry, running one, the committed reproduction results
- ``limits``     bounded work: row caps on uploads and the time budget of long runs (one place, env overrides)

Contract:
- No Streamlit import, no torch code and no colours here: every hooked or generating run goes through the engine
  modules (which hold ``handle.lock``); colours come from ``assets/palette.json`` through :func:`palette` /
  :func:`color` (re-exported from ``engine.palette`` for the app's charts). The app's pages and ``app.py`` import
  this package only, so everything a page shows is testable without a browser.
- User input is validated with ``ValueError`` whose message says what to fix; engine errors (``ModelError``,
  ``StorageError``, ``DatasetError``, all ``ValueError`` or ``RuntimeError`` subclasses) pass through unchanged so
  the page can show them with ``st.error``. :data:`USER_ERRORS` is the tuple a page catches.
- Layer numbers follow ``engine.capture.LAYER_CONVENTION``: row l < L is the input of block l; steering adds
  ``c * v[l]`` at the input of block l, so steerable layers are 0..L-1 and captured rows 0..L.
- Hidden states of the built-in reference prompts are held in a :class:`Reference`:
  ``acts`` (n_prompts, 2, L+1, d) CPU float32 at (t_inst, t_post_inst), with their labelled records.
"""

from __future__ import annotations

from ..palette import color, palette
from .core import (
    CLUSTER_KEYS,
    CLUSTER_LABELS,
    POSITIONS,
    USER_ERRORS,
    YOUR_PROMPTS,
    cluster_counts_text,
    default_layer,
)
from .directions import (
    ControlVectorDownload,
    CosineInterval,
    DirectionBundle,
    bundle_bytes,
    bundle_key,
    control_vector_download,
    control_vector_rows,
    cosine_across_layers,
    cosine_interval_frame,
    cosine_interval_on_demand,
    cosine_matrix,
    normalize_like,
    normalizes_instructions,
    norms_frame,
    provenance_json,
    read_bundle_upload,
    recompute_directions,
    steerable_directions,
    stored_cosine_interval,
)
from .experiments import ChartSpec, StoredResults, experiment_infos, run_one, stored_results
from .guard import (
    GUARD_METHODS,
    available_methods,
    confusion,
    confusion_frame,
    evaluate_guard,
    gated_side_by_side,
    guard_eval_sets,
    guard_frame,
    guard_method_info,
    method_label,
    method_points,
    method_scores,
    method_scores_bounded,
    operating_points,
    per_source_frame,
    refusal_baseline,
    refusal_baseline_bounded,
    roc_frame,
    roc_frames,
    threshold_range,
    truncate_sets,
)
from .limits import Budget, RunBudgetExceeded, cap_rows, check_rows, max_rows, max_run_s
from .maps import (
    BELIEF_SERIES,
    Inspection,
    Reference,
    belief_frame,
    build_reference,
    capture_instructions,
    cluster_map,
    delta_point,
    inspect_instruction,
    reference_deltas,
    separation,
    token_frame,
    token_projection_frame,
)
from .models import (
    MODEL_ENV,
    ModelError,
    ModelHandle,
    ModelSpec,
    default_model_name,
    install_state,
    load_directions,
    load_handle,
    load_model,
    model_choices,
    model_label,
    model_status,
    pack_in_background,
)
from .report import csv_bytes, report_json, report_markdown, to_jsonable
from .steer import (
    COLUMNS,
    MAX_SWEEP_ROWS,
    SteerSettings,
    default_sweep_layers,
    kl_frame,
    kl_note,
    steer_side_by_side,
    steer_sweep,
    sweep_cell,
    sweep_cell_label,
    sweep_table,
    text_rows,
    topk_frame,
    trace_frame,
)
from .uploads import (
    MAX_INSTRUCTIONS,
    parse_coeffs,
    parse_instructions,
    parse_labelled_upload,
    read_prompt_upload,
)

__all__ = [
    "BELIEF_SERIES",
    "CLUSTER_KEYS",
    "CLUSTER_LABELS",
    "COLUMNS",
    "GUARD_METHODS",
    "MAX_INSTRUCTIONS",
    "MAX_SWEEP_ROWS",
    "MODEL_ENV",
    "POSITIONS",
    "USER_ERRORS",
    "YOUR_PROMPTS",
    "Budget",
    "ChartSpec",
    "ControlVectorDownload",
    "CosineInterval",
    "DirectionBundle",
    "Inspection",
    "ModelError",
    "ModelHandle",
    "ModelSpec",
    "Reference",
    "RunBudgetExceeded",
    "SteerSettings",
    "StoredResults",
    "available_methods",
    "belief_frame",
    "build_reference",
    "bundle_bytes",
    "bundle_key",
    "cap_rows",
    "capture_instructions",
    "check_rows",
    "cluster_counts_text",
    "cluster_map",
    "color",
    "confusion",
    "confusion_frame",
    "control_vector_download",
    "control_vector_rows",
    "cosine_across_layers",
    "cosine_interval_frame",
    "cosine_interval_on_demand",
    "cosine_matrix",
    "csv_bytes",
    "default_layer",
    "default_model_name",
    "default_sweep_layers",
    "delta_point",
    "evaluate_guard",
    "experiment_infos",
    "gated_side_by_side",
    "guard_eval_sets",
    "guard_frame",
    "guard_method_info",
    "inspect_instruction",
    "install_state",
    "kl_frame",
    "kl_note",
    "load_directions",
    "load_handle",
    "load_model",
    "max_rows",
    "max_run_s",
    "method_label",
    "method_points",
    "method_scores",
    "method_scores_bounded",
    "model_choices",
    "model_label",
    "model_status",
    "normalize_like",
    "normalizes_instructions",
    "norms_frame",
    "operating_points",
    "pack_in_background",
    "palette",
    "parse_coeffs",
    "parse_instructions",
    "parse_labelled_upload",
    "per_source_frame",
    "provenance_json",
    "read_bundle_upload",
    "read_prompt_upload",
    "recompute_directions",
    "reference_deltas",
    "refusal_baseline",
    "refusal_baseline_bounded",
    "report_json",
    "report_markdown",
    "roc_frame",
    "roc_frames",
    "run_one",
    "separation",
    "steer_side_by_side",
    "steer_sweep",
    "steerable_directions",
    "stored_cosine_interval",
    "stored_results",
    "sweep_cell",
    "sweep_cell_label",
    "sweep_table",
    "text_rows",
    "threshold_range",
    "to_jsonable",
    "token_frame",
    "token_projection_frame",
    "topk_frame",
    "trace_frame",
    "truncate_sets",
]
