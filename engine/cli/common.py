"""Shared pieces of the command line: the progress bar, output, model and directions loading, prompt files.

Contract: ``emit`` writes exactly one JSON document with ``--json`` (else the human text); ``Progress`` writes to
stderr only; ``add_common`` adds ``--json``, ``--quiet`` and (for model commands) ``--model``, ``--device``,
``--dtype``, ``--trust-remote-code``.

Prompt input, one way for every command that takes instructions: ``add_prompt_input`` adds the arguments (``-`` for
stdin, one instruction a line), ``--file PATH`` (every format ``engine.datasets.load_file`` reads) with
``--column``, and ``--jsonl``; ``read_instructions`` returns the instructions (a ``ValueError`` that says what to
give when there are none or two sources); ``emit_rows`` prints rows as one JSON document, or with ``--jsonl`` one line
per row as soon as it is ready (``in_batches`` makes a command's work lazy per batch) with a progress bar on
stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = [
    "STDIN",
    "Progress",
    "add_common",
    "add_prompt_input",
    "directions_for",
    "emit",
    "emit_rows",
    "in_batches",
    "load",
    "number",
    "read_instructions",
    "read_prompts",
]


class Progress:
    """A small stderr progress bar (no dependency); silent when stderr is not a terminal and quiet is set."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.last = 0.0
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if done < total and now - self.last < 0.5 and stage == self.stage:
            return
        self.last, self.stage = now, stage
        width = 30
        frac = done / total if total else 1.0
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{stage or 'working'} [{bar}] {done}/{total}{end}")
        sys.stderr.flush()


def emit(args: argparse.Namespace, payload: Any, human: str | None = None) -> None:
    if args.json or human is None:
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=None if args.json else 1, default=str) + "\n")
    else:
        sys.stdout.write(human.rstrip() + "\n")


def load(args: argparse.Namespace) -> Any:
    from ..models import ModelSpec, load_model

    spec = ModelSpec(name=args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    return load_model(spec)


def directions_for(args: argparse.Namespace, handle: Any, prog: Progress) -> Any:
    from ..precompute import default_directions
    from ..storage import load_bundle

    if getattr(args, "directions", None):
        return load_bundle(args.directions, handle, allow_other_model=getattr(args, "allow_other_model", False))
    return default_directions(handle, progress=prog)


def read_prompts(paths: list[str], limit: int, seed: int, normalize: bool) -> list[Any]:
    from ..datasets import load_file

    sets = []
    for p in paths:
        ps = load_file(p, normalize=normalize)
        if ps.skipped:
            sys.stderr.write(
                f"{p}: skipped {len(ps.skipped)} malformed rows (first: row {ps.skipped[0].row}: {ps.skipped[0].reason})\n"
            )
        sets.append(ps.sample(limit, seed=seed))
    return sets


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc


def add_common(sp: argparse.ArgumentParser, model: bool = True, *, fidelity: bool = False) -> None:
    """``fidelity``: a command whose numbers are the paper's (precompute, directions, reproduce): ``--dtype``
    defaults to float32 there; elsewhere ``auto`` (bfloat16 on CPUs with native bfloat16, see
    ``engine.models.resolve_dtype``)."""
    sp.add_argument("--json", action="store_true", help="print only one JSON document on stdout")
    sp.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    if model:
        sp.add_argument(
            "--model",
            default=os.environ.get("STEERING_EXPLORER_MODEL", "default"),
            help="default | qwen-1.5b | tiny-random | a local .gguf file | HF id | folder",
        )
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
        sp.add_argument(
            "--dtype",
            default="float32" if fidelity else "auto",
            choices=["auto", "float32", "bfloat16", "float16"],
            help="float32 (default here: the paper-fidelity runs)"
            if fidelity
            else "auto (default: bfloat16 on CPUs with native bfloat16, else float32), float32, bfloat16, float16",
        )
        sp.add_argument("--trust-remote-code", action="store_true")
        sp.add_argument(
            "--allow-other-model",
            action="store_true",
            help="accept a --directions file made for another model of the same shape (normally refused)",
        )


# ------------------------------------------------------------------------------------------- prompt input
STDIN = "-"
Row = dict[str, Any]
T = TypeVar("T")


def add_prompt_input(sp: argparse.ArgumentParser, *, single: bool = False) -> None:
    """Instructions as arguments, ``-`` for stdin (one instruction a line), or ``--file PATH`` (any format the
    loaders read: CSV, JSONL, JSON, TXT and the benchmark schemas) with ``--column``; plus ``--jsonl`` output.

    ``single``: at most one instruction as an argument (``positions``; ``-`` and ``--file`` may still give many);
    otherwise any number of arguments."""
    sp.add_argument(
        "instructions",
        nargs="?" if single else "*",
        metavar="INSTRUCTION",
        help=("the instruction" if single else "the instruction(s)")
        + "; '-' reads them from stdin, one a line (or use --file)",
    )
    sp.add_argument("--file", metavar="PATH", help="read instructions from a prompt file (CSV/JSONL/JSON/TXT)")
    sp.add_argument("--column", metavar="NAME", help="the instruction column of --file (default: detected)")
    sp.add_argument(
        "--jsonl",
        action="store_true",
        help="print one JSON line per instruction as soon as it is done (for big inputs; progress on stderr)",
    )


def read_instructions(args: argparse.Namespace) -> list[str]:
    """The instructions of a command, from its arguments, stdin or ``--file`` (exactly one source).

    Call it before loading the model: a missing or malformed input fails in a moment, not after the load."""
    from ..datasets import load_file

    given = args.instructions
    items = [given] if isinstance(given, str) else list(given or [])
    sources = (1 if items else 0) + (1 if args.file else 0)
    if sources == 0:
        raise ValueError(
            "the following arguments are required: instructions (give them as arguments, '-' for stdin, or "
            "--file PATH; see --help)"
        )
    if sources > 1:
        raise ValueError("give the instructions either as arguments / '-' or with --file, not both")
    if args.column and not args.file:
        raise ValueError("--column needs --file")
    if args.file:
        ps = load_file(args.file, column=args.column)
        if ps.skipped:
            sys.stderr.write(
                f"{args.file}: skipped {len(ps.skipped)} malformed rows "
                f"(first: row {ps.skipped[0].row}: {ps.skipped[0].reason})\n"
            )
        out = ps.instructions()
        if not out:
            raise ValueError(f"{args.file}: no instructions in the file")
        return out
    if items == [STDIN]:
        from ..datasets import MAX_FILE_BYTES

        raw = sys.stdin.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"stdin holds more than {MAX_FILE_BYTES // 1_000_000} MB; split it or use --file")
        lines = [line.strip() for line in raw.splitlines()]
        out = [line for line in lines if line]
        if not out:
            raise ValueError("no instructions on stdin (one instruction a line)")
        return out
    if STDIN in items:
        raise ValueError("'-' (stdin) cannot be mixed with instructions given as arguments")
    return items


def in_batches(items: Sequence[T], fn: Callable[[list[T]], Iterable[Row]], size: int = 32) -> Iterator[Row]:
    """``fn`` over ``items`` in batches of ``size``, lazily: each batch runs when its rows are asked for, so
    :func:`emit_rows` with ``--jsonl`` prints the rows of one batch before the next starts."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    for i in range(0, len(items), size):
        yield from fn(list(items[i : i + size]))


def emit_rows(
    args: argparse.Namespace,
    rows: Iterable[Row],
    human: str | Callable[[list[Row]], str],
    *,
    total: int | None = None,
    stage: str = "rows",
) -> None:
    """Rows as one JSON document (``--json``), JSON lines (``--jsonl``) or the human text.

    With ``--jsonl`` each row is written (and flushed) as soon as ``rows`` yields it, with a progress bar on stderr
    (``stage``, out of ``total`` when given; none with ``--quiet``). Otherwise the rows are collected first and
    ``human`` may be a function of them."""
    if getattr(args, "jsonl", False):
        bar = Progress(getattr(args, "quiet", False))
        n = 0
        for r in rows:
            sys.stdout.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
            sys.stdout.flush()
            n += 1
            bar(stage, n, max(total or 0, n) if total is not None else n + 1)
        if total is None or n < total:
            bar(stage, n, n)  # end the bar's line
        return
    collected = list(rows)
    emit(args, collected, human(collected) if callable(human) else human)
