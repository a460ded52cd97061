"""The ``st.session_state`` keys the app reads and writes, in one place (use these names, never string literals).

Each session holds small values only (see pages/_common.py): the chosen model spec, per-page results to redraw on
the next run, and the report log. A widget's own key (``key="steer_coeff"``) stays next to its widget: it is written
once, by that widget call, and the tests address widgets by it; the keys below are the ones code reads or writes.
The values are part of the app's behaviour (tests/test_app.py reads several of them): do not rename them lightly.
"""

from __future__ import annotations

# the frame (app.py) and pages/_common.py
SPEC = "model_spec"  # ModelSpec chosen in the sidebar, or None while no model is chosen
MODEL_ERROR = "model_error"  # why the chosen model could not be loaded (str), absent when it loaded
OVERRIDE = "directions_override"  # {"spec", "bundle", "source"}: uploaded or recomputed directions for one model
LOG = "report_log"  # list of events for the Report page (pages/_common.log_event)

# Steer
STEER_UPLOADED = "steer_uploaded"  # {"name", "bundle"}: a directions file uploaded on the Steer page
STEER_GATED_RESULT = "steer_gated_result"  # {"rows", "label"}: the last guard-gated run (svc.gated_side_by_side)
STEER_RESULT = "steer_result"  # {"rows", "label", "settings", "system_prompt"}: the last side-by-side run
STEER_TOPK_STEP_PREFIX = "steer_topk_step_"  # widget key prefix of the next-token step slider (+ row index)
SWEEP_RESULT = "sweep_result"  # {"records", "settings", "direction"}: the last sweep
SWEEP_LAST_CLICK = "sweep_last_click"  # the cell label last clicked in the sweep heatmap
SWEEP_CLICKS = "sweep_clicks"  # how many cells were clicked (gives the cell picker a fresh widget key)
SWEEP_CELL_PREFIX = "sweep_cell_"  # widget key prefix of the cell picker (followed by SWEEP_CLICKS)

# Clusters
CLUSTERS_POINTS = "clusters_points"  # {position: {"n", "n_yours"}}: points drawn in each map
CLUSTERS_LAST = "clusters_last"  # the last t_inst map frame (for "Add this map to the report")

# Latent Guard
GUARD_RESULT = "guard_result"  # {"prompts", "scores", "method"}: the last classification
GUARD_EVAL = "guard_eval"  # {"sets", "scores": {method: scores}, "refused"}: the last evaluation
GUARD_METHOD_KEY = "guard_method"  # the method selector (centroid = the paper's guard, lda, probe, lda-band)
GUARD_THRESHOLD_KEY = "guard_threshold"  # the centroid guard's threshold slider; readers: "guard_threshold_<method>"


def guard_threshold_key(method: str) -> str:
    """The session-state key of a guard method's threshold slider (written by the page's buttons too)."""
    return GUARD_THRESHOLD_KEY if method == "centroid" else f"{GUARD_THRESHOLD_KEY}_{method}"


# Directions
DIR_RECOMPUTE_SUMMARY = "dir_recompute_summary"  # summary of the last recompute from prompt files
DIR_COSINE_CI = "dir_cosine_ci"  # {"key": bundle key, "ci": CosineInterval}: an interval computed on demand

# Experiments
EXP_RESULTS = "exp_results"  # {experiment name: ExperimentResult}: this session's own runs
EXP_OUT_DIR = "exp_out_dir"  # a temporary folder for this session's experiment files
