"""The ``guard-eval`` command: every guard method on labelled prompt files, per source and overall.

Prints per source: n, each method's accuracy at threshold 0 and at its calibrated threshold, and the source's ROC
AUC against every pooled prompt of the other class; overall: ROC AUC and balanced accuracy at each threshold
(``engine.guard.evaluate``). ``--templates CSV --template-harmful FILE`` adds filled jailbreak templates (the
successful ones pooled; ``--template-harmless`` adds the same templates filled with harmless prompts, the
form-matched control). The prompts are captured once; the readers come from the directions bundle or are fitted
once on the built-in train split (``engine.guard.store``)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from .common import Progress, add_common, directions_for, emit, load

__all__ = ["format_table", "register"]


def _pct(x: float) -> str:
    return "  –  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}"


def _auc(x: float) -> str:
    return "  –  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a plain-text table (one column pair per method: accuracy at 0 / calibrated, then AUC)."""
    methods = result["methods"]
    thr_names = ["0", "calibrated"]
    head = f"{'source':26s} {'truth':8s} {'n':>5s}"
    for m in methods:
        head += f" | {m:^23s}"
    sub = " " * 41
    for _ in methods:
        sub += " | " + " ".join(f"{t[:5]:>5s}" for t in (*thr_names, "AUC")) + "      "
    lines = [head, sub.rstrip(), "-" * len(head)]
    for row in result["sources"]:
        line = f"{row['source'][:26]:26s} {row['truth']:8s} {row['n']:5d}"
        for m in methods:
            r = row["methods"][m]
            accs = " ".join(_pct(r["accuracy"].get(t, float("nan"))) for t in thr_names)
            line += f" | {accs} {_auc(r['auc'])}      "
        lines.append(line.rstrip() + ("" if row["pooled"] else "   (not pooled)"))
    lines.append("-" * len(head))
    for label, key in (("balanced accuracy", "balanced_accuracy"), ("harmful flagged (TPR)", "tpr")):
        line = f"{label:26s} {'pooled':8s} {result['overall'][methods[0]]['n']:5d}"
        for m in methods:
            o = result["overall"][m]
            vals = " ".join(_pct(o[key].get(t, float("nan"))) for t in thr_names)
            line += f" | {vals} {_auc(o['auc']) if key == 'balanced_accuracy' else '     '}      "
        lines.append(line.rstrip())
    line = f"{'harmless passed (TNR)':26s} {'pooled':8s} {result['overall'][methods[0]]['n']:5d}"
    for m in methods:
        o = result["overall"][m]
        line += " | " + " ".join(_pct(o["tnr"].get(t, float("nan"))) for t in thr_names) + "            "
    lines.append(line.rstrip())
    thr = ", ".join(f"{m} {result['thresholds'][m].get('calibrated', float('nan')):+.4g}" for m in methods)
    lines.append(f"calibrated thresholds: {thr}")
    cap = result.get("capture") or {}
    if cap:
        lines.append(
            f"capture: {cap['prompts']} prompts in {cap['seconds']} s = {cap['prompts_per_second']} prompts/s "
            f"(batch {cap['batch_size']}, {cap['device']})"
        )
    return "\n".join(lines)


def cmd_guard_eval(args: argparse.Namespace) -> int:
    from ..guard import METHODS, evaluate_sources, labelled_sources, template_sources

    if bool(args.templates) != bool(args.template_harmful or args.template_harmless):
        raise ValueError(
            "--templates goes with --template-harmful and/or --template-harmless (the prompts to fill them with)"
        )
    methods = args.method or list(METHODS)
    sources = (
        labelled_sources(args.harmful or [], args.harmless or [], limit=args.limit, seed=args.seed, column=args.column)
        if args.harmful or args.harmless
        else []
    )
    if not sources and not args.templates:
        raise ValueError("give at least one labelled file (--harmful FILE ... and/or --harmless FILE ...)")
    prog = Progress(args.quiet)
    handle = load(args)
    bundle = directions_for(args, handle, prog)
    if args.templates:
        sources += template_sources(
            handle,
            args.templates,
            args.template_harmful,
            harmless=args.template_harmless,
            n_templates=args.n_templates,
            n_prompts=args.template_prompts,
            seed=args.seed,
            progress=prog,
        )
    res = evaluate_sources(
        handle, bundle, sources, methods, batch_size=args.batch_size, fit=not args.no_fit, rows=args.rows, progress=prog
    )
    res["model"] = handle.spec.name
    res["command"] = {"limit": args.limit, "seed": args.seed}
    emit(args, res, format_table(res))
    return 0


def register(sub: Any) -> None:
    from ..guard import METHODS

    sp = sub.add_parser("guard-eval", help="every Latent Guard method on labelled prompt files")
    add_common(sp)
    sp.add_argument("--harmful", nargs="+", metavar="PATH", help="files (or folders of files) of harmful prompts")
    sp.add_argument("--harmless", nargs="+", metavar="PATH", help="files (or folders of files) of harmless prompts")
    sp.add_argument("--column", metavar="NAME", help="the instruction column (default: detected per file)")
    sp.add_argument("--limit", type=int, default=None, help="seeded sample of at most N prompts per file")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--templates", metavar="FILE", help="jailbreak templates (GPTFuzzer CSV or JSONL) to fill")
    sp.add_argument("--template-harmful", metavar="FILE", help="harmful prompts to fill the templates with")
    sp.add_argument(
        "--template-harmless",
        metavar="FILE",
        help="harmless prompts to fill the same templates with: the form-matched control (truth harmless)",
    )
    sp.add_argument("--n-templates", type=int, default=10)
    sp.add_argument("--template-prompts", type=int, default=10, help="harmful prompts per template")
    sp.add_argument("--method", action="append", choices=METHODS, help="method(s) to evaluate (default: all)")
    sp.add_argument("--directions", metavar="FILE")
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--rows", action="store_true", help="with --json: every prompt's id, source and scores")
    sp.add_argument("--no-fit", action="store_true", help="fail instead of fitting missing readers")
    sp.set_defaults(func=cmd_guard_eval)
