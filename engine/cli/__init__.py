"""Command line: ``python -m engine COMMAND ...`` (one module per command group).

Every command takes ``--json``: stdout then carries only one JSON document. Progress goes to stderr; errors are
one clear line on stderr and a non-zero exit status (2 for bad input, argument errors included; 1 for anything
else, such as a model that cannot be loaded or an output path that cannot be written).

Modules: ``common`` (progress bar, output, loading, prompt input), ``info`` (models, datasets, positions),
``directions`` (directions, precompute), ``generate``, ``guard``, ``reproduce``, ``controlvector``
(export-control-vector, import-control-vector), ``app`` (the app launcher and the ``steering-explorer`` console
script, which is this parser under that name). A command module has ``register(sub)``, which adds
its subparsers with ``func=`` set; ``main`` maps errors to one line."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import NoReturn

from . import app, controlvector, directions, generate, guard, guard_eval, info, reproduce

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(message: object) -> str:
    """A message on one line: library errors sometimes carry several lines of advice."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def build_parser(prog: str = "python -m engine") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="steering-explorer: harmfulness vs refusal directions")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (info, directions, generate, guard, guard_eval, reproduce, controlvector, app):
        module.register(sub)
    return p


def main(argv: list[str] | None = None, prog: str = "python -m engine") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.json or args.quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # the hub client's retry warnings ("... thrown while requesting HEAD ...") are progress noise here
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    try:
        import huggingface_hub.utils.logging as hub_logging
        import transformers

        transformers.logging.disable_progress_bar()
        if args.json:
            transformers.logging.set_verbosity_error()
        if args.json or args.quiet:
            hub_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    from ..datasets import DatasetError
    from ..models import ModelError
    from ..storage import StorageError

    def one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        sys.stderr.write(f"warning: {_one_line(message)}\n")  # e.g. a damaged cache set aside (engine.atomic)

    warnings.showwarning = one_line_warning
    try:
        return args.func(args)
    except (ValueError, KeyError, DatasetError, StorageError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        sys.stderr.write(f"error: {_one_line(msg)}\n")
        return 2
    except ModelError as exc:
        sys.stderr.write(f"error: {_one_line(exc)}\n")
        return 1
    except OSError as exc:  # e.g. an --out path that cannot be created or written
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"error: {where}{_one_line(exc.strerror or exc)} (check the paths given, e.g. --out)\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
