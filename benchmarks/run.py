"""Run every benchmark (`make bench`): one table each, one JSON file with everything.

    .venv/bin/python benchmarks/run.py [--sizes 0.25,1,2,4] [--repeat 3] [--quick]
        [--modes page-server,copy,postcopy,volume] [--only migration,proxy] [--out PATH]
        (plain = page-server)

The JSON (default ``benchmarks/results/<UTC timestamp>.json``, git-ignored) holds the raw
figures of every run, the summarised rows and the machine facts (kernel, CPUs, memory,
CRIU version), so results from different machines or commits can be compared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import migration
import proxy
from rich.console import Console

HERE = Path(__file__).resolve().parent
BENCHMARKS = [migration, proxy]
DEFAULT_SIZES = "0.25,1,2,4"
QUICK_SIZES = "0.25,1"


def parse_sizes(text: str) -> list[float]:
    try:
        sizes = [float(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--sizes: {exc}") from exc
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError("--sizes needs positive GiB values, e.g. 0.25,1,2")
    return sizes


def parse_modes(text: str) -> tuple[str, ...]:
    """Migration modes, in the benchmark's order whatever the order given."""
    # "plain" is the page-server mode (the memory before the restore).
    modes = {"page-server" if m.strip() == "plain" else m.strip() for m in text.split(",")}
    modes.discard("")
    if not modes or modes - set(migration.MODES):
        raise argparse.ArgumentTypeError(
            f"--modes needs one or more of {','.join(migration.MODES)}, got {text!r}"
        )
    return tuple(m for m in migration.MODES if m in modes)


def parse_only(text: str) -> tuple[str, ...]:
    known = [b.NAME for b in BENCHMARKS]
    names = {n.strip() for n in text.split(",") if n.strip()}
    if not names or names - set(known):
        raise argparse.ArgumentTypeError(f"--only needs one or more of {','.join(known)}")
    return tuple(n for n in known if n in names)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sizes", type=parse_sizes, default=None, help=f"GiB (default {DEFAULT_SIZES})"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per migration mode, raw-CRIU round and reload (default 3)",
    )
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, repeat 1")
    ap.add_argument(
        "--modes",
        type=parse_modes,
        default=migration.MODES,
        help=f"migration modes (default all: {','.join(migration.MODES)}); page-server and\n"
        "copy move a job whose directory is shared (with them: the raw CRIU and reload\n"
        "rounds), volume one whose directory is on a loop volume that moves with it",
    )
    ap.add_argument(
        "--only",
        type=parse_only,
        default=tuple(b.NAME for b in BENCHMARKS),
        help=f"benchmarks to run (default all: {','.join(b.NAME for b in BENCHMARKS)})",
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    if args.sizes is None:
        args.sizes = parse_sizes(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        ap.error("--repeat must be ≥ 1")
    return args


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def memory_touch_gib_s(gib: float = 1.0) -> dict[str, Any]:
    """How fast this machine hands out memory: the first touch of fresh pages, then a
    re-touch of pages just freed. On VMs with free page reporting (virtio-balloon) the
    first can be an order of magnitude slower, and every CRIU restore or page-cache write
    that needs fresh memory pays it."""
    try:
        import numpy as np
    except ImportError:
        return {}
    rates = []
    for _ in range(2):
        t = time.perf_counter()
        a = np.ones(int(gib * 1024**3) // 8)
        rates.append(gib / (time.perf_counter() - t))
        del a
    return {"first_touch_gib_s": round(rates[0], 2), "retouch_gib_s": round(rates[1], 2)}


def machine_facts(criu: Path) -> dict[str, Any]:
    meminfo = {
        ln.split(":")[0]: int(ln.split()[1]) * 1024
        for ln in _read("/proc/meminfo").splitlines()
        if ln.split(":")[0] in ("MemTotal", "MemAvailable", "SwapTotal")
    }
    cpu_model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in _read("/proc/cpuinfo").splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    try:
        criu_version = subprocess.run(
            [str(criu), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        criu_version = f"unavailable: {exc}"
    try:
        from outgrow import __version__ as outgrow_version
    except ImportError:
        outgrow_version = "unknown"
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "os": _read("/etc/debian_version").strip() or platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_bytes": meminfo.get("MemTotal"),
        "mem_available_bytes_at_start": meminfo.get("MemAvailable"),
        "swap_total_bytes": meminfo.get("SwapTotal"),
        "loadavg_at_start": os.getloadavg(),
        "criu": str(criu),
        "criu_version": criu_version,
        "python": platform.python_version(),
        "outgrow_version": outgrow_version,
        "page_reporting_order": _read(
            "/sys/module/page_reporting/parameters/page_reporting_order"
        ).strip()
        or None,
        "damon_kdamond_state": _read("/sys/kernel/mm/damon/admin/kdamonds/0/state").strip() or None,
        "memory_touch_1gib": memory_touch_gib_s(),
        "cgroup_v2_only": Path("/sys/fs/cgroup/cgroup.controllers").exists()
        and not Path("/sys/fs/cgroup/memory").exists(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 270))
    started = dt.datetime.now(dt.UTC)
    out = args.out or HERE / "results" / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    report: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "options": {
            "sizes_gib": args.sizes,
            "repeat": args.repeat,
            "quick": args.quick,
            "modes": list(args.modes),
            "only": list(args.only),
        },
        "machine": machine_facts(migration.CRIU),
        "benchmarks": {},
    }
    t0 = time.monotonic()
    ok = True
    for bench in (b for b in BENCHMARKS if b.NAME in args.only):
        console.rule(f"benchmark: {bench.NAME}")
        try:
            opts = {"modes": args.modes} if bench is migration else {}
            result = bench.run(args.sizes, args.repeat, console.log, **opts)
        except KeyboardInterrupt:
            console.print("[red]interrupted; everything created was deleted")
            return 130
        report["benchmarks"][bench.NAME] = result
        console.print(bench.table(result))
        for p in bench.problems(result):
            console.print(f"[red]problem:[/] {p}")
        ok = ok and bool(result.get("ok"))
    report["runtime_s"] = round(time.monotonic() - t0, 1)
    report["ok"] = ok
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    console.print(f"runtime {report['runtime_s']:.0f} s; results written to {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
