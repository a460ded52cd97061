"""The informational commands: ``models`` (registry, install and cache state), ``datasets`` (built-in sets), ``positions`` (t_inst / t_post_inst of one instruction)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_common, emit, load

__all__ = ["register"]


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import cached_models

    rows = cached_models()
    emit(
        args,
        rows,
        "\n".join(f"{r['name']:<12} {'cached' if r['cached'] else 'not cached':<11} {r['description']}" for r in rows),
    )
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from ..datasets import form_stats, list_builtin, load_builtin

    rows = list_builtin()
    if args.stats:
        for r in rows:
            r["form"] = form_stats(load_builtin(r["name"]))
    emit(
        args,
        rows,
        "\n".join(f"{r['name']:<26} {r['kind']:<24} n={r['n']} train={r['n_train']} test={r['n_test']}" for r in rows),
    )
    return 0


def cmd_positions(args: argparse.Namespace) -> int:
    from ..positions import locate

    handle = load(args)
    p = locate(handle.tokenizer, args.instruction, post_inst=not args.no_post_inst)
    payload = {
        "model": args.model,
        "prompt": p.prompt,
        "tokens": list(p.tokens),
        "t_inst": p.t_inst,
        "t_post_inst": p.t_post_inst,
    }
    emit(
        args,
        payload,
        f"t_inst={p.t_inst} ({p.tokens[p.t_inst]!r})  t_post_inst={p.t_post_inst} ({p.tokens[p.t_post_inst]!r})\n{p.prompt}",
    )
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("models", help="the model registry and what is cached")
    add_common(sp, model=False)
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("datasets", help="the built-in instruction sets")
    add_common(sp, model=False)
    sp.add_argument("--stats", action="store_true", help="add form statistics (questions, punctuation, length)")
    sp.set_defaults(func=cmd_datasets)

    sp = sub.add_parser("positions", help="t_inst and t_post_inst of an instruction")
    add_common(sp)
    sp.add_argument("instruction")
    sp.add_argument("--no-post-inst", action="store_true", help="cut the prompt right after the instruction")
    sp.set_defaults(func=cmd_positions)
