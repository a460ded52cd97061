"""Where the files that live beside the code are: ``app.py``, ``pages/``, ``assets/``, ``.streamlit/`` and the
stored reproduction results (``docs/reproduction``).

Contract:
- A source checkout or an editable install (``pip install -e .``): the repository root, the folder that holds
  ``engine/``. This is looked at first, so a checkout always uses its own files.
- A regular install (``pip install .`` or a wheel): the same files are package data in ``engine/_app/``
  (``pyproject.toml`` maps the repository root's ``app.py``, ``pages/``, ``assets/``, ``.streamlit/`` and
  ``docs/reproduction/**.json`` there), since the folder above an installed ``engine/`` is ``site-packages``.
- :func:`app_root` is the first of the two that holds ``app.py`` and ``pages/`` (``FileNotFoundError`` saying what to
  do otherwise); :data:`ASSETS_DIR` is the first whose ``assets/`` holds ``palette.json`` (the repository's path when
  neither does, so error messages name the expected place). No import of the rest of the engine here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ASSETS_DIR", "BUNDLED_ROOT", "CHECKOUT_ROOT", "app_root", "app_script", "project_root"]

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_ROOT = PACKAGE_DIR.parent
BUNDLED_ROOT = PACKAGE_DIR / "_app"
_ROOTS = (CHECKOUT_ROOT, BUNDLED_ROOT)


def _has_app(root: Path) -> bool:
    return (root / "app.py").is_file() and (root / "pages").is_dir()


def app_root() -> Path:
    """The folder holding ``app.py`` and ``pages/`` (checkout first, then the installed package data)."""
    for root in _ROOTS:
        if _has_app(root):
            return root
    raise FileNotFoundError(
        f"the app's files (app.py, pages/) are neither in {CHECKOUT_ROOT} nor in {BUNDLED_ROOT}; reinstall "
        "steering-explorer (pip install .) or run from a source checkout"
    )


def app_script() -> Path:
    """The Streamlit script to run (``streamlit run <this>``)."""
    return app_root() / "app.py"


def project_root() -> Path:
    """The checkout's root when there is one, else the installed package data (for optional files such as
    ``docs/reproduction``: callers check that what they read exists)."""
    return CHECKOUT_ROOT if _has_app(CHECKOUT_ROOT) else BUNDLED_ROOT


def _assets_dir() -> Path:
    for root in _ROOTS:
        if (root / "assets" / "palette.json").is_file():
            return root / "assets"
    return CHECKOUT_ROOT / "assets"


ASSETS_DIR = _assets_dir()
