"""The ``generate`` command: baseline and steered (added or ablated) generations side by side, with an optional
system-prompt column, per-token traces on the harmfulness and refusal directions, and next-token top-k with KL.

JSON rows: ``instruction``, ``baseline``, ``steered`` (+ ``prompted`` with a system prompt) and their ``*_refused``
marks; with ``--trace``: ``trace_layer`` and ``trace[column]`` = per generated token ``{"token", "projection":
{direction: h . v_hat}, "cosine": {direction: cos}}``; with ``--topk K``: ``topk[column]`` = per step K ``{"token",
"prob"}``, and for the columns other than the baseline ``kl[column]`` (KL(baseline || column) per step while the
texts are the same), ``diverged_at[column]`` (the step the chosen tokens first differ, or null) and
``compare_end[column]`` (diverged | ended | max_new_tokens)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import (
    Progress,
    add_common,
    add_prompt_input,
    directions_for,
    emit_rows,
    load,
    number,
    read_instructions,
)

__all__ = ["register"]


def _direction_row(text: str) -> int | str:
    if text == "each":
        return text
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"a row number or 'each', not {text!r}") from exc


def _system_prompt(args: argparse.Namespace) -> str | None:
    if args.system_prompt_file:
        from ..atomic import read_regular_file

        raw = read_regular_file(args.system_prompt_file, 1_000_000, what="system prompt file")
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{args.system_prompt_file}: the system prompt file is not UTF-8 text") from None
        if not text:
            raise ValueError(f"{args.system_prompt_file} is empty: write the system prompt into it")
        return text
    return args.system_prompt


def _trace_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long trace rows (one per token x direction, one traced row) -> one dict per token."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if not out or out[-1]["step"] != r["step"]:
            out.append({"step": r["step"], "token": r["token"], "projection": {}, "cosine": {}})
        out[-1]["projection"][r["direction"]] = round(r["projection"], 5)
        out[-1]["cosine"][r["direction"]] = round(r["cosine"], 5)
    for t in out:
        del t["step"]
    return out


def cmd_generate(args: argparse.Namespace) -> int:
    from ..steering import GenerationConfig, SteeringSpec, TraceSpec, side_by_side

    instructions = read_instructions(args)
    system = _system_prompt(args)
    prog = Progress(args.quiet)
    handle = load(args)
    bundle = directions_for(args, handle, prog)
    d = bundle.get(
        args.direction if ":" in args.direction or args.direction in bundle.directions else f"category:{args.direction}"
    )
    L = handle.n_layers
    ablate = args.op == "ablate"
    default_layers: tuple[int, ...] | str = "all" if ablate else (L // 2,)
    layers = "all" if args.all_layers else (tuple(args.layer) if args.layer else default_layers)
    row = args.direction_row if args.direction_row is not None else (L // 2 if ablate else "each")
    fixed = None if row == "each" else int(row)
    positions = args.positions or ("all" if ablate else "prompt")
    spec = SteeringSpec(d.vectors, layers, args.coeff, positions, args.op, fixed)
    trace = None
    trace_layer = None
    if args.trace is not None:
        default = fixed if fixed is not None else (layers[0] if isinstance(layers, tuple) else L // 2)
        trace_layer = default if args.trace == -1 else args.trace
        names = [n for n in ("harmfulness", "refusal") if n in bundle.directions] or [d.name]
        trace = TraceSpec({n: bundle.get(n).vectors for n in names}, (trace_layer,))
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed)
    rows = side_by_side(handle, instructions, spec, cfg, system_prompt=system, trace=trace, topk=args.topk)
    for r in rows:
        if trace is not None:
            r["trace_layer"] = trace_layer
            r["trace"] = {col: _trace_json(t) for col, t in r["trace"].items()}
        if args.topk:
            r["topk"] = {
                col: [[{"token": tok, "prob": round(p, 5)} for tok, p in step] for step in steps]
                for col, steps in r["topk"].items()
            }
    where = "all layers" if layers == "all" else f"@ {list(layers)}"
    what = f"{args.op} {args.direction} x{args.coeff} {where}" + (f" row {fixed}" if fixed is not None else "")
    blocks = []
    for r in rows:
        lines = [
            f"# {r['instruction']}",
            f"[baseline{' REFUSED' if r['baseline_refused'] else ''}] {r['baseline']}",
            f"[steered {what}{' REFUSED' if r['steered_refused'] else ''}] {r['steered']}",
        ]
        if system is not None:
            lines.append(f"[system prompt{' REFUSED' if r['prompted_refused'] else ''}] {r['prompted']}")
        if args.topk:
            for col, kl in r["kl"].items():
                end = r["compare_end"][col]
                lines.append(
                    f"  KL(baseline || {col}) per step: {' '.join(f'{k:.3f}' for k in kl)}  (stopped: {end}"
                    + (f" at step {r['diverged_at'][col]})" if end == "diverged" else ")")
                )
        if trace is not None:
            for col, toks in r["trace"].items():
                for n in trace.names:
                    vals = " ".join(f"{t['projection'][n]:+.2f}" for t in toks)
                    lines.append(f"  {col} h.v_hat({n}) at row {trace_layer}: {vals}")
        blocks.append("\n".join(lines))
    emit_rows(args, rows, "\n\n".join(blocks))
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("generate", help="baseline and steered (added or ablated) generations side by side")
    add_common(sp)
    add_prompt_input(sp)
    sp.add_argument("--directions", metavar="FILE")
    sp.add_argument("--direction", default="harmfulness", help="harmfulness | refusal | category NAME")
    sp.add_argument(
        "--op",
        choices=["add", "ablate"],
        default="add",
        help="add: h + c*v at the block inputs; ablate: h - c*(h.v_hat)v_hat (directional ablation, c=1 removes it)",
    )
    sp.add_argument("--layer", type=int, action="append", help="block(s) to steer at (repeatable); default L/2 for "
                    "add, every block for ablate")  # fmt: skip
    sp.add_argument("--all-layers", action="store_true", help="steer at every block")
    sp.add_argument(
        "--direction-row",
        type=_direction_row,
        metavar="N|each",
        help="which row of the direction each block uses: 'each' (block l uses row l; the default for add) or one "
        "fixed row N at every block (the Arditi convention; the default for ablate is N = L/2)",
    )
    sp.add_argument("--coeff", type=number, default=1.0)
    sp.add_argument(
        "--positions",
        choices=["prompt", "context", "all"],
        help="prompt tokens (prefill only), the context span, or prompt + generated tokens; default: prompt for add, "
        "all for ablate (Arditi et al. ablate at every position)",
    )
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    sp.add_argument("--seed", type=int, default=0)
    sys_group = sp.add_mutually_exclusive_group()
    sys_group.add_argument(
        "--system-prompt", metavar="TEXT", help="add a column: the instruction under this system prompt"
    )
    sys_group.add_argument(
        "--system-prompt-file", metavar="F", help="the same, with the system prompt read from a file"
    )
    sp.add_argument(
        "--trace",
        type=int,
        nargs="?",
        const=-1,
        metavar="ROW",
        help="per generated token, h.v_hat and cosine on the harmfulness and refusal directions at captured row ROW "
        "(0..L; default: the steered layer, or the fixed direction row)",
    )
    sp.add_argument("--topk", type=int, default=0, metavar="K", help="per step the K most likely next tokens, and KL "
                    "(baseline || steered) per step until the texts diverge")  # fmt: skip
    sp.set_defaults(func=cmd_generate)
