"""The battery tables of RELIABILITY.md, generated from the test tables (tests/test_battery_cli.py CASES and
SUBPROCESS_CASES, tests/test_battery_app.py CASES) so the counts never drift from the tests.

Usage: ``python bench/reliability_table.py`` prints Markdown (cases per command / page and outcome counts)."""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _cli_outcome(rc: int) -> str:
    return {0: "accepted (rc 0, JSON)", 1: "error rc 1", 2: "error rc 2"}[rc]


def cli_table() -> str:
    from test_battery_cli import CASES, SUBPROCESS_CASES

    from engine.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    by: dict[str, Counter] = defaultdict(Counter)
    for c in CASES + SUBPROCESS_CASES:
        by[c.command if c.command in sub.choices else "(no / unknown command)"][_cli_outcome(c.rc)] += 1
        if c in SUBPROCESS_CASES:
            by[c.command]["of which subprocess"] += 1
    cols = ["error rc 2", "error rc 1", "accepted (rc 0, JSON)", "of which subprocess"]
    lines = ["| command | cases | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for cmd in sorted(by):
        n = sum(v for k, v in by[cmd].items() if k != "of which subprocess")
        lines.append(f"| `{cmd}` | {n} | " + " | ".join(str(by[cmd][k]) for k in cols) + " |")
    total = Counter()
    for c in by.values():
        total.update(c)
    n = sum(v for k, v in total.items() if k != "of which subprocess")
    lines.append(f"| **all** | **{n}** | " + " | ".join(f"**{total[k]}**" for k in cols) + " |")
    items = Counter(c.issue for c in CASES + SUBPROCESS_CASES if c.issue)
    lines.append("")
    lines.append("Cases per item of issue 15: " + ", ".join(f"#{k}: {items[k]}" for k in sorted(items, key=int)))
    return "\n".join(lines)


def app_table() -> str:
    from test_battery_app import CASES

    by: dict[str, Counter] = defaultdict(Counter)
    for c in CASES:
        by[Path(c.page).stem][c.expect] += 1
    cols = ["error", "warning", "ok"]
    lines = ["| page | cases | " + " | ".join(f"shows {k}" for k in cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for page in sorted(by):
        lines.append(f"| {page} | {sum(by[page].values())} | " + " | ".join(str(by[page][k]) for k in cols) + " |")
    total = Counter()
    for c in by.values():
        total.update(c)
    lines.append(f"| **all** | **{sum(total.values())}** | " + " | ".join(f"**{total[k]}**" for k in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("### Command line\n")
    print(cli_table())
    print("\n### App\n")
    print(app_table())
