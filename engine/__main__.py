"""Command line: ``python -m engine COMMAND ...``.

Every command takes ``--json``: stdout then carries only one JSON document. Progress goes to stderr; errors are
one clear line on stderr and a non-zero exit status (2 for bad input, argument errors included; 1 for anything
else, such as a model that cannot be loaded or an output path that cannot be written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main"]


class _Progress:
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


def _out(args: argparse.Namespace, payload: Any, human: str | None = None) -> None:
    if args.json or human is None:
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=None if args.json else 1, default=str) + "\n")
    else:
        sys.stdout.write(human.rstrip() + "\n")


def _load(args: argparse.Namespace) -> Any:
    from .models import ModelSpec, load_model

    spec = ModelSpec(name=args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    return load_model(spec)


def _directions(args: argparse.Namespace, handle: Any, prog: _Progress) -> Any:
    from .precompute import default_directions
    from .storage import load_bundle

    if getattr(args, "directions", None):
        return load_bundle(args.directions, handle)
    return default_directions(handle, progress=prog)


def _read_prompts(paths: list[str], limit: int, seed: int, normalize: bool) -> list[Any]:
    from .datasets import load_file

    sets = []
    for p in paths:
        ps = load_file(p, normalize=normalize)
        if ps.skipped:
            sys.stderr.write(
                f"{p}: skipped {len(ps.skipped)} malformed rows (first: row {ps.skipped[0].row}: {ps.skipped[0].reason})\n"
            )
        sets.append(ps.sample(limit, seed=seed))
    return sets


# ------------------------------------------------------------------------------------------------ commands
def cmd_models(args: argparse.Namespace) -> int:
    from .models import cached_models

    rows = cached_models()
    _out(
        args,
        rows,
        "\n".join(f"{r['name']:<12} {'cached' if r['cached'] else 'not cached':<11} {r['description']}" for r in rows),
    )
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .datasets import form_stats, list_builtin, load_builtin

    rows = list_builtin()
    if args.stats:
        for r in rows:
            r["form"] = form_stats(load_builtin(r["name"]))
    _out(
        args,
        rows,
        "\n".join(f"{r['name']:<26} {r['kind']:<24} n={r['n']} train={r['n_train']} test={r['n_test']}" for r in rows),
    )
    return 0


def cmd_positions(args: argparse.Namespace) -> int:
    from .positions import locate

    handle = _load(args)
    p = locate(handle.tokenizer, args.instruction, post_inst=not args.no_post_inst)
    payload = {
        "model": args.model,
        "prompt": p.prompt,
        "tokens": list(p.tokens),
        "t_inst": p.t_inst,
        "t_post_inst": p.t_post_inst,
    }
    _out(
        args,
        payload,
        f"t_inst={p.t_inst} ({p.tokens[p.t_inst]!r})  t_post_inst={p.t_post_inst} ({p.tokens[p.t_post_inst]!r})\n{p.prompt}",
    )
    return 0


def cmd_directions(args: argparse.Namespace) -> int:
    from .precompute import precompute
    from .storage import save_bundle

    prog = _Progress(args.quiet)
    handle = _load(args)
    if args.harmful or args.harmless:
        if not (args.harmful and args.harmless):
            raise ValueError("give both --harmful and --harmless files (or neither, to use the precomputed set)")
        harmful = _read_prompts(args.harmful, args.limit, args.seed, not args.no_normalize)
        harmless = _read_prompts(args.harmless, args.limit, args.seed, not args.no_normalize)
        bundle = precompute(
            handle, harmful, harmless, normalize=not args.no_normalize, normalize_directions=args.unit, progress=prog
        ).bundle
    else:
        bundle = _directions(args, handle, prog)
    if args.out:
        path = save_bundle(bundle, args.out)
        sys.stderr.write(f"saved {path} and {path.with_suffix('.json')}\n")
    s = bundle.summary()
    payload = {
        "n_layers": handle.n_layers,
        "hidden_size": handle.hidden_size,
        "norms": {"harmfulness": s["norms"]["harmfulness"], "refusal": s["norms"]["refusal"]},
        "cosine_harmfulness_refusal": s["cosine_harmfulness_refusal"],
    }
    human = "layer  |harm|    |ref|   cos\n" + "\n".join(
        f"{i:>5} {a:>8.3f} {b:>8.3f} {c:>6.3f}"
        for i, (a, b, c) in enumerate(
            zip(
                payload["norms"]["harmfulness"],
                payload["norms"]["refusal"],
                payload["cosine_harmfulness_refusal"],
                strict=True,
            )
        )
    )
    _out(args, payload, human)
    return 0


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc


def cmd_generate(args: argparse.Namespace) -> int:
    from .steering import GenerationConfig, SteeringSpec, side_by_side

    prog = _Progress(args.quiet)
    handle = _load(args)
    bundle = _directions(args, handle, prog)
    d = bundle.get(
        args.direction if ":" in args.direction or args.direction in bundle.directions else f"category:{args.direction}"
    )
    layers = tuple(args.layer) if args.layer else (handle.n_layers // 2,)
    spec = SteeringSpec(d.vectors, layers, args.coeff, args.positions)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed)
    rows = side_by_side(handle, args.instructions, spec, cfg)
    human = "\n\n".join(
        f"# {r['instruction']}\n[baseline{' REFUSED' if r['baseline_refused'] else ''}] {r['baseline']}\n"
        f"[steered {args.direction} x{args.coeff} @ {list(layers)}{' REFUSED' if r['steered_refused'] else ''}] {r['steered']}"
        for r in rows
    )
    _out(args, rows, human)
    return 0


def cmd_guard(args: argparse.Namespace) -> int:
    from .guard import guard

    prog = _Progress(args.quiet)
    handle = _load(args)
    bundle = _directions(args, handle, prog)
    res = guard(handle, bundle, args.instructions, threshold=args.threshold)
    rows = [r.to_dict() for r in res]
    _out(
        args,
        rows,
        "\n".join(f"{'HARMFUL ' if r['harmful'] else 'harmless'} {r['score']:+.4f}  {r['instruction']}" for r in rows),
    )
    return 0


def cmd_precompute(args: argparse.Namespace) -> int:
    from .datasets import load_builtin
    from .precompute import builtin_sources, precompute, save_result

    prog = _Progress(args.quiet)
    handle = _load(args)
    t0 = time.perf_counter()
    if args.harmful or args.harmless:
        harmful = (
            _read_prompts(args.harmful or [], args.limit, args.seed, False)
            if args.harmful
            else [load_builtin("harmful", "train")]
        )
        harmless = (
            _read_prompts(args.harmless or [], args.limit, args.seed, False)
            if args.harmless
            else builtin_sources("train")[1]
        )
    else:
        harmful, harmless = builtin_sources("train")
        if args.limit:
            harmful = [ps.sample(args.limit, seed=args.seed) for ps in harmful]
            harmless = [ps.sample(args.limit, seed=args.seed) for ps in harmless]
    res = precompute(
        handle,
        harmful,
        harmless,
        normalize=not args.no_normalize,
        normalize_directions=args.unit,
        labeller=args.labeller,
        refusal_pool=args.refusal_pool,
        label_tokens=args.label_tokens,
        progress=prog,
    )
    out_dir = Path(args.out) if args.out else None
    files = {}
    if out_dir is not None:
        files = save_result(res, out_dir, args.name or handle.spec.name.replace("/", "_"))
    summary = dict(res.summary)
    summary["files"] = files
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    _out(args, summary, json.dumps(summary, indent=1))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from . import experiments as ex

    options: dict[str, Any] = {}
    for kv in args.option or []:
        if "=" not in kv:
            raise ValueError(f"--option takes KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        try:
            options[k.replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            options[k.replace("-", "_")] = v
    if args.labeller:
        options["labeller"] = args.labeller
    prog = _Progress(args.quiet)
    handle = _load(args)
    bundle = None
    if args.directions:
        from .storage import load_bundle

        bundle = load_bundle(args.directions, handle)
    data = None
    if args.harmful or args.harmless or args.xstest or args.templates or args.catqa:
        data = ex.ExperimentData.from_files(
            harmful=args.harmful or [],
            harmless=args.harmless or [],
            xstest=args.xstest or [],
            templates=args.templates,
            catqa=args.catqa or [],
            seed=args.seed,
            limit_per_file=args.file_limit,
        )
    out = Path(args.out) if args.out else None
    if args.experiment == "all" or "," in args.experiment:
        names = None if args.experiment == "all" else [n.strip() for n in args.experiment.split(",") if n.strip()]
        for n in names or []:
            if n not in ex.EXPERIMENTS:
                raise ValueError(f"unknown experiment {n!r}; choose from {', '.join(ex.EXPERIMENTS)} or all")
        index = ex.run_all(
            handle, bundle, data=data, limit=args.limit, out_dir=out, progress=prog, names=names, **options
        )
        _out(args, index, json.dumps(index, indent=1, default=str))
        return 0
    if args.experiment not in ex.EXPERIMENTS:
        raise ValueError(f"unknown experiment {args.experiment!r}; choose from {', '.join(ex.EXPERIMENTS)} or all")
    res = ex.run_experiment(
        args.experiment, handle, bundle, data=data, limit=args.limit, out_dir=out, progress=prog, **options
    )
    payload = res.to_json()
    _out(args, payload, json.dumps(payload, indent=1, default=str))
    return 0


# ------------------------------------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(message: object) -> str:
    """A message on one line: library errors sometimes carry several lines of advice."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m engine", description="steering-explorer: harmfulness vs refusal directions")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, model: bool = True) -> None:
        sp.add_argument("--json", action="store_true", help="print only one JSON document on stdout")
        sp.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
        if model:
            sp.add_argument(
                "--model",
                default=os.environ.get("STEERING_EXPLORER_MODEL", "default"),
                help="default | tiny-random | HF id | folder",
            )
            sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
            sp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
            sp.add_argument("--trust-remote-code", action="store_true")

    sp = sub.add_parser("models", help="the model registry and what is cached")
    common(sp, model=False)
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("datasets", help="the built-in instruction sets")
    common(sp, model=False)
    sp.add_argument("--stats", action="store_true", help="add form statistics (questions, punctuation, length)")
    sp.set_defaults(func=cmd_datasets)

    sp = sub.add_parser("positions", help="t_inst and t_post_inst of an instruction")
    common(sp)
    sp.add_argument("instruction")
    sp.add_argument("--no-post-inst", action="store_true", help="cut the prompt right after the instruction")
    sp.set_defaults(func=cmd_positions)

    sp = sub.add_parser("directions", help="compute (or show the precomputed) harmfulness and refusal directions")
    common(sp)
    sp.add_argument("--harmful", nargs="+", metavar="FILE")
    sp.add_argument("--harmless", nargs="+", metavar="FILE")
    sp.add_argument("--directions", metavar="FILE", help="show a saved directions file")
    sp.add_argument("--limit", type=int, default=128, help="seeded sample of at most N prompts per file")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--unit", action="store_true", help="unit-normalise each layer's direction")
    sp.add_argument("--no-normalize", action="store_true", help="keep trailing punctuation of instructions")
    sp.add_argument("--out", metavar="FILE", help="save as safetensors + JSON sidecar")
    sp.set_defaults(func=cmd_directions)

    sp = sub.add_parser("generate", help="baseline and steered generations side by side")
    common(sp)
    sp.add_argument("instructions", nargs="+")
    sp.add_argument("--directions", metavar="FILE")
    sp.add_argument("--direction", default="harmfulness", help="harmfulness | refusal | category NAME")
    sp.add_argument("--layer", type=int, action="append", help="block(s) to steer at (repeatable); default L/2")
    sp.add_argument("--coeff", type=_float, default=1.0)
    sp.add_argument("--positions", choices=["prompt", "context", "all"], default="prompt")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("guard", help="Latent Guard verdicts")
    common(sp)
    sp.add_argument("instructions", nargs="+")
    sp.add_argument("--directions", metavar="FILE")
    sp.add_argument("--threshold", type=_float, default=0.0)
    sp.set_defaults(func=cmd_guard)

    sp = sub.add_parser("precompute", help="labels, clusters and every direction, with provenance")
    common(sp)
    sp.add_argument("--harmful", nargs="+", metavar="FILE")
    sp.add_argument("--harmless", nargs="+", metavar="FILE")
    sp.add_argument("--limit", type=int, default=None, help="seeded sample of at most N prompts per file")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--labeller", choices=["substring", "logodds"], default="substring")
    sp.add_argument("--label-tokens", type=int, default=48)
    sp.add_argument("--refusal-pool", choices=["default", "all"], default="default")
    sp.add_argument("--unit", action="store_true")
    sp.add_argument("--no-normalize", action="store_true")
    sp.add_argument("--out", metavar="DIR")
    sp.add_argument("--name", help="file stem (default: the model name)")
    sp.set_defaults(func=cmd_precompute)

    from .experiments import EXPERIMENTS
    from .labels import LABELLERS

    sp = sub.add_parser(
        "reproduce",
        help="run one of the paper's experiments (or all)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="experiments and their options (--option KEY=VALUE, JSON values; defaults shown):\n"
        + "\n".join(
            f"  {n}: {info.title} ({info.figure})"
            + (
                "\n    " + " ".join(f"{k}={json.dumps(v)}" for k, v in info.own_options.items())
                if info.own_options
                else ""
            )
            for n, info in EXPERIMENTS.items()
        )
        + "\n  every experiment: labeller (--labeller), seed=0 (the seeded caps)",
    )
    common(sp)
    sp.add_argument("experiment", help=" | ".join([*EXPERIMENTS, "all", "a comma-separated list"]))
    sp.add_argument("--directions", metavar="FILE")
    sp.add_argument("--limit", type=int, default=None, help="cap prompts per set")
    sp.add_argument("--out", metavar="DIR")
    sp.add_argument("--harmful", nargs="+", metavar="FILE")
    sp.add_argument("--harmless", nargs="+", metavar="FILE")
    sp.add_argument("--xstest", nargs="+", metavar="FILE")
    sp.add_argument("--templates", metavar="FILE")
    sp.add_argument("--catqa", nargs="+", metavar="FILE")
    sp.add_argument("--file-limit", type=int, default=200, help="seeded sample per data file")
    sp.add_argument("--labeller", choices=list(LABELLERS), help="refused/accepted labeller")
    sp.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="experiment option (repeatable; JSON values), e.g. coeff=2; see the list below",
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the train/test split of the data files")
    sp.set_defaults(func=cmd_reproduce)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    from .datasets import DatasetError
    from .models import ModelError
    from .storage import StorageError

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


if __name__ == "__main__":
    sys.exit(main())
