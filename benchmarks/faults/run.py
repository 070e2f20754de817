"""The reliability fault matrix (`make faults`): every row of ``rows.ROWS`` against a real
control plane (``outgrow up`` in a child process), real agents, CRIU and jobs; prints a
table and writes it as JSON.

    sudo .venv/bin/python benchmarks/faults/run.py [--only KEY,KEY] [--out PATH]

Needs root (namespaces, cgroups, CRIU). Every packet stays on this host: the run is under
the test session's egress guard (tests/netguard.py). Each row has its own resource prefix
and data dir, and must leave nothing of them behind. Exit status 1 if any row failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

from harness import World, elapsed  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from rows import ROWS, Row  # noqa: E402

from netguard import EgressGuard  # noqa: E402


def run_row(r: Row, root: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"key": r.key, "fault": r.fault, "phase": r.phase, "test": r.test}
    if r.known_bug:
        res["known_bug"] = r.known_bug
    if r.fn is None:
        return {**res, "outcome": f"not run: {r.pending}", "work_lost": "", "leftovers": []}
    t0 = time.monotonic()
    w = World(root, r.key, tmpfs_mib=r.tmpfs_mib, tmpfs_at=r.tmpfs_at, **r.env)
    error = ""
    try:
        w.start()
        out = r.fn(w)
        res.update(outcome=out.outcome, work_lost=out.work_lost, notes=out.notes)
    except Exception as exc:  # the row's verdict: what did not happen
        error = f"{type(exc).__name__}: {exc}"
        res.update(outcome="FAILED", work_lost="?", notes=[traceback.format_exc()[-3000:]])
        res["server_log"] = w.srv.log()[-4000:]
    finally:
        res["leftovers"] = w.close()
    res["error"] = error
    res["passed"] = not error and not res["leftovers"]
    res["seconds"] = elapsed(t0)
    return res


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem = next(ln for ln in meminfo if ln.startswith("MemTotal"))
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_gib": round(int(mem.split()[1]) / 1024**2, 1),
    }


def table(results: list[dict[str, Any]]) -> Table:
    t = Table(title="outgrow fault matrix")
    for col in ("fault", "phase", "outcome", "work lost", "leftovers", "result", "test"):
        t.add_column(col, overflow="fold")
    for r in results:
        verdict = "—" if "passed" not in r else ("pass" if r["passed"] else "FAIL")
        t.add_row(
            r["fault"],
            r["phase"],
            r["outcome"] + (f" ({r['error'][:200]})" if r.get("error") else ""),
            r["work_lost"],
            ", ".join(r["leftovers"]) or "none",
            verdict,
            r["test"] or "only here",
        )
    return t


def markdown(doc: dict[str, Any]) -> str:
    """The table of a run's JSON as Markdown (docs/reliability.md); the test column from
    the registry as it is now."""
    tests = {r.key: r.test for r in ROWS}
    head = "| fault | phase | outcome (job state after) | work lost | leftovers | result | test |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        verdict = "—" if "passed" not in r else ("pass" if r["passed"] else "**FAIL**")
        outcome = r["outcome"] + (f": {r['error'][:160]}" if r.get("error") else "")
        if r.get("known_bug") and not r.get("passed"):
            outcome += f" — known bug: {r['known_bug']}"
        cells = [
            r["fault"],
            r["phase"],
            outcome,
            r["work_lost"] or "—",
            ", ".join(r["leftovers"]) or "none",
            verdict,
            f"`{tests.get(r['key'], r['test'])}`"
            if tests.get(r["key"], r["test"])
            else "only here",
        ]
        lines.append(
            "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |"
        )
    return "\n".join(lines)


def write(out: Path, started: dt.datetime, results: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"started": started.isoformat(timespec="seconds"), "machine": machine(), "rows": results}
    out.write_text(json.dumps(doc, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated row keys")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "faults.json")
    ap.add_argument("--list", action="store_true", help="list the rows and exit")
    ap.add_argument("--markdown", type=Path, help="print the table of this JSON as Markdown")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    rows = ROWS
    if args.list:
        for r in rows:
            print(f"{r.key:24} {r.fault} — {r.phase}")
        return 0
    if args.only:
        keys = set(args.only.split(","))
        unknown = keys - {r.key for r in rows}
        if unknown:
            ap.error(f"unknown rows: {', '.join(sorted(unknown))}")
        rows = [r for r in rows if r.key in keys]
    if os.geteuid() != 0:
        print("the fault matrix needs root (namespaces, cgroups, CRIU)", file=sys.stderr)
        return 2
    guard = EgressGuard()
    guard.start()
    console = Console()
    results = []
    started = dt.datetime.now(dt.UTC)
    try:
        with tempfile.TemporaryDirectory(prefix="outgrow-faults-") as tmp:
            for r in rows:
                console.print(f"[bold]{r.key}[/]: {r.fault} — {r.phase}")
                res = run_row(r, Path(tmp))
                problem = guard.check()
                if problem:
                    res["passed"] = False
                    res["leftovers"].append(f"egress guard: {problem}")
                console.print(f"  → {'pass' if res.get('passed') else res['outcome']}")
                if res.get("error"):
                    console.print(f"    {res['error'][:500]}")
                results.append(res)
                write(args.out, started, results)  # as it goes: a long run can be read early
    finally:
        guard.stop()
    console.print(table(results))
    write(args.out, started, results)
    console.print(f"written {args.out}")
    return 0 if all(r.get("passed", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
