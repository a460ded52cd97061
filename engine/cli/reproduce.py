"""The ``reproduce`` command: one of the paper's experiments, several, or all (options from the registry)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .common import Progress, add_common, emit, load

__all__ = ["register"]


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .. import experiments as ex

    options: dict[str, Any] = {}
    for kv in args.option or []:
        if "=" not in kv:
            raise ValueError(f"--option takes KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        try:
            options[k.replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            options[k.replace("-", "_")] = v
    if args.labeller:
        options["labeller"] = args.labeller
    prog = Progress(args.quiet)
    handle = load(args)
    bundle = None
    if args.directions:
        from ..storage import load_bundle

        bundle = load_bundle(args.directions, handle, allow_other_model=args.allow_other_model)
    data = None
    if args.harmful or args.harmless or args.xstest or args.templates or args.catqa:
        data = ex.ExperimentData.from_files(
            harmful=args.harmful or [],
            harmless=args.harmless or [],
            xstest=args.xstest or [],
            templates=args.templates,
            catqa=args.catqa or [],
            seed=args.seed,
            limit_per_file=args.file_limit,
        )
    out = Path(args.out) if args.out else None
    if out is not None:  # refuse a bad --out before hours of work
        from .. import atomic

        atomic.check_writable_dir(out)
    if args.experiment == "all" or "," in args.experiment:
        names = None if args.experiment == "all" else [n.strip() for n in args.experiment.split(",") if n.strip()]
        for n in names or []:
            if n not in ex.EXPERIMENTS:
                raise ValueError(f"unknown experiment {n!r}; choose from {', '.join(ex.EXPERIMENTS)} or all")
        index = ex.run_all(
            handle, bundle, data=data, limit=args.limit, out_dir=out, progress=prog, names=names, **options
        )
        emit(args, index, json.dumps(index, indent=1, default=str))
        if index.get("failed"):
            sys.stderr.write(
                f"error: {len(index['failed'])} experiment(s) failed: {', '.join(index['failed'])} (see the index)\n"
            )
            return 1
        return 0
    if args.experiment not in ex.EXPERIMENTS:
        raise ValueError(f"unknown experiment {args.experiment!r}; choose from {', '.join(ex.EXPERIMENTS)} or all")
    res = ex.run_experiment(
        args.experiment, handle, bundle, data=data, limit=args.limit, out_dir=out, progress=prog, **options
    )
    payload = res.to_json()
    emit(args, payload, json.dumps(payload, indent=1, default=str))
    return 0


def register(sub: Any) -> None:
    from ..experiments import EXPERIMENTS
    from ..labels import LABELLERS

    sp = sub.add_parser(
        "reproduce",
        help="run one of the paper's experiments (or all)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="experiments and their options (--option KEY=VALUE, JSON values; defaults shown):\n"
        + "\n".join(
            f"  {n}: {info.title} ({info.figure})"
            + (
                "\n    " + " ".join(f"{k}={json.dumps(v)}" for k, v in info.own_options.items())
                if info.own_options
                else ""
            )
            for n, info in EXPERIMENTS.items()
        )
        + "\n  every experiment: labeller (--labeller), seed=0 (the seeded caps)",
    )
    add_common(sp, fidelity=True)
    sp.add_argument("experiment", help=" | ".join([*EXPERIMENTS, "all", "a comma-separated list"]))
    sp.add_argument("--directions", metavar="FILE")
    sp.add_argument("--limit", type=int, default=None, help="cap prompts per set")
    sp.add_argument("--out", metavar="DIR")
    sp.add_argument("--harmful", nargs="+", metavar="FILE")
    sp.add_argument("--harmless", nargs="+", metavar="FILE")
    sp.add_argument("--xstest", nargs="+", metavar="FILE")
    sp.add_argument("--templates", metavar="FILE")
    sp.add_argument("--catqa", nargs="+", metavar="FILE")
    sp.add_argument("--file-limit", type=int, default=200, help="seeded sample per data file")
    sp.add_argument("--labeller", choices=list(LABELLERS), help="refused/accepted labeller")
    sp.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="experiment option (repeatable; JSON values), e.g. coeff=2; see the list below",
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the train/test split of the data files")
    sp.set_defaults(func=cmd_reproduce)
