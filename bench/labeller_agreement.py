"""Agreement of the two refusal labellers on the built-in sets (both splits).

    python bench/labeller_agreement.py --model default --out bench/results

substring = greedy generation (48 new tokens, cached) + the paper's phrase list; logodds = log-odds of a
refusal-start token at the first generated position > 0 (one forward pass). Prints per set: refusal rate by each,
agreement, and the confusion counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.datasets import load_builtin, normalize_instruction  # noqa: E402
from engine.labels import agreement, label_refusals  # noqa: E402
from engine.models import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    h = load_model(args.model)
    rows = []
    for name in ("harmful", "harmless", "harmless_sounds_harmful"):
        for split in ("train", "test"):
            insts = [normalize_instruction(t) or t for t in load_builtin(name, split).instructions()]
            sub = label_refusals(h, insts, labeller="substring")
            lo = label_refusals(h, insts, labeller="logodds")
            both = [(a.refused, b.refused) for a, b in zip(sub, lo, strict=True)]
            n = len(both)
            row = {
                "set": name,
                "split": split,
                "n": n,
                "refusal_rate_substring": sum(a for a, _ in both) / n,
                "refusal_rate_logodds": sum(b for _, b in both) / n,
                "agreement": agreement(sub, lo),
                "substring_only": sum(a and not b for a, b in both),
                "logodds_only": sum(b and not a for a, b in both),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"labeller_agreement-{args.model}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
