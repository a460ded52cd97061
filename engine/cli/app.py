"""The ``app`` command (``steering-explorer app``): start the Streamlit app from any folder; and the console script.

- The app's files are found by ``engine.resources`` (the checkout's, or the package data of a regular install), so
  the command works wherever it is run. Streamlit runs in the app's folder so that its ``.streamlit/config.toml``
  (local address, theme, upload size) applies; a ``--model`` that names an existing file or folder is made absolute
  first so it still points where the user meant.
- Streamlit runs as a child process: its exit status is the command's; SIGINT and SIGTERM sent to this process are
  passed on to it.
- ``--model`` sets ``$STEERING_EXPLORER_MODEL`` for the app; ``--port`` / ``--address`` are Streamlit's; anything
  after ``--`` goes to ``streamlit run`` as it is. ``--print-command`` prints the command (and the app's folder)
  without starting it.
- :func:`console_main` is the ``steering-explorer`` console script (``[project.scripts]`` in pyproject.toml): the
  same commands as ``python -m engine``, under that name.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

from .common import add_common, emit

__all__ = ["PROG", "app_command", "console_main", "register"]

PROG = "steering-explorer"


def app_command(
    *, port: int | None = None, address: str | None = None, extra: list[str] | None = None
) -> tuple[list[str], Path]:
    """The ``streamlit run`` command line for the app and the folder to run it in."""
    from ..resources import app_script

    script = app_script()
    cmd = [sys.executable, "-m", "streamlit", "run", str(script)]
    if address:
        cmd += ["--server.address", address]
    if port is not None:
        if not 0 < port < 65536:
            raise ValueError(f"--port {port}: give a port between 1 and 65535")
        cmd += ["--server.port", str(port)]
    return [*cmd, *(extra or [])], script.parent


def _model_for_app(model: str) -> str:
    """A model that names an existing path, made absolute (the app runs in its own folder)."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def cmd_app(args: argparse.Namespace) -> int:
    extra = list(args.streamlit_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd, cwd = app_command(port=args.port, address=args.address, extra=extra)
    env = dict(os.environ)
    if args.model:
        env["STEERING_EXPLORER_MODEL"] = _model_for_app(args.model)
    if args.print_command:
        payload = {"command": cmd, "cwd": str(cwd), "model": env.get("STEERING_EXPLORER_MODEL", "default")}
        emit(args, payload, f"cd {cwd} && {' '.join(cmd)}")
        return 0
    if not args.quiet:
        sys.stderr.write(f"starting the app from {cwd} (Ctrl+C stops it)\n")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env)
    # SIGTERM / SIGINT sent to this process alone (a service manager, `kill`) reach Streamlit too; a terminal's Ctrl+C
    # reaches both already, and Streamlit takes a second SIGINT as "stop now"
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: proc.send_signal(signum))
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return rc if rc >= 0 else 128 - rc


def register(sub: Any) -> None:
    sp = sub.add_parser(
        "app",
        help="start the Streamlit app (from any folder)",
        description="Start the steering-explorer app with Streamlit. Arguments after -- go to `streamlit run`.",
    )
    add_common(sp, model=False)
    sp.add_argument("--model", help="the model the app opens on (default: $STEERING_EXPLORER_MODEL or 'default')")
    sp.add_argument("--port", type=int, help="the port (default: Streamlit's, 8501)")
    sp.add_argument("--address", help="the address to serve on (default: 127.0.0.1, from the app's config)")
    sp.add_argument("--print-command", action="store_true", help="print the command instead of running it")
    sp.add_argument("streamlit_args", nargs=argparse.REMAINDER, help="-- then arguments for `streamlit run`")
    sp.set_defaults(func=cmd_app)


def console_main() -> NoReturn:
    """The ``steering-explorer`` console script."""
    from . import main

    raise SystemExit(main(prog=PROG))
