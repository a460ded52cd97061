"""The ``guard`` command: Latent Guard verdicts."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Progress, add_common, directions_for, emit, load, number

__all__ = ["register"]


def cmd_guard(args: argparse.Namespace) -> int:
    from ..guard import guard

    prog = Progress(args.quiet)
    handle = load(args)
    bundle = directions_for(args, handle, prog)
    res = guard(handle, bundle, args.instructions, threshold=args.threshold)
    rows = [r.to_dict() for r in res]
    emit(
        args,
        rows,
        "\n".join(f"{'HARMFUL ' if r['harmful'] else 'harmless'} {r['score']:+.4f}  {r['instruction']}" for r in rows),
    )
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("guard", help="Latent Guard verdicts")
    add_common(sp)
    sp.add_argument("instructions", nargs="+")
    sp.add_argument("--directions", metavar="FILE")
    sp.add_argument("--threshold", type=number, default=0.0)
    sp.set_defaults(func=cmd_guard)
