"""Trace overhead: tokens per CPU second (and per wall second) of generate_rows with and without per-token traces,
the same model and batch in one process, variants interleaved (order alternating) over repeats; 1 torch thread so
that CPU time measures the work, not OpenMP spinning against the other processes on a shared machine."""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch

torch.set_num_threads(1)
from engine.models import load_model  # noqa: E402
from engine.precompute import default_directions  # noqa: E402
from engine.steering import GenerationConfig, SteeringSpec, TraceSpec, generate_rows  # noqa: E402

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
new = int(sys.argv[2]) if len(sys.argv) > 2 else 32
h = load_model("default")
b = default_directions(h)
L = h.n_layers
insts = ["Write a short poem about the ocean.", "How do I make a bomb at home?"]
spec = SteeringSpec(b.harmfulness.vectors, (L // 2,), 1.0)
items = [x for i in insts for x in (i, i)]
specs = [s for _ in insts for s in (None, spec)]
cfg = GenerationConfig(max_new_tokens=new, batch_size=16)
dirs = {"harmfulness": b.harmfulness.vectors, "refusal": b.refusal.vectors}
variants = {
    "off": None,
    "1 row x 2 dirs": TraceSpec(dirs, (L // 2,)),
    f"all {L + 1} rows x 2 dirs": TraceSpec(dirs, tuple(range(L + 1))),
}
generate_rows(h, items, specs, GenerationConfig(max_new_tokens=4))  # warm-up
cpu = {k: [] for k in variants}
wall = {k: [] for k in variants}
ntok = {}
for r in range(reps):
    order = list(variants) if r % 2 == 0 else list(reversed(variants))
    for k in order:
        c0, t0 = time.process_time(), time.perf_counter()
        outs = generate_rows(h, items, specs, cfg, trace=variants[k])
        dc, dt = time.process_time() - c0, time.perf_counter() - t0
        n = sum(len(o.token_ids) for o in outs)
        ntok.setdefault(k, n)
        assert n == ntok[k]
        cpu[k].append(n / dc)
        wall[k].append(n / dt)
        print(
            json.dumps({"rep": r, "variant": k, "tokens": n, "cpu_s": round(dc, 3), "wall_s": round(dt, 3)}), flush=True
        )
res = {"threads": torch.get_num_threads(), "rows": len(items), "max_new_tokens": new, "tokens": ntok}
for k in variants:
    if k == "off":
        continue
    rc = [a / b_ for a, b_ in zip(cpu[k], cpu["off"], strict=True)]
    rw = [a / b_ for a, b_ in zip(wall[k], wall["off"], strict=True)]
    res[k] = {
        "cpu tok/s ratio median": round(statistics.median(rc), 4),
        "cpu tok/s ratio all": [round(x, 4) for x in rc],
        "wall tok/s ratio median": round(statistics.median(rw), 4),
        "median cpu tok/s (traced, off)": (
            round(statistics.median(cpu[k]), 2),
            round(statistics.median(cpu["off"]), 2),
        ),
        "median wall tok/s (traced, off)": (
            round(statistics.median(wall[k]), 2),
            round(statistics.median(wall["off"]), 2),
        ),
    }
print("RESULT " + json.dumps(res))
