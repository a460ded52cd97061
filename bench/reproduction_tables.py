"""Markdown tables for REPRODUCTION.md: the paper next to each model's committed results.

Reads ``docs/reproduction/<model>/<data>/<experiment>.json`` (written by ``python -m engine reproduce all --model
<model> --out docs/reproduction/<model>/<data>``) and prints, per experiment, one table with a column for the paper
(Qwen2-7B-Instruct where the paper reports it, values read off its tables and figures, see
../shared/paper-notes.md) and one per model; every model figure is computed from the result rows here, nothing is
typed in. Reply inversion also gets its per-layer table per model.

    python bench/reproduction_tables.py --models qwen-1.5b default --data builtin > /tmp/tables.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
Rows = list[dict[str, Any]]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _f(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:+.{nd}f}"


def _ranges(xs: list[int]) -> str:
    out: list[str] = []
    for x in sorted(xs):
        if out and out[-1].split("-")[-1] == str(x - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{x}"
        else:
            out.append(str(x))
    return ",".join(out) if out else "none"


def refusal_template(rows: Rows) -> dict[str, str]:
    by = {r["template"]: r for r in rows}
    return {
        "refusal, full template": _pct(by["full"]["refusal_rate"]),
        "refusal, without post-instruction tokens": _pct(by["no_post_inst"]["refusal_rate"]),
        "harmful test prompts": str(by["full"]["n"]),
    }


def belief_curves(rows: Rows) -> dict[str, str]:
    out = {}
    for pos in ("t_inst", "t_post_inst"):
        by = {(r["group"], r["layer"]): r["mean"] for r in rows if r["position"] == pos}
        layers = sorted({r["layer"] for r in rows if r["position"] == pos})
        harm = [
            la
            for la in layers
            if (a := by.get(("accepted_harmful", la))) is not None
            and (b := by.get(("refused_harmless", la))) is not None
            and a > 0 > b
        ]
        beh = [
            la
            for la in layers
            if (a := by.get(("accepted_harmful", la))) is not None
            and (b := by.get(("refused_harmless", la))) is not None
            and a < 0 < b
        ]
        out[f"{pos}: layers grouped by harmfulness"] = f"{len(harm)}/{len(layers)} ({_ranges(harm)})"
        out[f"{pos}: layers grouped by behaviour"] = f"{len(beh)}/{len(layers)} ({_ranges(beh)})"
    return out


def belief_scatter(rows: Rows) -> dict[str, str]:
    out = {}
    for c in ("refused_harmful", "accepted_harmful", "refused_harmless", "accepted_harmless"):
        sel = [r for r in rows if r["cluster"] == c]
        if sel:
            dh = sum(r["delta_harmful"] for r in sel) / len(sel)
            dr = sum(r["delta_refuse"] for r in sel) / len(sel)
            out[f"{c} (mean Δharmful, Δrefuse)"] = f"({_f(dh)}, {_f(dr)}), n={len(sel)}"
    return out


def _peak(rows: Rows, direction: str, key: str) -> tuple[float | None, list[int]]:
    sel = [r for r in rows if r["direction"] == direction and r[key] is not None]
    if not sel:
        return None, []
    top = max(r[key] for r in sel)
    return top, [r["layer"] for r in sel if r[key] == top]


def steer_refusal(rows: Rows) -> dict[str, str]:
    base = next(r for r in rows if r["direction"] == "none")
    out = {"baseline refusal rate (harmless test)": _pct(base["refusal_rate"])}
    for d in ("harmfulness", "refusal"):
        top, at = _peak(rows, d, "refusal_rate")
        out[f"+{d}: peak refusal rate (layers)"] = f"{_pct(top)} ({_ranges(at)})"
    return out


def _inv(rows: Rows, prompts: str, direction: str) -> list[dict[str, Any]]:
    return sorted(
        (r for r in rows if r["prompts"] == prompts and r["direction"] == direction), key=lambda r: r["layer"]
    )


def reply_inversion(rows: Rows) -> dict[str, str]:
    out = {}
    for prompts, dirs in (("harmless", ("harmfulness", "refusal")), ("harmful", ("-harmfulness", "-refusal"))):
        base = next(r for r in rows if r["prompts"] == prompts and r["direction"] == "none")
        out[f"{prompts}: baseline 'No' rate"] = f"{_pct(base['no_rate'])} (invalid {base['invalid']}/{base['n']})"
        for d in dirs:
            sel = [r for r in _inv(rows, prompts, d) if r["no_rate"] is not None]
            if not sel:
                continue
            lo = min(r["no_rate"] for r in sel)
            hi = max(r["no_rate"] for r in sel)
            lo_at = [r["layer"] for r in sel if r["no_rate"] == lo]
            hi_at = [r["layer"] for r in sel if r["no_rate"] == hi]
            inval = sum(r["invalid"] for r in _inv(rows, prompts, d))
            out[f"{prompts} {d}: 'No' rate min (layers) / max (layers)"] = (
                f"{_pct(lo)} ({_ranges(lo_at)}) / {_pct(hi)} ({_ranges(hi_at)}); invalid {inval}"
            )
    return out


def reply_inversion_layers(rows: Rows) -> list[str]:
    cols = [("harmless", "harmfulness"), ("harmless", "refusal"), ("harmful", "-harmfulness"), ("harmful", "-refusal")]
    table = {c: {r["layer"]: r for r in _inv(rows, *c)} for c in cols}
    layers = sorted({la for t in table.values() for la in t})
    head = "| layer | " + " | ".join(f"{p} {d}: 'No' (invalid)" for p, d in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    base = {p: next(r for r in rows if r["prompts"] == p and r["direction"] == "none") for p in ("harmless", "harmful")}
    lines.append(
        "| baseline | " + " | ".join(f"{_pct(base[p]['no_rate'])} ({base[p]['invalid']})" for p, _ in cols) + " |"
    )
    for la in layers:
        cells = []
        for c in cols:
            r = table[c].get(la)
            cells.append("-" if r is None else f"{_pct(r['no_rate'])} ({r['invalid']})")
        lines.append(f"| {la} | " + " | ".join(cells) + " |")
    return lines


def latent_guard(rows: Rows) -> dict[str, str]:
    out = {}
    for r in rows:
        if r["guard"] == "latent":
            out[f"Latent Guard accuracy: {r['set']}"] = f"{_pct(r['accuracy'])} (n={r['n']})"
    return out


def jailbreaks(rows: Rows) -> dict[str, str]:
    out = {}
    for kind in ("jailbreak", "refused_harmful"):
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        dh = [r["delta_harmful"] for r in sel]
        dr = [r["delta_refuse"] for r in sel]
        out[f"{kind}: n, mean Δharmful, mean Δrefuse"] = f"{len(sel)}, {_f(sum(dh) / len(dh))}, {_f(sum(dr) / len(dr))}"
        out[f"{kind}: share Δharmful >= 0 / Δrefuse < 0"] = (
            f"{_pct(sum(x >= 0 for x in dh) / len(dh))} / {_pct(sum(x < 0 for x in dr) / len(dr))}"
        )
    return out


def category_directions(rows: Rows) -> dict[str, str]:
    layers = sorted({r["layer"] for r in rows})
    n = len(layers)
    bands = {"early": layers[: n // 3], "middle": layers[n // 3 : 2 * n // 3], "late": layers[2 * n // 3 :]}
    out = {}
    for name, band in bands.items():
        pair = [r["cosine"] for r in rows if r["layer"] in band and r["a"] != "general" and r["b"] != "general"]
        gen = [r["cosine"] for r in rows if r["layer"] in band and "general" in (r["a"], r["b"])]
        if pair:
            out[f"{name} layers ({band[0]}-{band[-1]}): mean pairwise cosine, categories"] = (
                f"{sum(pair) / len(pair):.2f}"
            )
        if gen:
            out[f"{name} layers: mean cosine with the general direction"] = f"{sum(gen) / len(gen):.2f}"
    return out


def generic(rows: Rows) -> dict[str, str]:
    """Experiments without a summariser here: their rows as key -> value (first columns)."""
    out = {}
    for r in rows[:30]:
        keys = list(r)
        out[" / ".join(str(r[k]) for k in keys[:-2])] = " / ".join(str(r[k]) for k in keys[-2:])
    return out


SUMMARY: dict[str, Callable[[Rows], dict[str, str]]] = {
    "refusal-template": refusal_template,
    "belief-curves": belief_curves,
    "belief-scatter": belief_scatter,
    "steer-refusal": steer_refusal,
    "reply-inversion": reply_inversion,
    "latent-guard": latent_guard,
    "jailbreaks": jailbreaks,
    "category-directions": category_directions,
}

PAPER: dict[str, dict[str, str]] = {  # Qwen2-7B-Instruct unless said; from the paper's tables and figures
    "refusal-template": {
        "refusal, full template": "98.0% (AdvBench)",
        "refusal, without post-instruction tokens": "81.3%",
    },
    "belief-curves": {
        "t_inst: layers grouped by harmfulness": "most layers (Fig. 2)",
        "t_post_inst: layers grouped by behaviour": "from the early layers on (Qwen, Llama3)",
    },
    "steer-refusal": {
        "baseline refusal rate (harmless test)": "~5%",
        "+harmfulness: peak refusal rate (layers)": "~37% (13)",
        "+refusal: peak refusal rate (layers)": "81% (16)",
    },
    "reply-inversion": {
        "harmless: baseline 'No' rate": "~95%",
        "harmless harmfulness: 'No' rate min (layers) / max (layers)": "~0-10% (9-13)",
        "harmless refusal: 'No' rate min (layers) / max (layers)": "72-98% at every layer",
        "harmful: baseline 'No' rate": "~0-2%",
        "harmful -harmfulness: 'No' rate min (layers) / max (layers)": "max 52% (12)",
        "harmful -refusal: 'No' rate min (layers) / max (layers)": "~0-2%",
    },
    "latent-guard": {
        "Latent Guard accuracy: refused_harmless": "91.6% (XSTest)",
        "Latent Guard accuracy: accepted_harmful": "54.6% (Sorry-Bench)",
        "Latent Guard accuracy: template_jailbreaks": "53.5% (templates)",
    },
    "jailbreaks": {
        "jailbreak: n, mean Δharmful, mean Δrefuse": "template Δharmful ~+0.06..+0.14, Δrefuse ~-0.05..-0.2",
    },
    "category-directions": {
        "middle layers: mean pairwise cosine, categories": "0.58-0.69 (all layers)",
    },
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["qwen-1.5b", "default"])
    ap.add_argument("--data", default="builtin")
    ap.add_argument("--root", default=str(ROOT / "docs" / "reproduction"))
    args = ap.parse_args(argv)
    results: dict[str, dict[str, Rows]] = {}
    for m in args.models:
        folder = Path(args.root) / m / args.data
        results[m] = {}
        for p in sorted(folder.glob("*.json")):
            d = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(d, dict) and "rows" in d and "experiment" in d:
                results[m][p.stem] = d["rows"]
    found = {n for m in args.models for n in results[m]}
    order = [*SUMMARY, *sorted(found - set(SUMMARY))]  # the paper's order, then variants and new experiments
    names = [n for n in order if n in found]
    out: list[str] = []
    for name in names:
        base = max((k for k in SUMMARY if name == k or name.startswith(k + "-")), key=len, default=None)
        fn = SUMMARY[base] if base else generic
        per = {m: fn(results[m][name]) for m in args.models if name in results[m]}
        keys = list(dict.fromkeys(k for v in per.values() for k in v))
        paper = PAPER.get(name, {})  # variants (e.g. "-logodds") get no paper column
        out += [
            f"#### {name}",
            "",
            "| | paper | " + " | ".join(args.models) + " |",
            "|---|---|" + "---|" * len(args.models),
        ]
        for k in keys:
            out.append(
                f"| {k} | {paper.get(k, '')} | " + " | ".join(per.get(m, {}).get(k, "-") for m in args.models) + " |"
            )
        out.append("")
        if base == "reply-inversion":
            for m in args.models:
                if name in results[m]:
                    out += [f"Per layer, {m} ('No' rate, invalid answers in brackets):", ""]
                    out += [*reply_inversion_layers(results[m][name]), ""]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
