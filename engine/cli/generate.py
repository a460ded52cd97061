"""The ``generate`` command: baseline and steered generations side by side."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Progress, add_common, directions_for, emit, load, number

__all__ = ["register"]


def cmd_generate(args: argparse.Namespace) -> int:
    from ..steering import GenerationConfig, SteeringSpec, side_by_side

    prog = Progress(args.quiet)
    handle = load(args)
    bundle = directions_for(args, handle, prog)
    d = bundle.get(
        args.direction if ":" in args.direction or args.direction in bundle.directions else f"category:{args.direction}"
    )
    layers = tuple(args.layer) if args.layer else (handle.n_layers // 2,)
    spec = SteeringSpec(d.vectors, layers, args.coeff, args.positions)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed)
    rows = side_by_side(handle, args.instructions, spec, cfg)
    human = "\n\n".join(
        f"# {r['instruction']}\n[baseline{' REFUSED' if r['baseline_refused'] else ''}] {r['baseline']}\n"
        f"[steered {args.direction} x{args.coeff} @ {list(layers)}{' REFUSED' if r['steered_refused'] else ''}] {r['steered']}"
        for r in rows
    )
    emit(args, rows, human)
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("generate", help="baseline and steered generations side by side")
    add_common(sp)
    sp.add_argument("instructions", nargs="+")
    sp.add_argument("--directions", metavar="FILE")
    sp.add_argument("--direction", default="harmfulness", help="harmfulness | refusal | category NAME")
    sp.add_argument("--layer", type=int, action="append", help="block(s) to steer at (repeatable); default L/2")
    sp.add_argument("--coeff", type=number, default=1.0)
    sp.add_argument("--positions", choices=["prompt", "context", "all"], default="prompt")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_generate)
