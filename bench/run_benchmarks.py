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

from engine.capture import capture  # noqa: E402
from engine.models import ModelSpec, load_model  # noqa: E402
from engine.positions import pad_batch, position_ids_for, prepare  # noqa: E402
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
            b.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    res["target"] = "interactive <= 10 s with a warm cache; a slider move must not recompute captures"
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=["hooks", "decode", "side_by_side", "sweep", "umap"])
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--sweep-prompts", type=int, default=8)
    ap.add_argument("--sweep-tokens", type=int, default=24)
    ap.add_argument("--sweep-layers", type=int, default=4)
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
            res = bench_sweep(h, args.sweep_prompts, args.sweep_layers, args.sweep_tokens)
        elif name == "umap":
            res = bench_umap(h)
        elif name == "app_start":
            res = bench_app_start(args.model)
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
