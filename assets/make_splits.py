#!/usr/bin/env python3
"""Deterministic train/test split for the built-in instruction sets.

Records how the `split` field stored in every assets/*.jsonl row was made,
and can re-create it:  python3 assets/make_splits.py  (rewrites the files in
place; running it again changes nothing because the rule is deterministic).

Rule, applied to each file separately:
  * one rng = random.Random(20251130) per file;
  * categories are visited in sorted order; inside a category the rows are
    grouped into strata by how the instruction ends ("?", "." or anything
    else). The last token dominates the residual stream at the position the
    engine reads, so train and test must keep the same ending mix;
  * each stratum's ids are sorted and then shuffled with rng (strata visited
    in sorted order: "", ".", "?");
  * the category gets n_train = round(0.6 * n) train rows (at least one train
    and one test row when n >= 2); each stratum first gets floor(0.6 * n_s),
    and the leftover train slots go to the strata with the largest fractional
    remainder (ties broken by a draw from rng);
  * inside each stratum the first k_s shuffled ids are "train", the rest
    "test".
Row order in the files is not changed.
"""

import json
import math
import random
import sys
from collections import defaultdict
from pathlib import Path

SEED = 20251130
TRAIN_FRACTION = 0.6
FILES = [
    "harmful.jsonl",
    "harmless.jsonl",
    "harmless_sounds_harmful.jsonl",
    "jailbreak_templates.jsonl",
    "inversion_questions.jsonl",
]


def stratum(text):
    """Ending class of an instruction: '?', '.' or '' (anything else)."""
    last = text.rstrip()[-1:]
    return last if last in ("?", ".") else ""


def assign_splits(rows):
    """Set row["split"] in place for a list of dict rows (one file)."""
    rng = random.Random(SEED)
    by_cat = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_cat[row["category"]][stratum(row["instruction"])].append(row["id"])
    split_of = {}
    for cat in sorted(by_cat):
        strata = by_cat[cat]
        n = sum(len(v) for v in strata.values())
        n_train = round(TRAIN_FRACTION * n)
        if n >= 2:
            n_train = min(max(n_train, 1), n - 1)
        shuffled, quota, rank = {}, {}, []
        for key in sorted(strata):
            ids = sorted(strata[key])
            rng.shuffle(ids)
            shuffled[key] = ids
            exact = TRAIN_FRACTION * len(ids)
            quota[key] = math.floor(exact)
            rank.append((-(exact - quota[key]), rng.random(), key))
        leftover = n_train - sum(quota.values())
        for _, _, key in sorted(rank)[: max(leftover, 0)]:
            quota[key] += 1
        for key, ids in shuffled.items():
            for i, id_ in enumerate(ids):
                split_of[id_] = "train" if i < quota[key] else "test"
    for row in rows:
        row["split"] = split_of[row["id"]]
    return rows


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def save(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    here = Path(__file__).resolve().parent
    for name in FILES:
        path = here / name
        if not path.exists():
            print(f"skip {name} (missing)", file=sys.stderr)
            continue
        rows = assign_splits(load(path))
        save(path, rows)
        n_train = sum(r["split"] == "train" for r in rows)
        print(f"{name}: {len(rows)} rows, {n_train} train, {len(rows) - n_train} test")


if __name__ == "__main__":
    main()
