"""Packaging: the ``steering-explorer`` console script and the app's files in an installed package.

- The console script's target (``[project.scripts]``) resolves to ``engine.cli.app.console_main``, which runs
  ``--help`` and a tiny-random command in-process and from another folder (a subprocess whose working directory is
  not the checkout). The test environment may be an editable install made before the script existed, so the
  installed script file itself is not run here.
- ``test_wheel_installs_and_runs_from_its_own_files`` (marker ``packaging``) builds a wheel, installs it into a
  folder and runs the package from there: the app, its pages and assets come from the wheel's package data.
- ``[tool.setuptools] packages`` is a list (the repository root is mapped to ``engine._app`` for the app's files):
  it must name every package under ``engine/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from engine.cli import app as app_cli
from engine.resources import app_root, app_script

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _engine_packages() -> set[str]:
    return {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "engine").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


def test_package_list_names_every_engine_package():
    listed = set(SETUPTOOLS["packages"])
    assert _engine_packages() <= listed, f"add to pyproject.toml's packages: {sorted(_engine_packages() - listed)}"
    assert listed - _engine_packages() == {"engine._app", "engine._app.pages"}
    assert SETUPTOOLS["package-dir"] == {"engine._app": ".", "engine._app.pages": "pages"}


def test_package_data_globs_match_the_files_the_app_needs():
    globs = SETUPTOOLS["package-data"]["engine._app"]
    matched = {p.relative_to(ROOT).as_posix() for g in globs for p in ROOT.glob(g) if p.is_file()}
    for needed in (
        "assets/palette.json",
        "assets/harmful.jsonl",
        "assets/directions/default.safetensors",
        ".streamlit/config.toml",
    ):
        assert needed in matched, needed
    assert all(any(ROOT.glob(g)) for g in globs), "a package-data glob matches nothing"


def test_console_script_target_resolves():
    target = PYPROJECT["project"]["scripts"]["steering-explorer"]
    module, _, attr = target.partition(":")
    assert (module, attr) == ("engine.cli.app", "console_main")
    assert getattr(__import__(module, fromlist=[attr]), attr) is app_cli.console_main
    eps = [e for e in metadata.entry_points(group="console_scripts") if e.name == "steering-explorer"]
    if eps:  # an install made after the script was added: its metadata points at the same function
        assert eps[0].value == target


def _console(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["steering-explorer", *argv])
    with pytest.raises(SystemExit) as exc:
        app_cli.console_main()
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_console_main_help_and_a_tiny_command(monkeypatch, capsys):
    rc, out, err = _console(monkeypatch, capsys, "--help")
    assert rc == 0 and out.startswith("usage: steering-explorer") and err == ""
    for sub in ("export-control-vector", "import-control-vector", "app", "positions", "guard", "generate"):
        assert sub in out
    rc, out, _ = _console(monkeypatch, capsys, "positions", "--help")
    assert rc == 0 and out.startswith("usage: steering-explorer positions")
    rc, out, _ = _console(monkeypatch, capsys, "positions", "--model", "tiny-random", "--quiet", "--json", "hi")
    assert rc == 0 and json.loads(out)["instruction"] == "hi"
    rc, out, err = _console(monkeypatch, capsys, "models", "--bogus")
    assert rc == 2 and out == "" and err.startswith("steering-explorer: error:")


def test_console_script_from_another_folder(tmp_path):
    """The entry point in a fresh interpreter whose working directory is not the checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-c", "from engine.cli.app import console_main; console_main()"]
    r = subprocess.run(
        [*run, "positions", "--model", "tiny-random", "--quiet", "--json", "hi"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["t_inst"] >= 0
    r = subprocess.run(
        [*run, "app", "--json", "--print-command"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["command"][4] == str(ROOT / "app.py") and doc["cwd"] == str(ROOT)


def test_app_files_are_found_in_the_checkout():
    assert app_root() == ROOT and app_script() == ROOT / "app.py"
    from engine.datasets import assets_dir
    from engine.palette import PALETTE_PATH

    assert PALETTE_PATH == ROOT / "assets" / "palette.json"
    if not os.environ.get("STEERING_EXPLORER_ASSETS"):
        assert assets_dir() == ROOT / "assets"


# ------------------------------------------------------------------------------------------------ a built wheel
_SOURCES = ("engine", "pages", "assets", ".streamlit", "docs/reproduction", "app.py", "pyproject.toml", "README.md")


@pytest.mark.packaging
def test_wheel_installs_and_runs_from_its_own_files(tmp_path):
    """Build a wheel from a copy of the sources (no build files in the checkout), check its contents, install it into
    a folder and run the package from there: its app, pages, assets and directions come from the wheel."""
    src = tmp_path / "src"
    for name in _SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, src / name)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    r = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    py_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "engine").rglob("*.py") if "__pycache__" not in p.parts}
    assert py_files <= names, f"missing from the wheel: {sorted(py_files - names)[:5]}"
    for f in ("app.py", "pages/steer.py", "assets/palette.json", "assets/directions/default.safetensors"):
        assert f"engine/_app/{f}" in names, f
    assert "engine/_app/.streamlit/config.toml" in names
    assert not any(n.startswith(("tests/", "bench/", "engine/_app/tests")) for n in names)
    ep = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "steering-explorer = engine.cli.app:console_main" in zipfile.ZipFile(wheel).read(ep).decode()

    site = tmp_path / "site"
    r = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    check = f"""
import json, os
import engine, engine.resources as r
from engine.datasets import assets_dir, load_builtin
from engine.palette import palette
from engine.precompute import ASSET_DIRECTIONS
site = {str(site)!r}
assert engine.__file__.startswith(site), engine.__file__
assert str(r.app_script()).startswith(site) and str(assets_dir()).startswith(site), (r.app_script(), assets_dir())
assert palette() and len(load_builtin("harmful")) > 0 and (ASSET_DIRECTIONS / "default.safetensors").is_file()
from streamlit.testing.v1 import AppTest
os.environ["STEERING_EXPLORER_MODEL"] = "tiny-random"
at = AppTest.from_file(str(r.app_script()), default_timeout=240)
at.run()
print(json.dumps({{"exceptions": [str(e.value) for e in at.exception], "title": at.title[0].value if at.title else None}}))
"""
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    env.pop("STEERING_EXPLORER_ASSETS", None)
    r = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"exceptions": [], "title": "Steer"}
    r = subprocess.run(
        [sys.executable, "-c", "from engine.cli.app import console_main; console_main()", "app", "--json",
         "--print-command"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cwd"] == str(site / "engine" / "_app")
