"""The pure summarising code of the benchmarks (benchmarks/summary.py), made-up inputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from outgrow.domain.instance_types import InstanceType
from outgrow.providers.local.provider import packaged_catalog


def _load() -> ModuleType:
    path = Path(__file__).parents[2] / "benchmarks" / "summary.py"
    spec = importlib.util.spec_from_file_location("bench_summary", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


S = _load()
GIB = 1024**3


def test_stats_median_min_max_skip_none() -> None:
    assert S.stats([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert S.stats([4, None, 1, 2, 3]) == {"median": 2.5, "min": 1.0, "max": 4.0, "n": 4}
    assert S.stats([]) is None
    assert S.stats([None]) is None
    assert S.med(None) is None and S.med(S.stats([5])) == 5.0


def test_ratio_is_none_when_undefined() -> None:
    assert S.ratio(3.0, 2.0) == 1.5
    assert S.ratio(None, 2.0) is None
    assert S.ratio(1.0, None) is None
    assert S.ratio(1.0, 0.0) is None


def test_downtime_target_and_meets() -> None:
    assert S.downtime_target_s(0) == pytest.approx(0.3)
    assert S.downtime_target_s(2e9) == pytest.approx(1.3)  # 2 GB at 2 GB/s
    assert S.downtime_target_s(4 * GIB) == pytest.approx(0.3 + 4 * GIB / 1e9 / 2)
    assert S.meets(1.3, 1.3) is True
    assert S.meets(1.31, 1.3) is False
    assert S.meets(None, 1.0) is None and S.meets(1.0, None) is None


def test_pick_type_smallest_fitting_the_headroom_rule() -> None:
    cat = packaged_catalog()
    # S × 1.4 + 0.5 GiB: 0.85 → 1, 1.9 → 2 (fewer vCPUs first), 3.3 → 4, 6.1 → 8
    assert [S.pick_type(cat, s).name for s in (0.25, 1, 2, 4)] == [
        "lc.small",
        "lc.medium",
        "lc.large",
        "lc.xlarge",
    ]
    assert S.required_memory_gib(10) == pytest.approx(14.5)
    with pytest.raises(ValueError, match="no instance type"):
        S.pick_type([InstanceType("tiny", 1, 1, 0.1)], 1)


def _mig(transfer: str, down: float, ck: int = 2 * 10**9, **kw: Any) -> dict[str, Any]:
    return {
        "transfer": transfer,
        "freeze_s": 0.01,
        "dump_s": down / 2,
        "transfer_s": 0.1,
        "restore_s": down / 3,
        "downtime_s": down,
        "total_s": down + 1,
        "create_target_s": 0.5,
        "checkpoint_bytes": ck,
        "rss_bytes": 2 * 10**9,
        "intact": True,
        **kw,
    }


def _size(migrations: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {
        "size_gib": 2,
        "type": "lc.large",
        "data_bytes": 2 * GIB,
        "kernel_rss_bytes": 2.1 * GIB,
        "job_mem_used_bytes": 2.2 * GIB,
        "migrations": migrations,
        "raw_criu": [
            {"dump_s": 0.4, "restore_s": 0.6, "intact": True},
            {"dump_s": 0.6, "restore_s": 0.4, "intact": True},
            {"dump_s": 0.5, "restore_s": 1.0, "intact": True},
        ],
        "reload": [{"reload_s": 10.0, "intact": True}, {"reload_s": 12.0, "intact": True}],
        **kw,
    }


def test_summarise_size_one_row_per_mode_with_medians_and_ratios() -> None:
    rows = S.summarise_size(
        _size(
            [
                _mig("page-server", 1.0),
                _mig("copy", 3.0),
                _mig("page-server", 2.0),
                _mig("copy", 5.0),
                _mig("page-server", 1.2),
                _mig("copy", 4.0),
            ]
        )
    )
    assert [r["mode"] for r in rows] == ["page-server", "copy"]
    ps, cp = rows
    assert ps["n"] == 3 and ps["type"] == "lc.large" and ps["data_bytes"] == 2 * GIB
    assert ps["downtime_s"] == {"median": 1.2, "min": 1.0, "max": 2.0, "n": 3}
    assert cp["downtime_s"]["median"] == 4.0
    assert ps["dump_s"]["median"] == pytest.approx(0.6)
    assert ps["create_target_s"]["median"] == 0.5
    # raw criu: medians of dump, restore and of their per-round sums (1.0, 1.0, 1.5)
    assert ps["raw_dump_s"]["median"] == 0.5
    assert ps["raw_restore_s"]["median"] == 0.6
    assert ps["raw_criu_s"]["median"] == 1.0
    assert ps["reload_s"]["median"] == 11.0
    # target 0.3 + 2 GB / 2 = 1.3 s: page-server (1.2) meets it, copy (4.0) does not
    assert ps["target_s"] == pytest.approx(1.3)
    assert ps["meets_target"] is True and cp["meets_target"] is False
    assert ps["downtime_over_raw"] == pytest.approx(1.2)
    assert cp["downtime_over_raw"] == pytest.approx(4.0)
    assert ps["reload_over_downtime"] == pytest.approx(11.0 / 1.2)
    assert ps["checkpoint_rss_ratio"] == pytest.approx(1.0)
    assert ps["checkpoint_rss_ok"] is True
    assert ps["intact"] is True and cp["intact"] is True
    # no storage_s recorded (results from before volumes): none; each shared mode is
    # compared with the other, not with itself
    assert ps["storage_s"] is None
    assert ps["downtime_over_page_server"] is None and cp["downtime_over_copy"] is None
    assert ps["downtime_over_copy"] == pytest.approx(1.2 / 4.0)
    assert cp["downtime_over_page_server"] == pytest.approx(4.0 / 1.2)


def test_summarise_size_volume_mode_rows_and_ratios() -> None:
    # A volume move transfers in copy mode: its row comes from ``mode``, not ``transfer``.
    vol = [
        _mig("copy", d, mode="volume", storage_s=s) for d, s in ((6.0, 0.5), (4.5, 0.3), (5.0, 0.4))
    ]
    rows = S.summarise_size(
        _size([_mig("page-server", 1.5, storage_s=0.0), _mig("copy", 4.0, storage_s=0.0), *vol])
    )
    assert [r["mode"] for r in rows] == ["page-server", "copy", "volume"]
    ps, cp, vr = rows
    assert (ps["n"], cp["n"], vr["n"]) == (1, 1, 3)
    assert vr["downtime_s"] == {"median": 5.0, "min": 4.5, "max": 6.0, "n": 3}
    assert vr["storage_s"]["median"] == pytest.approx(0.4)
    assert vr["downtime_over_page_server"] == pytest.approx(5.0 / 1.5)
    assert vr["downtime_over_copy"] == pytest.approx(5.0 / 4.0)
    assert cp["downtime_over_page_server"] == pytest.approx(4.0 / 1.5)
    # every column of the table renders every row
    cells = {name: cell(vr) for name, _, cell in S.COLUMNS}
    assert (cells["mode"], cells["storage"], cells["downtime"]) == (
        "volume",
        "0.40",
        "5.00 (4.50–6.00)",
    )
    assert (cells["/ps"], cells["/copy"]) == ("3.33×", "1.25×")
    assert [cell(ps) for name, _, cell in S.COLUMNS if name in ("/ps", "/copy")] == ["—", "0.38×"]
    # volume alone (--modes volume): no baseline, no ratio
    (alone,) = S.summarise_size(_size(vol, raw_criu=[], reload=[]))
    assert alone["downtime_over_page_server"] is None and alone["downtime_over_copy"] is None
    assert S.mode_of({"transfer": "copy"}) == "copy"
    assert S.mode_of({"transfer": "copy", "mode": "volume"}) == "volume"


def test_summarise_size_flags_bloat_broken_data_and_missing_parts() -> None:
    rows = S.summarise_size(
        _size(
            [_mig("copy", 2.0, ck=int(2.4e9)), _mig("copy", 2.0, ck=int(2.4e9), intact=False)],
            raw_criu=[],
            reload=[],
        )
    )
    (row,) = rows
    assert row["checkpoint_rss_ratio"] == pytest.approx(1.2)
    assert row["checkpoint_rss_ok"] is False
    assert row["intact"] is False
    assert row["raw_criu_s"] is None and row["downtime_over_raw"] is None
    assert row["reload_s"] is None and row["reload_over_downtime"] is None
    assert S.summarise_size(_size([])) == []


def test_formatting() -> None:
    st = S.stats([1.0, 2.0, 4.0])
    assert S.fmt_s(st) == "2.00"
    assert S.fmt_s(st, spread=True) == "2.00 (1.00–4.00)"
    assert S.fmt_s(S.stats([1.5]), spread=True) == "1.50"
    assert S.fmt_s(None) == "—" and S.fmt_s(0.5) == "0.50"
    assert S.fmt_gib(GIB / 4) == "0.25" and S.fmt_gib(None) == "—"
    assert S.fmt_ratio(1.234) == "1.23×" and S.fmt_ratio(None) == "—"
    assert (S.fmt_bool(True), S.fmt_bool(False), S.fmt_bool(None)) == ("yes", "NO", "—")


def test_postcopy_rows_against_the_limit_with_drain_and_pull_rate() -> None:
    pc = [
        _mig("page-server", 0.9, mode="postcopy", drain_s=4.0, lazy_pages=10**6),
        _mig("page-server", 1.1, mode="postcopy", drain_s=8.0, lazy_pages=10**6),
    ]
    limits = {"first_touch_gb_s": 0.8, "loopback_tcp_gb_s": 1.6}
    rows = S.summarise_size(_size([_mig("page-server", 9.0), *pc]), limits)
    assert [r["mode"] for r in rows] == ["page-server", "postcopy"]
    plain, post = rows
    # the data (2 GiB) once at the slower rate (0.8 GB/s)
    assert plain["limit_s"] == pytest.approx(2 * GIB / 1e9 / 0.8)
    assert plain["downtime_over_limit"] == pytest.approx(9.0 / plain["limit_s"])
    assert post["downtime_over_limit"] == pytest.approx(1.0 / post["limit_s"])
    assert post["drain_s"]["median"] == 6.0
    # 4.096 GB pulled in 4 s and in 8 s: median of 1.024 and 0.512 GB/s
    assert post["pull_gb_s"] == pytest.approx((1.024 + 0.512) / 2)
    assert plain["pull_gb_s"] is None and plain["drain_s"] is None
    assert S.plain_limit_s(GIB, None) is None and S.plain_limit_s(None, limits) is None
