"""Benchmarks for BENCHMARKS.md. Run: ``python bench/run_benchmarks.py [NAME ...] [--model default] [--dtype auto]
[--json] [--out bench/results]``.

Each benchmark writes ``<out>/<name>-<model>[-<dtype>].json`` and prints its result: with ``--json`` one JSON object
per line on stdout (nothing else; progress goes to stderr), else the same object indented. Medians over repeats.
Names: hooks, decode, side_by_side, load, sweep, umap, precompute, app_start, bandwidth, ttft, guard, fidelity,
packing_fidelity, prefill_fidelity. ``--dtype`` (float32 | bfloat16 | auto, default auto: bfloat16 on CPUs with native bf16) is the
dtype the model is loaded in; ``fidelity`` ignores it (it loads float32, then bfloat16), so do ``packing_fidelity``
and ``prefill_fidelity`` (float32). Generation uses the packed linear weights (``engine.packing``) unless ``STEERING_EXPLORER_PACKED_LINEAR=0``;
each result records ``packed_linear`` (the setting). Torch threads follow the engine's setting
(``STEERING_EXPLORER_THREADS``, else torch's default). Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
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

from engine.capture import capture  # noqa: E402
from engine.models import ModelSpec, load_model, resolve_device, resolve_dtype  # noqa: E402
from engine.packing import enabled as packing_enabled  # noqa: E402
from engine.positions import pad_batch, position_ids_for, prepare  # noqa: E402
from engine.steering import GenerationConfig, SteeringSpec, generate_rows, side_by_side, steer  # noqa: E402

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


BENCH_DTYPES = ("auto", "float32", "bfloat16")
BYTES_FORMULA = (
    "limit_tok_s = bandwidth_bytes_per_s / bytes_per_token; bytes_per_token = sum over the decoder blocks' parameters "
    "and the LM head weight of numel * itemsize(run dtype) (the embedding lookup reads one row and is left out)"
)


def engine_threads() -> int:
    """Apply the engine's thread setting (``STEERING_EXPLORER_THREADS``, as ``load_model`` does); the thread count."""
    threads = os.environ.get("STEERING_EXPLORER_THREADS", "").strip()
    if threads.isdigit() and int(threads) >= 1:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packed_linear": packing_enabled(),
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

    from engine.capture import _backbone

    def bare() -> None:  # the same decoder forward capture runs, without hooks (capture needs no LM head)
        _backbone(h)(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)

    def full() -> None:  # the whole model with its LM head, for reference
        h.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)

    def hooked() -> None:
        capture(h, prompts, ("t_inst", "t_post_inst"), batch_size=len(prompts))

    # interleave to spread machine noise evenly
    tb, tc, tf = [], [], []
    bare()
    hooked()
    for _ in range(repeats):
        tb += timeit(bare, 1, 0)
        tc += timeit(hooked, 1, 0)
        tf += timeit(full, 1, 0)
    return {
        "batch": len(prompts),
        "seq": ids.shape[1],
        "bare_decoder_s": med(tb),
        "capture_s": med(tc),
        "full_model_s": med(tf),
        "ratio": med(tc) / med(tb),
        "ratio_vs_full_model": med(tc) / med(tf),
        "target": "<= 1.02",
    }


def bench_bandwidth(gib: float = 1.0, repeats: int = 5) -> dict[str, Any]:
    """Memory read bandwidth: the sum of a ``gib`` GiB float32 tensor with the engine's thread setting."""
    if gib <= 0:
        raise ValueError("gib must be > 0")
    threads = engine_threads()
    n = int(gib * 2**30) // 4
    x = [torch.ones(n, dtype=torch.float32)]
    times = timeit(lambda: x[0].sum(), repeats, warmup=1)
    nbytes = n * 4
    x.clear()  # free the GiB before the next benchmark
    t = med(times)
    return {
        "bytes": nbytes,
        "threads": threads,
        "sum_s": t,
        "bandwidth_gib_s": nbytes / t / 2**30,
        "note": "median over repeats of torch.sum over a contiguous float32 tensor (one read of every byte)",
    }


def bytes_per_token(h: Any) -> dict[str, Any]:
    """Bytes of weights one decode step reads at batch 1 in the run's dtype (see ``BYTES_FORMULA``)."""
    item = torch.empty((), dtype=h.dtype).element_size()
    blocks = sum(p.numel() for p in h.layers.parameters())
    head = h.model.get_output_embeddings().weight.numel()
    return {
        "dtype": str(h.dtype).replace("torch.", ""),
        "itemsize": item,
        "block_params": int(blocks),
        "lm_head_params": int(head),
        "bytes_per_token": int((blocks + head) * item),
    }


@torch.no_grad()
def bench_decode(h: Any, repeats: int, new_tokens: int = 48, bandwidth: dict[str, Any] | None = None) -> dict[str, Any]:
    """HF ``generate`` steered vs unsteered (the hooks' cost), and the engine's greedy decoder at batch 1 against the
    memory-bandwidth limit: steady-state tokens/s = (tokens(N) - tokens(1)) / (time(N) - time(1)), prefill left out.
    """
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

    counts: dict[int, int] = {}

    def engine(n: int) -> None:
        outs = generate_rows(h, [PROMPTS[0]], None, GenerationConfig(max_new_tokens=n, batch_size=1))
        counts[n] = len(outs[0].token_ids)

    te1, ten = [], []
    engine(new_tokens)
    for _ in range(repeats):
        te1 += timeit(lambda: engine(1), 1, 0)
        ten += timeit(lambda: engine(new_tokens), 1, 0)
    steps = max(counts[new_tokens] - counts[1], 1)
    engine_tok_s = steps / max(med(ten) - med(te1), 1e-9)
    bw = bandwidth or bench_bandwidth(repeats=max(repeats, 3))
    per_tok = bytes_per_token(h)
    limit = bw["bandwidth_gib_s"] * 2**30 / per_tok["bytes_per_token"]
    return {
        "new_tokens": new_tokens,
        "dtype": per_tok["dtype"],
        "unsteered_tok_s": tps_u,
        "steered_tok_s": tps_s,
        "ratio": tps_s / tps_u,
        "engine_tokens": counts[new_tokens],
        "engine_total_s": med(ten),
        "engine_first_token_s": med(te1),
        "engine_decode_tok_s": engine_tok_s,
        "bandwidth_gib_s": bw["bandwidth_gib_s"],
        "threads": bw["threads"],
        **per_tok,
        "limit_tok_s": limit,
        "fraction_of_limit": engine_tok_s / limit,
        "fraction_of_limit_hf_generate": tps_u / limit,
        "limit_formula": BYTES_FORMULA,
        "target": "ratio >= 0.97; fraction_of_limit >= 0.5 in bfloat16",
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


def bench_ttft(h: Any, repeats: int, new_tokens: int = 16, instructions: list[str] | None = None) -> dict[str, Any]:
    """Time to first streamed token of each row of a side-by-side call (warm), through the Steer page's API
    (``service.steer_side_by_side`` with ``on_update``): seconds from the call until the row's text is non-empty."""
    from engine import service as svc

    insts = list(instructions or PROMPTS[:2])
    v = np.random.default_rng(0).standard_normal((h.n_rows, h.hidden_size)).astype(np.float32) * 0.01
    settings = svc.SteerSettings(layers=(h.n_layers // 2,), coeff=1.0, max_new_tokens=new_tokens)
    cols = ("baseline", "steered")

    def once() -> tuple[dict[tuple[int, str], float], float, float]:
        first: dict[tuple[int, str], float] = {}
        first_update: list[float] = []
        t0 = time.perf_counter()

        def on_update(recs: list[dict[str, Any]]) -> None:
            now = time.perf_counter() - t0
            if not first_update:
                first_update.append(now)
            for i, r in enumerate(recs):
                for c in cols:
                    if r.get(c) and (i, c) not in first:
                        first[(i, c)] = now

        svc.steer_side_by_side(h, v, insts, settings, on_update=on_update)
        return first, time.perf_counter() - t0, first_update[0] if first_update else float("nan")

    once()  # warm
    runs = [once() for _ in range(repeats)]
    rows = []
    for i, inst in enumerate(insts):
        for c in cols:
            got = [r[0][(i, c)] for r in runs if (i, c) in r[0]]
            rows.append({"instruction": inst, "column": c, "ttft_s": med(got) if got else None})
    known = [r["ttft_s"] for r in rows if r["ttft_s"] is not None]
    return {
        "instructions": len(insts),
        "rows": rows,
        "max_new_tokens": new_tokens,
        "first_update_s": med([r[2] for r in runs]),
        "ttft_max_s": max(known) if known else None,
        "ttft_median_s": med(known) if known else None,
        "total_s": med([r[1] for r in runs]),
        "note": "warm; a row whose text stays empty (immediate end of turn) has ttft_s null",
        "target": "<= 1.5 s per row",
    }


def bench_guard(
    h: Any,
    repeats: int,
    n: int = 32,
    batch_size: int = 16,
    methods: tuple[str, ...] = ("centroid", "probe"),
    bundle: Any = None,
) -> dict[str, Any]:
    """Latent Guard verdicts per second on ``n`` built-in test prompts, batched: the whole ``guard`` call (t_inst
    capture + score), and the scoring alone on states captured once. Readers are fitted (if needed) before timing."""
    from engine.datasets import load_builtin
    from engine.guard import guard, guard_method, t_inst_states
    from engine.precompute import default_directions

    bundle = bundle if bundle is not None else default_directions(h)
    insts: list[str] = []
    for name in ("harmful", "harmless"):
        insts += load_builtin(name, "test").instructions()
    rng = np.random.default_rng(0)
    insts = [insts[i] for i in rng.permutation(len(insts))[:n]]
    res: dict[str, Any] = {"n": len(insts), "batch_size": batch_size}
    acts = t_inst_states(h, bundle, insts, batch_size=batch_size)
    for m in methods:
        g = guard_method(bundle, m, handle=h)  # fits and caches the readers once, outside the timing
        guard(h, bundle, insts[:2], method=m, batch_size=batch_size)
        t = med(timeit(lambda m=m: guard(h, bundle, insts, method=m, batch_size=batch_size), repeats, 0))
        ts = med(timeit(lambda g=g: g.score(acts), repeats, 1))
        res[m] = {
            "s": t,
            "verdicts_per_s": len(insts) / t,
            "score_only_s": ts,
            "score_only_per_s": len(insts) / max(ts, 1e-9),
        }
    res["note"] = "verdicts_per_s includes the t_inst capture (one forward without the LM head per prompt)"
    return res


def _layer_cos(a: np.ndarray, b: np.ndarray) -> list[float | None]:
    """Cosine per row; None (JSON null) where a direction is zero (e.g. row 0 at t_post_inst: the same template
    token for every prompt)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    num = (a * b).sum(-1)
    return [float(n / d) if d > 0 else None for n, d in zip(num, den, strict=True)]


def _first_drawn(ps: Any, limit: int | None) -> Any:
    """The first-drawn ``limit`` prompts of a set (seeded sample), or the whole set."""
    return ps.sample(limit, seed=0) if limit is not None and limit < len(ps) else ps


def _test_instructions(limit: int | None) -> list[str]:
    """The built-in harmful, harmless and harmless_sounds_harmful TEST splits, each cut to ``limit``."""
    from engine.datasets import load_builtin

    names = ("harmful", "harmless", "harmless_sounds_harmful")
    return [i for n in names for i in _first_drawn(load_builtin(n, "test"), limit).instructions()]


def bench_fidelity(
    name: str,
    limit: int | None = None,
    new_tokens: int = 48,
    batch_size: int = 16,
    dtypes: tuple[str, str] = ("float32", "bfloat16"),
) -> dict[str, Any]:
    """bfloat16 against float32 on the built-in TEST splits (greedy texts, refusal labels, Latent Guard verdicts with
    the float32 directions) and per-layer cosines between the directions each dtype computes from the TRAIN split
    (``engine.precompute``, guard readers off). ``limit`` keeps the first-drawn ``limit`` prompts of each set
    (seeded sample). The model is loaded once per dtype, sequentially; the first is freed before the second."""
    from engine.guard import guard
    from engine.precompute import builtin_sources, precompute
    from engine.refusal import refusal_label
    from engine.steering import generate

    test_insts = _test_instructions(limit)
    harmful, harmless = builtin_sources("train")
    harmful, harmless = [_first_drawn(ps, limit) for ps in harmful], [_first_drawn(ps, limit) for ps in harmless]
    cfg = GenerationConfig(max_new_tokens=new_tokens, batch_size=batch_size)
    got: dict[str, dict[str, Any]] = {}
    ref_guard = None
    for dt in dtypes:
        t0 = time.perf_counter()
        h = load_model(ModelSpec(name, dtype=dt))
        print(f"fidelity: {dt} loaded", file=sys.stderr, flush=True)
        texts = generate(h, test_insts, None, cfg)
        result = precompute(h, harmful, harmless, guard_readers=False, batch_size=batch_size)
        if ref_guard is None:
            ref_guard = result.bundle.get("guard")  # the float32 directions, as shipped, judge both dtypes
        verdicts = [r.harmful for r in guard(h, ref_guard, test_insts, batch_size=batch_size)]
        got[dt] = {
            "texts": list(texts),
            "labels": [refusal_label(t) for t in texts],
            "verdicts": verdicts,
            "train_labels": [r["refused"] for r in result.records],
            "dirs": {k: result.bundle.get(k).vectors for k in ("harmfulness", "refusal", "guard")},
            "seconds": time.perf_counter() - t0,
            "dtype": str(h.dtype).replace("torch.", ""),
        }
        del h, result
        gc.collect()
        print(f"fidelity: {dt} done in {got[dt]['seconds']:.0f} s", file=sys.stderr, flush=True)
    a, b = (got[d] for d in dtypes)

    def share(key: str) -> float:
        pairs = list(zip(a[key], b[key], strict=True))
        return sum(x == y for x, y in pairs) / max(len(pairs), 1)

    cos = {k: _layer_cos(a["dirs"][k], b["dirs"][k]) for k in a["dirs"]}
    return {
        "dtypes": [a["dtype"], b["dtype"]],
        "limit": limit,
        "n_test": len(test_insts),
        "n_train": len(a["train_labels"]),
        "max_new_tokens": new_tokens,
        "greedy_texts_identical_share": share("texts"),
        "refusal_labels_identical_share": share("labels"),
        "guard_verdicts_identical_share": share("verdicts"),
        "train_labels_identical_share": share("train_labels"),
        "direction_cosine": cos,
        "direction_cosine_min": {k: min((x for x in v if x is not None), default=None) for k, v in cos.items()},
        "seconds": {d: got[d]["seconds"] for d in dtypes},
        "note": "test: built-in harmful, harmless, harmless_sounds_harmful test splits; guard: centroid guard with the "
        "float32 train-split 'guard' centroids on both models; directions: each dtype labels and captures the train "
        "split itself (label cache keyed by dtype)",
    }


def bench_packing_fidelity(
    name: str, limit: int | None = None, new_tokens: int = 48, batch_size: int = 16
) -> dict[str, Any]:
    """Generation with oneDNN-packed linear weights (``engine.packing``) against ``F.linear`` in float32 on the
    built-in TEST splits: greedy texts and refusal labels identical (share), and the time of each. One model, loaded
    once; ``STEERING_EXPLORER_PACKED_LINEAR=0`` for the eager run. Captures never use the packed weights, so
    directions and guard verdicts are identical by construction (tests/test_packed_linear.py checks it)."""
    from engine import packing
    from engine.refusal import refusal_label
    from engine.steering import generate

    insts = _test_instructions(limit)
    h = load_model(ModelSpec(name, dtype="float32"))
    cfg = GenerationConfig(max_new_tokens=new_tokens, batch_size=batch_size)
    got: dict[str, Any] = {}
    before = os.environ.get(packing.PACKED_ENV)
    try:
        for mode, setting in (("eager", "0"), ("packed", "1")):
            os.environ[packing.PACKED_ENV] = setting
            t0 = time.perf_counter()
            texts = list(generate(h, insts, None, cfg))
            got[mode] = {"texts": texts, "labels": [refusal_label(t) for t in texts], "s": time.perf_counter() - t0}
            print(f"packing_fidelity: {mode} done in {got[mode]['s']:.0f} s", file=sys.stderr, flush=True)
    finally:  # the setting the run was started with, for the benchmarks after this one
        if before is None:
            os.environ.pop(packing.PACKED_ENV, None)
        else:
            os.environ[packing.PACKED_ENV] = before
    e, p = got["eager"], got["packed"]
    same = [a == b for a, b in zip(e["texts"], p["texts"], strict=True)]
    return {
        "limit": limit,
        "n_test": len(insts),
        "max_new_tokens": new_tokens,
        "batch_size": batch_size,
        "packed_layers": packing.packed_layer_count(h),
        "greedy_texts_identical_share": sum(same) / max(len(same), 1),
        "refusal_labels_identical_share": sum(a == b for a, b in zip(e["labels"], p["labels"], strict=True))
        / max(len(same), 1),
        "differing_rows": [i for i, x in enumerate(same) if not x],
        "eager_s": e["s"],
        "packed_s": p["s"],
        "speedup": e["s"] / max(p["s"], 1e-9),
        "note": "built-in harmful, harmless, harmless_sounds_harmful test splits, float32, batched as the labeller does",
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


def bench_sweep(h: Any, n_prompts: int, n_layers: int, new_tokens: int) -> dict[str, Any]:
    """The batched steer-refusal sweep (every row its own (direction, layer), one ``grid`` call) against per-layer
    loops over the same prompts (``bench/reference_loops.py``): one generate call per (direction, layer) with all
    prompts batched, and the paper's way (one prompt, one layer per run: batch size 1)."""
    from reference_loops import steer_refusal_per_layer_loop

    from engine import experiments as ex
    from engine.datasets import load_builtin
    from engine.precompute import default_directions

    bundle = default_directions(h)
    insts = load_builtin("harmless", "test").sample(n_prompts, seed=0).instructions()
    step = max(1, h.n_layers // n_layers)
    layers = list(range(step // 2, h.n_layers, step))[:n_layers]
    kw = {"layers": layers, "coeff": 1.0, "max_new_tokens": new_tokens}
    times: dict[str, float] = {}
    outs: dict[str, list[dict[str, Any]]] = {}
    for label, fn, bs in (
        ("batched_sweep_s", ex.steer_refusal_sweep, 64),
        ("loop_batched_per_layer_s", steer_refusal_per_layer_loop, 64),
        ("loop_paper_style_s", steer_refusal_per_layer_loop, 1),
    ):
        t = time.perf_counter()
        outs[label] = fn(h, bundle, insts, batch_size=bs, **kw)
        times[label] = time.perf_counter() - t
        print(f"sweep: {label} {times[label]:.1f} s", file=sys.stderr, flush=True)  # partial results survive a crash

    def key(rows: list[dict[str, Any]]) -> list[Any]:
        return [(r["direction"], r["layer"], r["index"], r["text"], r["refused"]) for r in rows]

    b, lb, lp = (outs[k] for k in ("batched_sweep_s", "loop_batched_per_layer_s", "loop_paper_style_s"))
    tb = times["batched_sweep_s"]
    return {
        "prompts": len(insts),
        "layers": layers,
        "rows": len(b),
        "max_new_tokens": new_tokens,
        **times,
        "speedup_vs_batched_loop": times["loop_batched_per_layer_s"] / tb,
        "speedup_vs_paper_loop": times["loop_paper_style_s"] / tb,
        "same_texts_batched_loop": key(b) == key(lb),
        "same_texts_paper_loop": key(b) == key(lp),
        "refused_rows": sum(r["refused"] for r in b),
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
        projection.fit_projection(data, method="umap", seed=0)
        res[f"umap_{label}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    projection.fit_projection(x1000, method="pca", seed=0)
    res["pca_n1000_s"] = time.perf_counter() - t
    res["target"] = "<= 10 s for 1,000 points"
    res["note"] = "first UMAP call includes numba JIT compilation"
    return res


def bench_prefill_fidelity(name: str, limit: int | None = None, new_tokens: int = 48) -> dict[str, Any]:
    """precompute's single pass: the t_inst / t_post_inst states the labelling's prompt pass records
    (``capture.PrefillStates``, chunks of 32 as the labeller runs them) against a separate ``capture`` (batches of
    16) of the same prompts, float32, on the built-in TRAIN splits (what precompute reads): largest absolute and
    relative difference, share of bit-identical values, and per row the cosine between the harmful-minus-harmless
    mean differences computed from each."""
    from engine.capture import PrefillStates
    from engine.datasets import load_builtin
    from engine.labels import label_refusals
    from engine.precompute import POSITIONS

    h = load_model(ModelSpec(name, dtype="float32"))
    sets = {n: _first_drawn(load_builtin(n, "train"), limit).instructions() for n in ("harmful", "harmless")}
    insts = sets["harmful"] + sets["harmless"]
    pre = PrefillStates(POSITIONS)
    t0 = time.perf_counter()
    label_refusals(h, insts, max_new_tokens=new_tokens, use_cache=False, prefill=pre)
    t_label = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = capture(h, insts, POSITIONS).acts
    t_capture = time.perf_counter() - t0
    got = np.stack([pre.states[i] for i in insts])
    diff = np.abs(got - ref)
    n_h = len(sets["harmful"])
    cosines = []
    for pos in range(len(POSITIONS)):
        for r in range(1, h.n_rows):  # row 0 (embeddings) is the same lookup either way
            a = got[:n_h, pos, r].mean(0) - got[n_h:, pos, r].mean(0)
            b = ref[:n_h, pos, r].mean(0) - ref[n_h:, pos, r].mean(0)
            cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return {
        "limit": limit,
        "n_prompts": len(insts),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / np.abs(ref).max(axis=-1, keepdims=True)).max()),
        "bit_identical_share": float((got == ref).mean()),
        "min_cosine_mean_difference": min(cosines),
        "labelling_s": t_label,
        "capture_s": t_capture,
        "note": "labelling with use_cache=False; the capture is the pass precompute no longer runs for these prompts",
    }


def bench_precompute(name: str, dtype: str = "float32") -> dict[str, Any]:
    """``python -m engine precompute`` in a fresh process with an empty label cache, in ``dtype`` (the CLI's default
    for precompute is float32, the paper-fidelity setting)."""
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
                "--dtype",
                dtype,
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
        "captured_in_labelling": summary.get("captured_in_labelling"),
        "target": "<= 300 s",
        "note": "empty label cache; includes model load",
    }


def bench_app_start(name: str) -> dict[str, Any]:
    """Seconds from launching ``streamlit run app.py`` (what ``make run`` does after installing) until the Steer page
    is interactive in headless Chromium with the model loaded: its status line and the Generate button are shown.
    Warm = the model cache and shipped directions already exist. Then, on the Clusters page, the layer slider is moved
    and the time of that rerun is recorded (the captures are cached once per model; a move only re-projects)."""
    import socket
    import urllib.request

    from playwright.sync_api import sync_playwright

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = dict(os.environ, STEERING_EXPLORER_MODEL=name)
    from engine.models.core import cache_dir
    from engine.umapcache import SUBFOLDER

    # UMAP's compiled numba code in the user cache (engine.umapcache): empty = this is the first process to compile it
    numba_files = len(list((cache_dir() / SUBFOLDER).rglob("*.nbc")))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "streamlit"),
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    res: dict[str, Any] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        res["server_up_s"] = time.perf_counter() - t0
        with sync_playwright() as pw:
            b = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(300_000)
            page.goto(url)
            page.get_by_role("button", name="Generate").wait_for()
            page.locator("[data-testid='stSidebar']").get_by_text("blocks", exact=False).first.wait_for()
            page.get_by_text("Directions:", exact=False).first.wait_for()
            res["interactive_s"] = time.perf_counter() - t0
            # Clusters: first visit captures the built-in prompts (once per model), then a slider move only re-projects
            t = time.perf_counter()
            page.get_by_role("link", name="Clusters").first.click()
            page.get_by_text("PCA", exact=True).first.click()
            page.wait_for_function("document.querySelectorAll('[data-testid=\"stVegaLiteChart\"]').length >= 2")
            page.get_by_text("Nearest-centroid accuracy").first.wait_for()
            res["clusters_first_visit_s"] = time.perf_counter() - t
            slider = page.get_by_role("slider").first
            slider.focus()
            t = time.perf_counter()
            slider.press("ArrowLeft")
            page.wait_for_timeout(300)
            page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
            res["slider_move_rerun_s"] = time.perf_counter() - t
            # the first UMAP map of this server process (the background warm-up compiles numba's code, or reads it
            # from the user cache: umap_numba_cache_files says which)
            # done = the map's "Projecting ... (UMAP)" spinner has appeared and is gone again, and Streamlit's running
            # indicator is gone; a map that never shows the spinner within 5 s counts as done at once. (Waiting only
            # for the running indicator to clear can look before the rerun starts and read 0.4 s for a 20 s map.)
            t = time.perf_counter()
            page.get_by_text("UMAP", exact=True).first.click()
            spinner_js = (
                "[...document.querySelectorAll('[data-testid=\"stSpinner\"]')].some(e => e.innerText.includes('UMAP'))"
            )
            running_js = "!!document.querySelector('[data-testid=\"stStatusWidget\"]')"
            seen = False
            while True:
                page.wait_for_timeout(50)
                waited = time.perf_counter() - t
                if waited > 180:
                    raise RuntimeError("the UMAP map did not finish within 180 s")
                if page.evaluate(spinner_js):
                    seen = True
                elif (seen or waited > 5) and not page.evaluate(running_js):
                    break
            res["first_umap_spinner_seen"] = seen
            res["first_umap_s"] = time.perf_counter() - t
            res["umap_numba_cache_files"] = numba_files
            b.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    res["target"] = (
        "interactive <= 8 s with a warm cache; Clusters in a new process <= 10 s (capture cache); first UMAP <= 3 s;"
        " a slider move must not recompute captures"
    )
    return res


MODEL_BENCHES = ("hooks", "decode", "side_by_side", "sweep", "umap", "ttft", "guard")
ALL = (
    *MODEL_BENCHES,
    "load",
    "app_start",
    "precompute",
    "bandwidth",
    "fidelity",
    "packing_fidelity",
    "prefill_fidelity",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", default=["hooks", "decode", "side_by_side", "sweep", "umap"])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="auto", choices=BENCH_DTYPES, help="dtype the model is loaded in")
    ap.add_argument("--json", action="store_true", help="one JSON object per benchmark on stdout, nothing else")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--sweep-prompts", type=int, default=8)
    ap.add_argument("--sweep-tokens", type=int, default=24)
    ap.add_argument("--sweep-layers", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None, help="fidelity: prompts per built-in set (all by default)")
    ap.add_argument("--new-tokens", type=int, default=None, help="decode/ttft/fidelity: new tokens per row")
    ap.add_argument("--gib", type=float, default=1.0, help="bandwidth: size of the summed tensor in GiB")
    args = ap.parse_args(argv)
    bad = [n for n in args.names if n not in ALL]
    if bad:
        ap.error(f"unknown benchmark {', '.join(bad)}; choose from {', '.join(ALL)}")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be >= 1")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    return args


def run_one(name: str, h: Any, args: argparse.Namespace) -> dict[str, Any]:
    nt = {} if args.new_tokens is None else {"new_tokens": args.new_tokens}
    if name == "hooks":
        return bench_hooks(h, args.repeats)
    if name == "decode":
        return bench_decode(h, args.repeats, **nt)
    if name == "side_by_side":
        return bench_side_by_side(h, args.repeats, **nt)
    if name == "load":
        return bench_load(args.model)
    if name == "sweep":
        return bench_sweep(h, args.sweep_prompts, args.sweep_layers, args.sweep_tokens)
    if name == "umap":
        return bench_umap(h)
    if name == "app_start":
        return bench_app_start(args.model)
    if name == "precompute":
        return bench_precompute(args.model, "float32" if args.dtype == "auto" else args.dtype)
    if name == "bandwidth":
        return bench_bandwidth(args.gib, args.repeats)
    if name == "ttft":
        return bench_ttft(h, args.repeats, **nt)
    if name == "guard":
        return bench_guard(h, args.repeats)
    if name == "fidelity":
        return bench_fidelity(args.model, args.limit, **nt)
    if name == "packing_fidelity":
        return bench_packing_fidelity(args.model, args.limit, **nt)
    if name == "prefill_fidelity":
        return bench_prefill_fidelity(args.model, args.limit, **nt)
    raise SystemExit(f"unknown benchmark {name}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    engine_threads()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    h = None
    dtype = str(resolve_dtype(args.dtype, resolve_device("auto"))).replace("torch.", "")
    for name in args.names:
        if name in MODEL_BENCHES and h is None:
            h = load_model(ModelSpec(args.model, dtype=args.dtype))
            dtype = str(h.dtype).replace("torch.", "")
        t0 = time.perf_counter()
        res = run_one(name, h, args)
        res = {
            "benchmark": name,
            "model": args.model,
            "dtype": {"fidelity": "float32+bfloat16", "packing_fidelity": "float32", "prefill_fidelity": "float32"}.get(
                name, dtype
            ),
            "dtype_option": args.dtype,
            "machine": machine(),
            "elapsed_s": time.perf_counter() - t0,
            **res,
        }
        suffix = "" if args.dtype == "auto" else f"-{args.dtype}"
        text = json.dumps(res, allow_nan=False) if args.json else json.dumps(res, indent=1, allow_nan=False)
        (out / f"{name}-{args.model}{suffix}.json").write_text(json.dumps(res, indent=1, allow_nan=False))
        print(text, flush=True)


if __name__ == "__main__":
    main()
