"""The ``export-control-vector`` and ``import-control-vector`` commands: directions as llama.cpp control vectors.

Layers on this command line are this project's rows (row l = the input of block l, as ``generate --layer``); the
output prints llama.cpp's ``direction.k`` next to each (k = l - 1: llama.cpp adds direction.k to the output of block
k; ``engine.controlvector`` holds the mapping and says why). llama.cpp adds the vector at every token, so the same
steering here is ``generate --positions all`` at the same rows and coefficient.

- ``export-control-vector --direction NAME --coeff C [--reverse] [--layer L ... | --layer-range A B] --out F.gguf``:
  one GGUF file ``llama-cli --control-vector F.gguf`` reads; default row L/2 (as ``generate``; at least 2).
- ``import-control-vector FILE [--model M [--out D.safetensors] [--name NAME]]``: a control vector made by repeng,
  llama.cpp's ``cvector-generator`` or this project, shown per layer; with ``--model`` checked against that model and
  with ``--out`` saved as a directions file (``generate --directions D.safetensors --direction NAME``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from .common import Progress, add_common, directions_for, emit, load, number

__all__ = ["register"]


def _direction_name(bundle: Any, name: str) -> str:
    if ":" in name or name in bundle.directions:
        return name
    return f"category:{name}"


def _rows(args: argparse.Namespace, n_layers: int) -> list[int]:
    from ..controlvector import exportable_rows, llamacpp_layer

    if args.layer and args.layer_range:
        raise ValueError("give --layer or --layer-range, not both")
    if args.layer_range:
        a, b = args.layer_range
        if a > b:
            raise ValueError(f"--layer-range {a} {b}: the first row must not be above the second")
        rows = list(range(a, b + 1))
    elif args.layer:
        rows = sorted(set(args.layer))
    else:  # the middle block, as `generate`; at least row 2, the first with a llama.cpp slot
        rows = [max(n_layers // 2, exportable_rows(n_layers)[0])]
    ok = exportable_rows(n_layers)
    for r in rows:
        if r not in ok:
            llamacpp_layer(r, n_layers)  # raises with the reason and the valid rows
    return rows


def _same_here(options: str, rows: list[int], n_layers: int) -> str:
    """The ``generate`` command that steers like llama.cpp does with these rows (every token). Row L (the last
    block's output, llama.cpp's direction.(L-1)) has no steering slot here: it is left out, and said so."""
    steerable = [r for r in rows if r < n_layers]
    if not steerable:
        return f"(no equivalent here: row {n_layers} is the last block's output; steering here adds at rows 0..{n_layers - 1})"
    cmd = (
        f"python -m engine generate {options} --positions all {' '.join(f'--layer {r}' for r in steerable)} " + '"..."'
    )
    if len(steerable) < len(rows):
        cmd += f"  (row {n_layers}, the last block's output, has no steering slot here and is left out)"
    return cmd


def cmd_export(args: argparse.Namespace) -> int:
    from .._version import __version__
    from ..controlvector import llamacpp_command, llamacpp_layer, model_hint_for, write_control_vector

    out = Path(args.out)
    if out.suffix.lower() != ".gguf":
        raise ValueError(f"--out {args.out}: give a file name ending in .gguf (llama.cpp reads GGUF control vectors)")
    prog = Progress(args.quiet)
    handle = load(args)
    bundle = directions_for(args, handle, prog)
    name = _direction_name(bundle, args.direction)
    d = bundle.get(name)
    rows = _rows(args, handle.n_layers)
    coeff = -args.coeff if args.reverse else args.coeff
    hint = model_hint_for(handle)
    path = write_control_vector(
        out,
        d,
        rows=rows,
        coeff=coeff,
        model_hint=hint,
        n_layers=handle.n_layers,
        extra={"direction": name, "coeff": float(coeff), "model_id": handle.model_id, "engine_version": __version__},
    )
    norms = d.norms()
    layers = [
        {"row": r, "llamacpp_layer": llamacpp_layer(r, handle.n_layers), "norm": round(float(abs(coeff) * norms[r]), 5)}
        for r in rows
    ]
    llama = llamacpp_command(str(path), rows, handle.n_layers)
    here = _same_here(f"--model {args.model} --direction {name} --coeff {coeff:g}", rows, handle.n_layers)
    payload = {
        "path": str(path),
        "direction": name,
        "coeff": coeff,
        "model_hint": hint,
        "model_id": handle.model_id,
        "n_layers": handle.n_layers,
        "hidden_size": handle.hidden_size,
        "layers": layers,
        "llama_cpp": llama,
        "same_steering_here": here,
    }
    human = "\n".join(
        [
            f"wrote {path}: {name} x {coeff:g}, model_hint {hint}, {len(rows)} layer(s)",
            *(
                f"  row {x['row']} (input of block {x['row']}) -> llama.cpp direction.{x['llamacpp_layer']} "
                f"(output of block {x['llamacpp_layer']}), norm {x['norm']:.4g}"
                for x in layers
            ),
            f"use it in llama.cpp:  {llama}",
            f"the same steering here (every token):  {here}",
        ]
    )
    emit(args, payload, human)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..controlvector import model_hint_for, read_control_vector
    from ..directions import DirectionBundle
    from ..storage import make_provenance, save_bundle

    src = Path(args.file)
    if args.out and not args.model:
        raise ValueError("--out needs --model: a directions file is made for (and checked against) one model")
    if args.out and Path(args.out).suffix != ".safetensors":
        raise ValueError(f"--out {args.out}: give a file name ending in .safetensors")
    name = args.name or src.stem
    if not name or "/" in name:
        raise ValueError(f"--name {name!r}: give a direction name without '/'")
    handle = load(args) if args.model else None
    d = read_control_vector(
        src,
        n_layers=handle.n_layers if handle is not None else None,
        hidden_size=handle.hidden_size if handle is not None else None,
        name=name,
    )
    header = d.meta["header"]
    hint = d.meta.get("model_hint")
    warnings = []
    if handle is not None and hint and hint != model_hint_for(handle):
        warnings.append(f"the file's model_hint is {hint!r} but {handle.model_id} is {model_hint_for(handle)!r}")
    norms = d.norms()
    rows = d.meta["rows"]
    payload: dict[str, Any] = {
        "file": str(src),
        "name": name,
        "header": header,
        "n_layers": d.n_rows - 1,
        "hidden_size": d.hidden_size,
        "layers": [
            {"llamacpp_layer": k, "row": r, "norm": round(float(norms[r]), 5)}
            for k, r in zip(d.meta["llamacpp_layers"], rows, strict=True)
        ],
        "warnings": warnings,
    }
    if args.out and handle is not None:  # --out without --model was refused above
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        d.meta.update({"imported_from": src.name, "sha256": sha})
        d.meta["source"] = src.name
        prov = make_provenance(
            handle,
            imported_control_vector={"file": src.name, "sha256": sha, "header": header, "rows": rows},
            positions={name: "all tokens (a llama.cpp control vector)"},
        )
        saved = save_bundle(DirectionBundle(directions={name: d}, provenance=prov), args.out)
        payload["saved"] = str(saved)
        payload["use_it_here"] = _same_here(
            f"--model {args.model} --directions {saved} --direction {name} --coeff 1", rows, handle.n_layers
        )
    for w in warnings:
        sys.stderr.write(f"warning: {w}\n")
    lines = [
        f"{src}: {header.get('architecture', '?')} for {hint or 'an unnamed model'}; "
        f"{len(rows)} layer(s), width {d.hidden_size}, model of {d.n_rows - 1} blocks"
        + ("" if handle is not None else " (from the file; give --model to check it against a model)"),
        *(
            f"  llama.cpp direction.{x['llamacpp_layer']} -> row {x['row']}, norm {x['norm']:.4g}"
            for x in payload["layers"]
        ),
    ]
    if args.out:
        lines += [f"saved {payload['saved']}", f"use it here:  {payload['use_it_here']}"]
    emit(args, payload, "\n".join(lines))
    return 0


def _add_model_optional(sp: argparse.ArgumentParser) -> None:
    """--model without a default ($STEERING_EXPLORER_MODEL is not used): showing a file needs no model."""
    sp.add_argument("--model", default=None, help="check the file against this model (and make --out for it)")
    sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    sp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    sp.add_argument("--trust-remote-code", action="store_true")


def register(sub: Any) -> None:
    sp = sub.add_parser(
        "export-control-vector",
        help="write a direction as a llama.cpp control vector (GGUF)",
        description="Write a direction as a GGUF control vector for llama.cpp (--control-vector FILE). Layers are "
        "this project's rows (row l = input of block l); the file holds llama.cpp's direction.(l-1).",
    )
    add_common(sp)
    sp.add_argument("--directions", metavar="FILE", help="a directions file (default: the model's own)")
    sp.add_argument("--direction", default="harmfulness", help="harmfulness | refusal | category NAME | any name")
    sp.add_argument("--coeff", type=number, default=1.0, help="scale baked into the vectors (default 1)")
    sp.add_argument("--reverse", action="store_true", help="subtract the direction (coefficient times -1)")
    sp.add_argument("--layer", type=int, action="append", help="row(s) to export (repeatable); default L/2")
    sp.add_argument("--layer-range", type=int, nargs=2, metavar=("A", "B"), help="rows A..B inclusive")
    sp.add_argument("--out", required=True, metavar="FILE.gguf")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser(
        "import-control-vector",
        help="read a llama.cpp control vector (repeng, cvector-generator) as a direction",
        description="Show a GGUF control vector per layer (llama.cpp direction.k lands on row k+1); with --model "
        "check it against a model and with --out save it as a directions file for generate --directions.",
    )
    add_common(sp, model=False)
    _add_model_optional(sp)
    sp.add_argument("file", metavar="FILE.gguf")
    sp.add_argument("--name", help="the direction's name (default: the file's stem)")
    sp.add_argument("--out", metavar="FILE.safetensors", help="save as a directions file (needs --model)")
    sp.set_defaults(func=cmd_import)
