"""The informational commands: ``models`` (registry, install and cache state), ``datasets`` (built-in sets),
``positions`` (t_inst / t_post_inst of instructions).

``positions`` takes its instructions through ``common.add_prompt_input``: one instruction as an argument prints one
object (as it always did); ``-`` (stdin) or ``--file PATH`` print a list with one object per instruction, or one JSON
line each with ``--jsonl``."""

from __future__ import annotations

import argparse
from typing import Any

from .common import STDIN, add_common, add_prompt_input, emit, emit_rows, load, read_instructions

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


def _position_row(tokenizer: Any, model: str, instruction: str, post_inst: bool) -> dict[str, Any]:
    from ..positions import locate

    p = locate(tokenizer, instruction, post_inst=post_inst)
    return {
        "model": model,
        "instruction": instruction,
        "prompt": p.prompt,
        "tokens": list(p.tokens),
        "t_inst": p.t_inst,
        "t_post_inst": p.t_post_inst,
    }


def _position_text(r: dict[str, Any]) -> str:
    toks, i, j = r["tokens"], r["t_inst"], r["t_post_inst"]
    return f"t_inst={i} ({toks[i]!r})  t_post_inst={j} ({toks[j]!r})\n{r['prompt']}"


def cmd_positions(args: argparse.Namespace) -> int:
    instructions = read_instructions(args)  # before the model load: bad input fails at once
    one = isinstance(args.instructions, str) and args.instructions != STDIN and not args.jsonl
    handle = load(args)
    rows = (_position_row(handle.tokenizer, args.model, t, not args.no_post_inst) for t in instructions)
    if one:
        row = next(rows)
        emit(args, row, _position_text(row))
        return 0
    emit_rows(
        args,
        rows,
        lambda rs: "\n\n".join(f"# {r['instruction']}\n{_position_text(r)}" for r in rs),
        total=len(instructions),
        stage="positions",
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

    sp = sub.add_parser("positions", help="t_inst and t_post_inst of an instruction (or of a file's / stdin's)")
    add_common(sp)
    add_prompt_input(sp, single=True)
    sp.add_argument("--no-post-inst", action="store_true", help="cut the prompt right after the instruction")
    sp.set_defaults(func=cmd_positions)
