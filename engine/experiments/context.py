"""The shared run context of the experiments: directions, held-out test records, labels and activations, each
computed once per context (``run_all`` runs every experiment on one context).

Contract:
- ``resolve_bundle(handle, data, bundle)``: the directions to use and a note on where they came from. A given
  bundle is checked against the model; ``None`` means ``default_directions(handle)`` for the built-in data with the
  substring labeller (built from the built-in train splits), else ``precompute`` on ``data``'s train sets. Nothing
  is memoised across calls: a context resolves its bundle once, and a caller that runs experiments one at a time
  on its own data can resolve once and pass the bundle to each run.
- Instructions are normalised as the bundle's were (``provenance.data.normalized_instructions``; default on:
  trailing punctuation stripped, ``engine.clusters.normalized``), so the test prompts look like the prompts the
  centroids came from. A test instruction that also occurs in the train data is dropped (and noted).
- Records are ``engine.clusters.prompt_records`` dicts plus ``"kind"`` (harmful | harmless | xstest_like |
  jailbreak); labelling adds ``"refused"`` and ``"cluster"`` (``engine.clusters.cluster_of``).
- Behaviour labels come from :func:`engine.labels.label_refusals` with the full chat template (the context's
  labeller: ``substring`` or ``logodds``); with the built-in data and default directions the train labels saved
  beside the bundle are reused. ``limit`` caps the prompts taken from every test set (a seeded sample, order kept);
  without it each experiment uses its own default cap (its registry options: generation sweeps are capped,
  capture-only analyses use every test prompt).
- ``acts(instructions)``: hidden states ``(n, 2, L+1, d)`` at (t_inst, t_post_inst), float32, memoised per
  instruction. ``stage(what)`` is a progress callback labelled ``"<experiment>: <what>"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import datasets as ds
from ..capture import capture
from ..clusters import CLUSTERS, cluster_of, prompt_records
from ..directions import DirectionBundle
from ..labels import LABELLERS, Label, label_refusals
from ..models import ModelHandle
from ..positions import MAX_INSTRUCTION_CHARS
from ..precompute import default_directions, load_records, precompute
from ..progress import Progress, staged
from .data import ExperimentData

__all__ = ["GROUPS", "RunContext", "resolve_bundle"]

# the clusters in the order of the paper's Fig. 2/3 (and of the result rows): first the two where behaviour and
# harmfulness disagree (accepted harmful, refused harmless), then refused harmful and accepted harmless
GROUPS: tuple[str, ...] = tuple(sorted(CLUSTERS, key=lambda c: c.startswith("refused") == c.endswith("_harmful")))

Record = dict[str, Any]


def bundle_normalize(bundle: DirectionBundle) -> bool:
    """Whether the bundle's instructions were normalised when its directions were built (default: yes)."""
    return bool(bundle.provenance.get("data", {}).get("normalized_instructions", True))


def resolve_bundle(
    handle: ModelHandle,
    data: ExperimentData,
    bundle: DirectionBundle | None = None,
    *,
    labeller: str = "substring",
    progress: Progress | None = None,
) -> tuple[DirectionBundle, str]:
    """The directions to use and a note on where they came from (see the module docstring)."""
    if bundle is not None:
        if bundle.n_rows != handle.n_rows or bundle.hidden_size != handle.hidden_size:
            raise ValueError(
                f"the directions are {bundle.n_rows} x {bundle.hidden_size}, the model needs {handle.n_rows} x "
                f"{handle.hidden_size}; recompute them for this model"
            )
        lab = bundle.provenance.get("data", {}).get("labeller", "?")
        return bundle, f"directions: given bundle (model {bundle.provenance.get('model_id', '?')}, labeller {lab})"
    if data.source == "builtin" and labeller == "substring":
        b = default_directions(handle, progress=progress)
        sets = [
            d.get("name")
            for d in b.provenance.get("data", {}).get("harmful", []) + b.provenance.get("data", {}).get("harmless", [])
        ]
        return b, f"directions: default_directions (built-in train splits: {', '.join(str(s) for s in sets)})"
    b = precompute(handle, data.harmful_train, data.harmless_train, labeller=labeller, progress=progress).bundle
    n_tr = sum(len(s) for s in data.harmful_train + data.harmless_train)
    return b, f"directions: precomputed from the train split of the data ({n_tr} prompts, labeller {labeller})"


class RunContext:
    """Shared state of one or several experiment runs: data, directions, label and activation memos."""

    def __init__(
        self,
        handle: ModelHandle,
        bundle: DirectionBundle | None,
        data: ExperimentData | None,
        limit: int | None,
        progress: Progress | None,
        labeller: str = "substring",
        seed: int = 0,
    ):
        if labeller not in LABELLERS:
            raise ValueError(f"labeller must be one of {LABELLERS}, not {labeller!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        self.handle = handle
        self.data = data if data is not None else ExperimentData.builtin()
        self.limit = limit
        self.progress = progress
        self.labeller = labeller
        self.seed = seed
        self.experiment = ""  # the experiment now running (set by the runner; labels the progress stages)
        self.bundle, self.bundle_note = resolve_bundle(handle, self.data, bundle, labeller=labeller, progress=progress)
        self.normalize = bundle_normalize(self.bundle)
        self.train = self.data.train_instructions(self.normalize)
        self._labels: dict[tuple[str, bool, str], Label] = {}
        if bundle is None and self.data.source == "builtin" and labeller == "substring":
            self._seed_labels()
        self._acts: dict[str, np.ndarray] = {}
        self._jailbreaks: dict[tuple[int | None, int | None], list[Record]] = {}
        self.dropped: list[str] = []
        self.too_long = 0

    def _seed_labels(self) -> None:
        """Reuse the train labels saved beside the default bundle (the very labels its centroids were built from)."""
        try:
            recs = load_records(self.handle) or []
        except (OSError, ValueError):
            return
        for r in recs:
            if isinstance(r, dict) and isinstance(r.get("instruction"), str) and isinstance(r.get("refused"), bool):
                inst = r["instruction"]
                self._labels[(inst, True, "substring")] = Label(
                    inst, r["refused"], str(r.get("response") or ""), cached=True
                )

    # -- progress
    def stage(self, what: str) -> Progress | None:
        """A progress callback reporting under ``"<experiment>: <what>"``."""
        return staged(self.progress, f"{self.experiment}: {what}" if self.experiment else what)

    def cap(self, default: int | None) -> int | None:
        """The per-set prompt cap: the run's ``limit`` if given, else the experiment's ``default``."""
        return self.limit if self.limit is not None else default

    # -- prompts
    def records(self, sets: list[ds.PromptSet], kind: str, cap: int | None, *, held_out: bool = True) -> list[Record]:
        """Prompts of ``sets`` (at most ``cap`` per set, seeded), normalised, without duplicates; with ``held_out``
        train instructions are dropped. ``kind == "harmful"`` marks them harmful."""
        sampled = [s.sample(cap, self.seed) for s in sets]
        harmful = kind == "harmful"
        out: list[Record] = []
        seen: set[str] = set()
        for r in prompt_records(sampled if harmful else [], [] if harmful else sampled, normalize=self.normalize):
            inst = r["instruction"]
            if held_out and inst in self.train:
                self.dropped.append(inst)
                continue
            if inst in seen:
                continue
            seen.add(inst)
            r["kind"] = kind
            out.append(r)
        return out

    def test_records(
        self, cap: int | None, kinds: Sequence[str] = ("harmful", "harmless", "xstest_like")
    ) -> list[Record]:
        sets = {
            "harmful": self.data.harmful_test,
            "harmless": self.data.harmless_test,
            "xstest_like": self.data.xstest_like_test,
        }
        out: list[Record] = []
        for k in kinds:
            out += self.records(sets[k], k, cap)
        return out

    def train_records(self) -> list[Record]:
        """Every train prompt (harmful sets, then harmless), normalised, without duplicates within each kind."""
        return self.records(self.data.harmful_train, "harmful", None, held_out=False) + self.records(
            self.data.harmless_train, "harmless", None, held_out=False
        )

    # -- labels
    def label(
        self, recs: Sequence[Record], *, post_inst: bool = True, labeller: str | None = None, stage: str = "labelling"
    ) -> list[bool]:
        """Refused flags of ``recs`` (memoised); with the full template and the run's labeller the records get
        ``"refused"`` and ``"cluster"``."""
        lab = labeller or self.labeller
        insts = [r["instruction"] for r in recs]
        todo = list(dict.fromkeys(i for i in insts if (i, post_inst, lab) not in self._labels))
        if todo:
            got = label_refusals(self.handle, todo, labeller=lab, post_inst=post_inst, progress=self.stage(stage))
            for i, g in zip(todo, got, strict=True):
                self._labels[(i, post_inst, lab)] = g
        # label_refusals raises on failed generations (errors="raise"), so every refused flag here is a bool
        flags = [bool(self._labels[(i, post_inst, lab)].refused) for i in insts]
        if post_inst and lab == self.labeller:
            for r, f in zip(recs, flags, strict=True):
                r["refused"] = f
                r["cluster"] = cluster_of(r["harmful"], f)
        return flags

    # -- activations at (t_inst, t_post_inst)
    def acts(self, insts: Sequence[str], stage: str = "capturing") -> np.ndarray:
        """Hidden states ``(n, 2, L+1, d)`` at (t_inst, t_post_inst), captured once per instruction."""
        todo = list(dict.fromkeys(i for i in insts if i not in self._acts))
        if todo:
            a = capture(self.handle, todo, ("t_inst", "t_post_inst"), progress=self.stage(stage)).acts
            self.remember_acts(todo, a)
        if not insts:
            return np.zeros((0, 2, self.handle.n_rows, self.handle.hidden_size), dtype=np.float32)
        return np.stack([self._acts[i] for i in insts])

    def remember_acts(self, insts: Sequence[str], acts: np.ndarray) -> None:
        """Keep ``acts`` ``(n, 2, L+1, d)`` at (t_inst, t_post_inst) captured elsewhere (first capture wins)."""
        for i, x in zip(insts, acts, strict=True):
            self._acts.setdefault(i, x)

    def template_jailbreaks(self, n_prompts: int | None, n_templates: int | None) -> list[Record]:
        """Templates filled with harmful test prompts, labelled (refused = the jailbreak failed).

        Records have ``id`` ``"<template id>|<prompt id>"``, ``set`` = the template id, ``kind`` ``"jailbreak"``.
        """
        key = (n_prompts, n_templates)
        if key not in self._jailbreaks:
            tpl = self.data.templates
            if tpl is None or not len(tpl):
                self._jailbreaks[key] = []
                return []
            tpl = tpl.sample(n_templates, self.seed)
            harmful = self.records(self.data.harmful_test, "harmful", n_prompts)
            recs: list[Record] = []
            for t in tpl.items:
                for h in harmful:
                    filled = ds.fill_template(t.instruction, h["instruction"])
                    if len(filled) > MAX_INSTRUCTION_CHARS:
                        self.too_long += 1
                        continue
                    recs.append(
                        {
                            "id": f"{t.id}|{h['id']}",
                            "set": t.id,
                            "raw": filled,
                            "instruction": filled,
                            "harmful": True,
                            "category": t.category,
                            "split": h["split"],
                            "kind": "jailbreak",
                        }
                    )
            if recs:
                self.label(recs, stage="labelling filled jailbreak templates")
            self._jailbreaks[key] = recs
        return self._jailbreaks[key]

    def note_common(self) -> list[str]:
        """Notes every result carries: directions, data, normalisation, labeller, skipped and dropped prompts."""
        notes = [
            self.bundle_note,
            f"data: {self.data.source}; instructions normalised: {self.normalize}; labeller: {self.labeller}",
        ]
        if self.too_long:
            notes.append(
                f"{self.too_long} filled template(s) longer than {MAX_INSTRUCTION_CHARS} characters were skipped"
            )
        if self.dropped:
            notes.append(
                f"{len(set(self.dropped))} test instruction(s) also in the train data were dropped (held-out discipline)"
            )
        return notes
