"""Benchmarks for BENCHMARKS.md. Run: ``python bench/run_benchmarks.py [NAME ...] [--model default] [--out bench/results]``.

Each benchmark prints one JSON line and writes ``<out>/<name>.json``; medians over repeats. Names:
hooks, decode, side_by_side, load, sweep, umap, precompute, app_start. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.capture import capture, pad_batch, position_ids_for, prepare  # noqa: E402
from engine.models import ModelSpec, load_model  # noqa: E402
from engine.steering import GenerationConfig, SteeringSpec, side_by_side, steer  # noqa: E402

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle",
    "Explain how vaccines train the immune system",
    "Give me three tips for learning a new language quickly",
    "What is the difference between a list and a tuple in Python?",
    "Plan a two-day trip to Lisbon on a small budget",
    "How do I make a fluffy pancake batter?",
    "Summarise the causes of the French Revolution",
    "Describe the water cycle for a ten-year-old",
]


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def timeit(fn: Any, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


@torch.no_grad()
def bench_hooks(h: Any, repeats: int) -> dict[str, Any]:
    prompts = prepare(h, PROMPTS)
    ids, mask, _ = pad_batch(h, prompts)
    pos = position_ids_for(mask)

    def bare() -> None:
        h.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)

    def hooked() -> None:
        capture(h, prompts, ("t_inst", "t_post_inst"), batch_size=len(prompts))

    # interleave to spread machine noise evenly
    tb, tc = [], []
    bare()
    hooked()
    for _ in range(repeats):
        tb += timeit(bare, 1, 0)
        tc += timeit(hooked, 1, 0)
    return {
        "batch": len(prompts),
        "seq": ids.shape[1],
        "bare_s": med(tb),
        "capture_s": med(tc),
        "ratio": med(tc) / med(tb),
        "target": "<= 1.02",
    }


@torch.no_grad()
def bench_decode(h: Any, repeats: int, new_tokens: int = 48) -> dict[str, Any]:
    p = prepare(h, PROMPTS[:1])
    ids, mask, pads = pad_batch(h, p)
    v = np.random.default_rng(0).standard_normal((h.n_rows, h.hidden_size)).astype(np.float32) * 0.01
    spec = SteeringSpec(v, (h.n_layers // 2,), 1.0, "prompt")

    def run(steered: bool) -> None:
        kw = {
            "input_ids": ids,
            "attention_mask": mask,
            "max_new_tokens": new_tokens,
            "min_new_tokens": new_tokens,
            "do_sample": False,
        }
        with h.lock:
            if steered:
                with steer(h, [spec], p, pads):
                    h.model.generate(**kw)
            else:
                h.model.generate(**kw)

    tu, ts = [], []
    run(False)
    run(True)
    for _ in range(repeats):
        tu += timeit(lambda: run(False), 1, 0)
        ts += timeit(lambda: run(True), 1, 0)
    tps_u, tps_s = new_tokens / med(tu), new_tokens / med(ts)
    return {
        "new_tokens": new_tokens,
        "unsteered_tok_s": tps_u,
        "steered_tok_s": tps_s,
        "ratio": tps_s / tps_u,
        "target": ">= 0.97",
    }


def bench_side_by_side(h: Any, repeats: int, new_tokens: int = 32) -> dict[str, Any]:
    v = np.random.default_rng(0).standard_normal((h.n_rows, h.hidden_size)).astype(np.float32) * 0.01
    spec = SteeringSpec(v, (h.n_layers // 2,), 1.0, "prompt")
    inst = PROMPTS[0]
    from engine.steering import generate

    cfg = GenerationConfig(max_new_tokens=new_tokens)
    ids_len = new_tokens

    def one() -> None:
        generate(h, [inst], None, cfg)

    def two() -> None:
        generate(h, [inst], None, cfg)
        generate(h, [inst], spec, cfg)

    def sbs() -> None:
        side_by_side(h, [inst], spec, cfg)

    t1, t2, t3 = [], [], []
    one()
    for _ in range(repeats):
        t1 += timeit(one, 1, 0)
        t2 += timeit(two, 1, 0)
        t3 += timeit(sbs, 1, 0)
    return {
        "max_new_tokens": ids_len,
        "one_call_s": med(t1),
        "two_calls_s": med(t2),
        "side_by_side_s": med(t3),
        "ratio_vs_one_call": med(t3) / med(t1),
        "target": "<= 1.2 x one call",
    }


def bench_load(name: str) -> dict[str, Any]:
    code = (
        f"import time,sys;sys.path.insert(0,{str(ROOT)!r});t=time.perf_counter();from engine.models import load_model;"
        f"h=load_model({name!r});print(time.perf_counter()-t, h.source)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, STEERING_EXPLORER_CACHE=tmp, TRANSFORMERS_VERBOSITY="error")
        cold = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        warm = [
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout.split()
            for _ in range(3)
        ]
    return {
        "cold_s": float(cold[0]),
        "cold_source": " ".join(cold[1:]),
        "warm_s": med([float(w[0]) for w in warm]),
        "warm_source": " ".join(warm[0][1:]),
        "note": "in a fresh process, excluding interpreter start; cold = assemble + verify + dequantise GGUF + write cache",
    }


def bench_sweep(h: Any, n_prompts: int, layers: list[int] | None, new_tokens: int) -> dict[str, Any]:
    from engine import experiments as ex
    from engine.datasets import load_builtin
    from engine.precompute import default_directions

    bundle = default_directions(h)
    insts = load_builtin("harmless", "test").sample(n_prompts, seed=0).instructions()
    layers = layers or list(range(h.n_layers))
    t = time.perf_counter()
    batched = ex.steer_refusal_sweep(h, bundle, insts, layers=layers, coeff=1.0, max_new_tokens=new_tokens)
    tb = time.perf_counter() - t
    t = time.perf_counter()
    looped = ex.steer_refusal_per_layer_loop(h, bundle, insts, layers=layers, coeff=1.0, max_new_tokens=new_tokens)
    tl = time.perf_counter() - t
    same = [(r["layer"], r["direction"], r["refusal_rate"]) for r in batched] == [
        (r["layer"], r["direction"], r["refusal_rate"]) for r in looped
    ]
    return {
        "prompts": len(insts),
        "layers": len(layers),
        "max_new_tokens": new_tokens,
        "batched_s": tb,
        "loop_s": tl,
        "speedup": tl / tb,
        "same_rates": same,
        "target": ">= 4x",
    }


def bench_umap(h: Any) -> dict[str, Any]:
    from engine import projection
    from engine.datasets import load_builtin

    insts = []
    for name in ("harmful", "harmless", "harmless_sounds_harmful"):
        insts += load_builtin(name).instructions()
    t = time.perf_counter()
    acts = capture(h, insts, ("t_inst",), batch_size=16).at("t_inst")
    t_cap = time.perf_counter() - t
    layer = h.n_layers // 2
    x = acts[:, layer]
    rng = np.random.default_rng(0)
    x1000 = np.concatenate(
        [x, x[rng.integers(0, len(x), 1000 - len(x))] + rng.normal(0, 0.01 * x.std(), (1000 - len(x), x.shape[1]))]
    )[:1000]
    res = {"n_builtin": len(x), "capture_s": t_cap}
    for label, data in (("builtin", x), ("n1000", x1000)):
        t = time.perf_counter()
        projection.project(data, method="umap", seed=0)
        res[f"umap_{label}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    projection.project(x1000, method="pca", seed=0)
    res["pca_n1000_s"] = time.perf_counter() - t
    res["target"] = "<= 10 s for 1,000 points"
    res["note"] = "first UMAP call includes numba JIT compilation"
    return res


def bench_precompute(name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, STEERING_EXPLORER_CACHE=tmp, TRANSFORMERS_VERBOSITY="error")
        # warm the model cache first so only precompute is timed
        subprocess.run([sys.executable, "-m", "engine", "models"], cwd=ROOT, env=env, check=True, capture_output=True)
        if name == "default":
            src = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steering-explorer" / "models"
            if src.is_dir():
                os.symlink(src, Path(tmp) / "models")
        t = time.perf_counter()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "precompute",
                "--model",
                name,
                "--json",
                "--quiet",
                "--out",
                str(Path(tmp) / "out"),
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t
    summary = json.loads(r.stdout)
    return {
        "wall_s": wall,
        "inner": summary.get("seconds"),
        "n_prompts": summary.get("n_prompts"),
        "target": "<= 300 s",
        "note": "empty label cache; includes model load",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=["hooks", "decode", "side_by_side", "sweep", "umap"])
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--sweep-prompts", type=int, default=16)
    ap.add_argument("--sweep-tokens", type=int, default=24)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    h = None
    for name in args.names:
        if name in ("hooks", "decode", "side_by_side", "sweep", "umap") and h is None:
            h = load_model(ModelSpec(args.model))
        t0 = time.perf_counter()
        if name == "hooks":
            res = bench_hooks(h, args.repeats)
        elif name == "decode":
            res = bench_decode(h, args.repeats)
        elif name == "side_by_side":
            res = bench_side_by_side(h, args.repeats)
        elif name == "load":
            res = bench_load(args.model)
        elif name == "sweep":
            res = bench_sweep(h, args.sweep_prompts, None, args.sweep_tokens)
        elif name == "umap":
            res = bench_umap(h)
        elif name == "precompute":
            res = bench_precompute(args.model)
        else:
            raise SystemExit(f"unknown benchmark {name}")
        res = {
            "benchmark": name,
            "model": args.model,
            "machine": machine(),
            "elapsed_s": time.perf_counter() - t0,
            **res,
        }
        (out / f"{name}-{args.model}.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
