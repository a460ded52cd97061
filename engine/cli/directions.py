"""The direction commands: ``directions`` (show or compute harmfulness/refusal directions) and ``precompute`` (labels, clusters and every direction, with provenance).

``directions --json`` carries ``cosine_ci``: cos(harmfulness, refusal) per layer with its bootstrap 95% interval
(``point``, ``low``, ``high``, ``level``, ``n_boot``, ``groups``), as stored with the directions at precompute time;
for a bundle made before that it is null unless ``--ci`` recomputes it from the built-in train prompts saved beside
the bundle (one capture of those prompts; refused when they do not reproduce the bundle's cosines)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import Progress, add_common, directions_for, emit, load, read_prompts

__all__ = ["register"]


def _interval_now(handle: Any, bundle: Any, prog: Progress) -> dict[str, Any]:
    """The cosine interval recomputed from the labelled built-in train prompts saved beside the model's bundle."""
    from ..capture import capture
    from ..directions import layer_cosines
    from ..precompute import cosine_interval, load_records
    from ..progress import staged

    recs = load_records(handle)
    if not recs:
        raise ValueError(
            "no labelled built-in prompts are saved beside these directions, so --ci cannot rebuild the interval; "
            f"run `python -m engine precompute --model {handle.spec.name}` (it stores the interval)"
        )
    if not prog.quiet:
        sys.stderr.write(f"computing the cosine interval from {len(recs)} built-in train prompts (one capture)\n")
    acts = capture(handle, [r["instruction"] for r in recs], progress=staged(prog, "capturing")).acts
    ci = cosine_interval(recs, acts, refusal_pool=str(bundle.provenance.get("refusal_pool", "default")))
    if not ci.agrees_with(layer_cosines(bundle.harmfulness, bundle.refusal)):
        raise ValueError(
            "the built-in train prompts do not reproduce these directions' cosines (they came from other prompts); "
            "recompute the directions from their prompts with `directions --harmful ... --harmless ...` instead"
        )
    return ci.to_dict()


def cmd_directions(args: argparse.Namespace) -> int:
    from ..precompute import precompute
    from ..storage import save_bundle

    prog = Progress(args.quiet)
    if args.limit < 1:  # as precompute: a limit of 0 would sample no prompt at all
        raise ValueError("--limit must be a positive number of prompts per file")
    handle = load(args)
    if args.harmful or args.harmless:
        if not (args.harmful and args.harmless):
            raise ValueError("give both --harmful and --harmless files (or neither, to use the precomputed set)")
        harmful = read_prompts(args.harmful, args.limit, args.seed, not args.no_normalize)
        harmless = read_prompts(args.harmless, args.limit, args.seed, not args.no_normalize)
        bundle = precompute(
            handle, harmful, harmless, normalize=not args.no_normalize, normalize_directions=args.unit, progress=prog
        ).bundle
    else:
        bundle = directions_for(args, handle, prog)
    if args.out:
        path = save_bundle(bundle, args.out)
        sys.stderr.write(f"saved {path} and {path.with_suffix('.json')}\n")
    s = bundle.summary()
    payload = {
        "n_layers": handle.n_layers,
        "hidden_size": handle.hidden_size,
        "norms": {"harmfulness": s["norms"]["harmfulness"], "refusal": s["norms"]["refusal"]},
        "cosine_harmfulness_refusal": s["cosine_harmfulness_refusal"],
        "cosine_ci": (bundle.provenance.get("summary") or {}).get("cosine_ci"),
    }
    if payload["cosine_ci"] is None and args.ci:
        payload["cosine_ci"] = _interval_now(handle, bundle, prog)
    ci = payload["cosine_ci"]
    lo = ci["low"] if ci else [None] * len(payload["cosine_harmfulness_refusal"])
    hi = ci["high"] if ci else lo
    human = f"layer  |harm|    |ref|   cos    {'95% interval' if ci else ''}\n" + "\n".join(
        f"{i:>5} {a:>8.3f} {b:>8.3f} {c:>6.3f}" + (f"  [{low:+.3f}, {high:+.3f}]" if low is not None else "")
        for i, (a, b, c, low, high) in enumerate(
            zip(
                payload["norms"]["harmfulness"],
                payload["norms"]["refusal"],
                payload["cosine_harmfulness_refusal"],
                lo,
                hi,
                strict=True,
            )
        )
    )
    if not ci:
        human += "\n(no bootstrap interval stored with these directions: add --ci to compute it now)"
    emit(args, payload, human)
    return 0


def cmd_precompute(args: argparse.Namespace) -> int:
    from ..datasets import load_builtin
    from ..precompute import builtin_sources, precompute, save_result
    from ..storage import bundle_path

    prog = Progress(args.quiet)
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be a positive number of prompts per file (leave it out for all)")
    handle = load(args)
    stem = args.name or handle.spec.name.replace("/", "_").replace("\\", "_").lstrip(".")
    if args.out:  # refuse a bad --out or --name before the long run, not after it
        bundle_path(args.out, stem)
    t0 = time.perf_counter()
    if args.harmful or args.harmless:
        harmful = (
            read_prompts(args.harmful or [], args.limit, args.seed, False)
            if args.harmful
            else [load_builtin("harmful", "train")]
        )
        harmless = (
            read_prompts(args.harmless or [], args.limit, args.seed, False)
            if args.harmless
            else builtin_sources("train")[1]
        )
    else:
        harmful, harmless = builtin_sources("train")
        if args.limit:
            harmful = [ps.sample(args.limit, seed=args.seed) for ps in harmful]
            harmless = [ps.sample(args.limit, seed=args.seed) for ps in harmless]
    res = precompute(
        handle,
        harmful,
        harmless,
        normalize=not args.no_normalize,
        normalize_directions=args.unit,
        labeller=args.labeller,
        refusal_pool=args.refusal_pool,
        label_tokens=args.label_tokens,
        progress=prog,
    )
    out_dir = Path(args.out) if args.out else None
    files = {}
    if out_dir is not None:
        files = save_result(res, out_dir, stem, dtype=args.storage_dtype)
    summary = dict(res.summary)
    summary["files"] = files
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    emit(args, summary, json.dumps(summary, indent=1))
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("directions", help="compute (or show the precomputed) harmfulness and refusal directions")
    add_common(sp, fidelity=True)
    sp.add_argument("--harmful", nargs="+", metavar="FILE")
    sp.add_argument("--harmless", nargs="+", metavar="FILE")
    sp.add_argument("--directions", metavar="FILE", help="show a saved directions file")
    sp.add_argument("--limit", type=int, default=128, help="seeded sample of at most N prompts per file")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--unit", action="store_true", help="unit-normalise each layer's direction")
    sp.add_argument("--no-normalize", action="store_true", help="keep trailing punctuation of instructions")
    sp.add_argument("--out", metavar="FILE", help="save as safetensors + JSON sidecar")
    sp.add_argument(
        "--ci",
        action="store_true",
        help="when the directions carry no stored cosine interval, compute it now from the built-in train prompts",
    )
    sp.set_defaults(func=cmd_directions)

    sp = sub.add_parser("precompute", help="labels, clusters and every direction, with provenance")
    add_common(sp, fidelity=True)
    sp.add_argument("--harmful", nargs="+", metavar="FILE")
    sp.add_argument("--harmless", nargs="+", metavar="FILE")
    sp.add_argument("--limit", type=int, default=None, help="seeded sample of at most N prompts per file")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--labeller", choices=["substring", "logodds"], default="substring")
    sp.add_argument("--label-tokens", type=int, default=48)
    sp.add_argument("--refusal-pool", choices=["default", "all"], default="default")
    sp.add_argument("--unit", action="store_true")
    sp.add_argument("--no-normalize", action="store_true")
    sp.add_argument("--out", metavar="DIR")
    sp.add_argument("--name", help="file stem (default: the model name)")
    sp.add_argument(
        "--storage-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="tensor type in the saved file (float16 halves shipped assets; loading always gives float32)",
    )
    sp.set_defaults(func=cmd_precompute)
