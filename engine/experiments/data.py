"""Which prompts the experiments use: :class:`ExperimentData` (built-in sets or your files, split train/test).

Contract:
- Directions and centroids come from the ``*_train`` sets; every reported number from the ``*_test`` sets
  (``xstest_like_test``: harmless prompts that sound harmful, never used to build directions).
- ``ExperimentData.builtin()`` is the built-in sets with their stored split (the same train sets as
  ``engine.precompute.default_directions``). ``ExperimentData.from_files(...)`` reads prompt files and splits each
  one train/test with a seed. ``subset`` caps the sets (seeded samples, order kept).
- ``overlap()`` lists test instructions that also occur in the train sets after normalisation
  (``engine.clusters.normalized``); the run context drops them from the test sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import datasets as ds
from ..clusters import normalized

__all__ = ["ExperimentData"]


def _as_sets(x: Any) -> list[ds.PromptSet]:
    if x is None:
        return []
    if isinstance(x, ds.PromptSet):
        return [x]
    return list(x)


@dataclass
class ExperimentData:
    """Which prompts the experiments use. Directions come from the ``*_train`` sets, numbers from the ``*_test`` ones.

    ``xstest_like_test``: harmless prompts that sound harmful (the source of refused-harmless examples);
    ``templates``: jailbreak templates with an ``{instruction}`` slot; ``inversion_questions``: reply-inversion
    question wordings; ``categories``: harmful prompts with a ``category`` (for per-category directions).
    """

    harmful_train: list[ds.PromptSet]
    harmful_test: list[ds.PromptSet]
    harmless_train: list[ds.PromptSet]
    harmless_test: list[ds.PromptSet]
    xstest_like_test: list[ds.PromptSet] = field(default_factory=list)
    templates: ds.PromptSet | None = None
    inversion_questions: ds.PromptSet | None = None
    categories: list[ds.PromptSet] = field(default_factory=list)
    source: str = "custom"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in (
            "harmful_train",
            "harmful_test",
            "harmless_train",
            "harmless_test",
            "xstest_like_test",
            "categories",
        ):
            setattr(self, name, _as_sets(getattr(self, name)))

    @classmethod
    def builtin(cls) -> ExperimentData:
        """The built-in sets with their stored train/test split (the same train sets as ``default_directions``)."""
        return cls(
            harmful_train=[ds.load_builtin("harmful", "train")],
            harmful_test=[ds.load_builtin("harmful", "test")],
            harmless_train=[ds.load_builtin("harmless", "train"), ds.load_builtin("harmless_sounds_harmful", "train")],
            harmless_test=[ds.load_builtin("harmless", "test")],
            xstest_like_test=[ds.load_builtin("harmless_sounds_harmful", "test")],
            templates=ds.load_builtin("jailbreak_templates"),
            inversion_questions=ds.load_builtin("inversion_questions"),
            categories=[ds.load_builtin("harmful", "train")],
            source="builtin",
        )

    @classmethod
    def from_files(
        cls,
        harmful: Sequence[str | Path] = (),
        harmless: Sequence[str | Path] = (),
        xstest: Sequence[str | Path] = (),
        templates: str | Path | None = None,
        catqa: Sequence[str | Path] = (),
        *,
        seed: int = 0,
        test_frac: float = 0.4,
        limit_per_file: int | None = 200,
        inversion_questions: ds.PromptSet | None = None,
    ) -> ExperimentData:
        """Read prompt files with :func:`engine.datasets.load_file` and split each one train/test (seeded).

        ``harmful`` and ``harmless`` files are split ``1 - test_frac`` / ``test_frac``; ``xstest`` files (label
        ``safe`` kept when the field exists) go entirely to ``xstest_like_test`` (they are never used to build
        directions, as in the paper, where XSTest only supplies refused-harmless evaluation prompts); ``catqa``
        files are used whole for category directions. ``limit_per_file`` takes a seeded sample of each file first
        (Alpaca has 31k rows). Templates come from :func:`engine.datasets.load_templates`; the inversion questions
        default to the built-in wordings.
        """

        def paths(x: Any) -> list[str | Path]:
            return [x] if isinstance(x, (str, Path)) else list(x or [])

        harmful, harmless, xstest, catqa = paths(harmful), paths(harmless), paths(xstest), paths(catqa)
        if not harmful or not harmless:
            raise ValueError("from_files needs at least one harmful and one harmless file")
        if not 0.0 < test_frac < 1.0:
            raise ValueError("test_frac must be between 0 and 1")

        def load(p: str | Path, kind: str, **kw: Any) -> ds.PromptSet:
            return ds.load_file(p, kind=kind, limit=limit_per_file, seed=seed, **kw)

        out: dict[str, list[ds.PromptSet]] = {
            "harmful_train": [],
            "harmful_test": [],
            "harmless_train": [],
            "harmless_test": [],
        }
        for kind, files in (("harmful", harmful), ("harmless", harmless)):
            for p in files:
                tr, te = ds.split_set(load(p, kind), seed, test_frac)
                out[f"{kind}_train"].append(tr)
                out[f"{kind}_test"].append(te)
        xs: list[ds.PromptSet] = []
        for p in xstest:
            s = load(p, "harmless_sounds_harmful")
            if any(it.label for it in s.items):
                s = replace(s, items=[it for it in s.items if (it.label or "safe").lower() == "safe"])
            xs.append(replace(s, name=f"{s.name}:test", items=[replace(it, split="test") for it in s.items]))
        cats = [ds.load_file(p, kind="harmful", limit=limit_per_file, seed=seed) for p in catqa]
        return cls(
            **out,
            xstest_like_test=xs,
            templates=ds.load_templates(templates) if templates else None,
            inversion_questions=inversion_questions
            if inversion_questions is not None
            else ds.load_builtin("inversion_questions"),
            categories=cats,
            source="files",
            notes=[
                f"files split train/test with seed {seed}, test_frac {test_frac}, at most {limit_per_file} rows per file"
            ],
        )

    def subset(self, limit: int | None = None, train_limit: int | None = None, seed: int = 0) -> ExperimentData:
        """A smaller copy: at most ``limit`` prompts per test set and ``train_limit`` per train set (seeded)."""

        def cap(sets: list[ds.PromptSet], n: int | None) -> list[ds.PromptSet]:
            return [s.sample(n, seed) for s in sets]

        return ExperimentData(
            harmful_train=cap(self.harmful_train, train_limit),
            harmful_test=cap(self.harmful_test, limit),
            harmless_train=cap(self.harmless_train, train_limit),
            harmless_test=cap(self.harmless_test, limit),
            xstest_like_test=cap(self.xstest_like_test, limit),
            templates=self.templates.sample(limit, seed) if self.templates is not None else None,
            inversion_questions=self.inversion_questions,
            categories=cap(self.categories, train_limit),
            source=f"{self.source}:subset",
            notes=[*self.notes, f"subset: test sets capped at {limit}, train sets at {train_limit} (seed {seed})"],
        )

    def train_instructions(self, normalize: bool = True) -> set[str]:
        """Every train instruction (normalised when asked): the held-out filter of the test sets."""
        return {
            normalized(it.instruction, normalize) for s in self.harmful_train + self.harmless_train for it in s.items
        }

    def overlap(self, normalize: bool = True) -> list[str]:
        """Test instructions that also occur in the train sets (after normalisation)."""
        train = self.train_instructions(normalize)
        tests = [
            it.instruction for s in self.harmful_test + self.harmless_test + self.xstest_like_test for it in s.items
        ]
        return sorted({t for t in tests if normalized(t, normalize) in train})

    def describe(self) -> dict[str, Any]:
        """Provenance of every set (name, size, source, hash prefix) for the run's index."""

        def prov(sets: list[ds.PromptSet]) -> list[dict[str, Any]]:
            return [{"name": s.name, "n": len(s), "source": s.source, "sha256": s.sha256[:16]} for s in sets]

        return {
            "source": self.source,
            "harmful_train": prov(self.harmful_train),
            "harmful_test": prov(self.harmful_test),
            "harmless_train": prov(self.harmless_train),
            "harmless_test": prov(self.harmless_test),
            "xstest_like_test": prov(self.xstest_like_test),
            "templates": len(self.templates) if self.templates is not None else 0,
            "inversion_questions": len(self.inversion_questions) if self.inversion_questions is not None else 0,
            "categories": prov(self.categories),
            "notes": list(self.notes),
        }
