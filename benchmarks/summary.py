"""Pure summarising code of the benchmarks: medians, ratios, the design targets (docs/design.md).

No I/O and no outgrow runtime here, so tests/unit/test_bench_summary.py can check it with
made-up inputs. The migration benchmark stores raw figures per data size (see
``summarise_size`` for the shape) and turns them into one row per size and mode.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

GIB = 1024**3
GB = 1e9

# docs/design.md, targets: downtime ≤ 0.3 s + state / 2 GB/s; checkpoint ≤ 1.1 × resident memory.
TARGET_BASE_S = 0.3
TARGET_GB_PER_S = 2.0
CHECKPOINT_RSS_MAX = 1.1

# Headroom rule of the brief: an instance for S GiB of data has ≥ S × 1.4 + 0.5 GiB.
HEADROOM_FACTOR = 1.4
HEADROOM_GIB = 0.5

TIMINGS = ("freeze_s", "dump_s", "transfer_s", "restore_s", "downtime_s", "total_s", "drain_s")

# The modes of the migration benchmark: the two transfer modes with the job directory shared
# between instances, and "volume": the directory on a volume that moves with the job (the
# move itself goes in copy mode, see orchestrator/migrate.py).
# "postcopy": the memory follows the restored job (lazy pages), directory shared.
MODES = ("page-server", "copy", "postcopy", "volume")
# What a move that carries the data before the restore cannot beat: every byte once into
# fresh memory and once over the loopback (measured in the same run: migration.limits()).
LIMIT_KEYS = ("first_touch_gb_s", "loopback_tcp_gb_s")
# Every row's downtime is compared with these modes' (same size, same run).
BASELINES = ("page-server", "copy")


class TypeLike(Protocol):
    name: str
    memory_gib: float
    vcpus: float
    price_per_hour: float


Stats = dict[str, float]


def stats(values: Iterable[float | int | None]) -> Stats | None:
    """Median, min, max and count of the values that are not None (None when none are)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def med(s: Stats | None) -> float | None:
    return None if s is None else s["median"]


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def required_memory_gib(size_gib: float) -> float:
    return size_gib * HEADROOM_FACTOR + HEADROOM_GIB


def pick_type(types: Iterable[TypeLike], size_gib: float) -> TypeLike:
    """The smallest type (memory, then vCPUs, then price) with memory ≥ S × 1.4 + 0.5 GiB."""
    need = required_memory_gib(size_gib)
    fit = [t for t in types if t.memory_gib >= need - 1e-9]
    if not fit:
        raise ValueError(f"no instance type has {need:g} GiB for {size_gib:g} GiB of data")
    return min(fit, key=lambda t: (t.memory_gib, t.vcpus, t.price_per_hour, t.name))


def downtime_target_s(state_bytes: float) -> float:
    """docs/design.md, targets: 0.3 s + state / (2 GB/s), state in decimal GB."""
    return TARGET_BASE_S + state_bytes / GB / TARGET_GB_PER_S


def meets(value: float | None, limit: float | None) -> bool | None:
    if value is None or limit is None:
        return None
    return value <= limit


def mode_of(migration: Mapping[str, Any]) -> str:
    """The benchmark mode of a migration: ``mode`` when recorded (a volume move transfers
    in copy mode), else its transfer mode."""
    return str(migration.get("mode") or migration["transfer"])


def split_modes(migrations: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Migrations grouped by mode, modes in first-seen order."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for m in migrations:
        out.setdefault(mode_of(m), []).append(m)
    return out


def plain_limit_s(data_bytes: float | None, limits: Mapping[str, float] | None) -> float | None:
    """The shortest downtime a move that carries ``data_bytes`` before the restore can
    have here: the data once at the slower of the first-touch and loopback TCP rates."""
    rates = [limits.get(k) for k in LIMIT_KEYS] if limits else []
    slowest = min((r for r in rates if r), default=None)
    if not data_bytes or slowest is None:
        return None
    return data_bytes / GB / slowest


def summarise_size(
    size: Mapping[str, Any], limits: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """One row per mode for one data size.

    ``size`` holds: size_gib, type, data_bytes, kernel_rss_bytes, job_mem_used_bytes,
    migrations (dicts with transfer, optionally mode (see ``mode_of``), the TIMINGS,
    storage_s (volume moves), checkpoint_bytes, rss_bytes, intact),
    raw_criu (dicts with freeze_s, dump_s, restore_s, intact) and reload (dicts with
    reload_s, intact). Failed attempts are simply absent; ``intact`` False marks a run
    whose data did not survive (it is counted, and the row says so).
    """
    raw = list(size.get("raw_criu") or [])
    reload_ = list(size.get("reload") or [])
    raw_dump = stats(r.get("dump_s") for r in raw)
    raw_restore = stats(r.get("restore_s") for r in raw)
    raw_total = stats(
        r["dump_s"] + r["restore_s"]
        for r in raw
        if r.get("dump_s") is not None and r.get("restore_s") is not None
    )
    reload_s = stats(r.get("reload_s") for r in reload_)
    rows = []
    for mode, runs in split_modes(size.get("migrations") or []).items():
        row: dict[str, Any] = {
            "size_gib": size["size_gib"],
            "type": size.get("type"),
            "mode": mode,
            "n": len(runs),
            "data_bytes": size.get("data_bytes"),
            "kernel_rss_bytes": size.get("kernel_rss_bytes"),
            "job_mem_used_bytes": size.get("job_mem_used_bytes"),
        }
        for key in (*TIMINGS, "storage_s", "create_target_s"):
            row[key] = stats(r.get(key) for r in runs)
        ck = stats(r.get("checkpoint_bytes") for r in runs)
        rss = stats(r.get("rss_bytes") for r in runs)
        row["checkpoint_bytes"] = med(ck)
        row["rss_bytes"] = med(rss)
        row["checkpoint_rss_ratio"] = ratio(med(ck), med(rss))
        row["checkpoint_rss_ok"] = meets(row["checkpoint_rss_ratio"], CHECKPOINT_RSS_MAX)
        row["raw_dump_s"] = raw_dump
        row["raw_restore_s"] = raw_restore
        row["raw_criu_s"] = raw_total
        row["reload_s"] = reload_s
        # The state that has to move is what CRIU writes: the checkpoint.
        target = downtime_target_s(med(ck)) if ck else None
        row["target_s"] = target
        row["meets_target"] = meets(med(row["downtime_s"]), target)
        row["downtime_over_raw"] = ratio(med(row["downtime_s"]), med(raw_total))
        row["reload_over_downtime"] = ratio(med(reload_s), med(row["downtime_s"]))
        row["limit_s"] = plain_limit_s(size.get("data_bytes"), limits)
        row["downtime_over_limit"] = ratio(med(row["downtime_s"]), row["limit_s"])
        pulled = stats(
            r["lazy_pages"] * 4096 / r["drain_s"] / GB
            for r in runs
            if r.get("lazy_pages") and r.get("drain_s")
        )
        row["pull_gb_s"] = med(pulled)
        if not any(r.get("drain_s") for r in runs):  # a plain move has no drain
            row["drain_s"] = None
        row["intact"] = all(bool(r.get("intact")) for r in runs) and all(
            bool(r.get("intact")) for r in (*raw, *reload_)
        )
        rows.append(row)
    # Downtime of each mode against the baselines' (None for a row against itself).
    downtime = {r["mode"]: med(r["downtime_s"]) for r in rows}
    for row in rows:
        for base in BASELINES:
            key = f"downtime_over_{base.replace('-', '_')}"
            mine = med(row["downtime_s"]) if row["mode"] != base else None
            row[key] = ratio(mine, downtime.get(base))
    return rows


# ---- formatting (used by the tables) ------------------------------------------------
def fmt_s(s: Stats | float | None, spread: bool = False) -> str:
    """Seconds: ``1.23`` or, with spread and more than one value, ``1.23 (1.10–1.40)``."""
    if s is None:
        return "—"
    if isinstance(s, float | int):
        return f"{s:.2f}"
    text = f"{s['median']:.2f}"
    if spread and s.get("n", 1) > 1:
        text += f" ({s['min']:.2f}–{s['max']:.2f})"
    return text


def fmt_gib(b: float | None) -> str:
    return "—" if b is None else f"{b / GIB:.2f}"


def fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}×"


def fmt_bool(v: bool | None) -> str:
    return "—" if v is None else ("yes" if v else "NO")


# The table: header, justification, the cell of a summary row (summarise_size).
COLUMNS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("GiB", "right", lambda r: f"{r['size_gib']:g}"),
    ("type", "left", lambda r: str(r["type"])),
    ("mode", "left", lambda r: str(r["mode"])),
    ("n", "right", lambda r: str(r["n"])),
    ("data GiB", "right", lambda r: fmt_gib(r["data_bytes"])),
    ("kern RSS", "right", lambda r: fmt_gib(r["kernel_rss_bytes"])),
    ("cgroup", "right", lambda r: fmt_gib(r["job_mem_used_bytes"])),
    ("freeze", "right", lambda r: fmt_s(r["freeze_s"])),
    ("dump", "right", lambda r: fmt_s(r["dump_s"])),
    ("xfer", "right", lambda r: fmt_s(r["transfer_s"])),
    ("storage", "right", lambda r: fmt_s(r["storage_s"])),
    ("restore", "right", lambda r: fmt_s(r["restore_s"])),
    ("downtime", "right", lambda r: fmt_s(r["downtime_s"], spread=True)),
    ("limit", "right", lambda r: fmt_s(r.get("limit_s"))),
    ("down/limit", "right", lambda r: fmt_ratio(r.get("downtime_over_limit"))),
    ("drain", "right", lambda r: fmt_s(r.get("drain_s"))),
    (
        "pull GB/s",
        "right",
        lambda r: "—" if r.get("pull_gb_s") is None else f"{r['pull_gb_s']:.2f}",
    ),
    ("total", "right", lambda r: fmt_s(r["total_s"])),
    ("ckpt GiB", "right", lambda r: fmt_gib(r["checkpoint_bytes"])),
    ("ckpt/RSS", "right", lambda r: fmt_ratio(r["checkpoint_rss_ratio"])),
    ("raw dump", "right", lambda r: fmt_s(r["raw_dump_s"])),
    ("raw rest", "right", lambda r: fmt_s(r["raw_restore_s"])),
    ("reload", "right", lambda r: fmt_s(r["reload_s"])),
    ("target", "right", lambda r: fmt_s(r["target_s"])),
    ("meets", "center", lambda r: fmt_bool(r["meets_target"])),
    ("/ps", "right", lambda r: fmt_ratio(r["downtime_over_page_server"])),
    ("/copy", "right", lambda r: fmt_ratio(r["downtime_over_copy"])),
    ("down/raw", "right", lambda r: fmt_ratio(r["downtime_over_raw"])),
    ("reload/down", "right", lambda r: fmt_ratio(r["reload_over_downtime"])),
    ("intact", "center", lambda r: fmt_bool(r["intact"])),
]
