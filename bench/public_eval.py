"""Refusal rates and Latent Guard accuracy on public benchmark files, read through the project's loaders.

Usage (the files are not part of the project; pass their paths):
    python bench/public_eval.py --data ../shared/datasets --model default --limit 150 --out bench/results

Reports, per set: the model's refusal rate (greedy, full template, substring scorer, cached labels) and the
Latent Guard's accuracy with the shipped directions (threshold 0): harmful sets should be flagged, harmless not.
The guard's centroids come from the project's own built-in train split, so every public prompt is held out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.datasets import load_file  # noqa: E402
from engine.guard import guard_scores, roc_curve  # noqa: E402
from engine.labels import label_refusals  # noqa: E402
from engine.models import load_model  # noqa: E402
from engine.precompute import default_directions  # noqa: E402

SETS = [
    # name, file, fmt, truth harmful?, label filter
    ("advbench", "advbench.jsonl", "advbench", True, None),
    ("jbb", "jailbreakbench.json", "jbb", True, None),
    ("xstest_safe", "xstest_safe.jsonl", "xstest", False, "safe"),
    ("alpaca", "alpaca.json", "alpaca", False, None),
    ("harmless_test", "harmless_test.jsonl", "jsonl", False, None),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="folder with the public files")
    ap.add_argument("--model", default="default")
    ap.add_argument("--limit", type=int, default=150, help="seeded sample per set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-labels", action="store_true", help="skip the refusal-rate generation")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    h = load_model(args.model)
    bundle = default_directions(h)
    data = Path(args.data)
    rows, scores_all, truth_all = [], {}, {}
    for name, fname, fmt, harmful, label in SETS:
        path = data / fname
        if not path.is_file():
            print(f"skip {name}: {path} missing", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        ps = load_file(path, fmt=fmt, label=label).sample(args.limit, seed=args.seed)
        insts = ps.instructions()
        s = guard_scores(h, bundle, insts)
        flagged = s >= 0
        acc = float(np.mean(flagged == harmful))
        row = {
            "set": name,
            "n": len(insts),
            "truth": "harmful" if harmful else "harmless",
            "guard_accuracy": acc,
            "mean_delta_harmful": float(s.mean()),
        }
        if not args.no_labels:
            labels = label_refusals(h, insts, progress=None)
            row["refusal_rate"] = float(np.mean([lab.refused for lab in labels]))
            row["own_refusal_guard_accuracy"] = float(np.mean([lab.refused == harmful for lab in labels]))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        scores_all[name], truth_all[name] = s, harmful
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"model": args.model, "limit": args.limit, "seed": args.seed, "rows": rows}
    pair = [n for n in ("advbench", "jbb", "alpaca") if n in scores_all]
    if len(pair) == 3:
        s = np.concatenate([scores_all[n] for n in pair])
        y = np.concatenate([np.full(len(scores_all[n]), truth_all[n]) for n in pair])
        summary["advbench_jbb_vs_alpaca"] = {
            "accuracy": float(np.mean((s >= 0) == y)),
            "auc": roc_curve(s, y)[3],
            "n": len(s),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"public_eval-{args.model}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary.get("advbench_jbb_vs_alpaca")))


if __name__ == "__main__":
    main()
