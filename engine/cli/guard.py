"""The ``guard`` command: Latent Guard verdicts, by method (``centroid`` = the paper's guard, the default)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Progress, add_common, add_prompt_input, directions_for, emit_rows, load, read_instructions

__all__ = ["register", "threshold_arg"]


def threshold_arg(text: str) -> float | str:
    """``0``, ``calibrated`` or a number."""
    if text == "calibrated":
        return text
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number (nor 'calibrated'): {text!r}") from exc


def cmd_guard(args: argparse.Namespace) -> int:
    from ..guard import guard, guard_method

    instructions = read_instructions(args)
    prog = Progress(args.quiet)
    handle = load(args)
    bundle = directions_for(args, handle, prog)
    g = guard_method(bundle, args.method, handle=handle, fit=not args.no_fit, progress=prog)
    t = g.threshold(args.threshold)
    res = guard(handle, bundle, instructions, threshold=t, method=args.method, progress=prog)
    rows = [{**r.to_dict(), "method": args.method, "threshold": t} for r in res]
    emit_rows(
        args,
        rows,
        "\n".join(f"{'HARMFUL ' if r['harmful'] else 'harmless'} {r['score']:+.4f}  {r['instruction']}" for r in rows),
    )
    return 0


def register(sub: Any) -> None:
    from ..guard import DEFAULT_METHOD, METHODS

    sp = sub.add_parser("guard", help="Latent Guard verdicts")
    add_common(sp)
    add_prompt_input(sp)
    sp.add_argument("--directions", metavar="FILE")
    sp.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help="centroid = the paper's guard (default); probe = the trained reader with the best cross-validated "
        "accuracy on the built-in train split; lda / lda-band = other trained readers of the same t_inst states",
    )
    sp.add_argument(
        "--threshold",
        type=threshold_arg,
        default=0.0,
        help="a number (default 0, the paper's rule) or 'calibrated' (chosen by CV on the training prompts)",
    )
    sp.add_argument(
        "--no-fit",
        action="store_true",
        help="fail instead of fitting the trained readers on the built-in train split when the directions lack them",
    )
    sp.set_defaults(func=cmd_guard)
