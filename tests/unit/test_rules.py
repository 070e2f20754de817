from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from outgrow.domain.instance_types import GIB, Catalog, InstanceType, parse_catalog, sort_types
from outgrow.domain.policy import parse_migrate_policy, parse_range
from outgrow.domain.rules import (
    Context,
    CpuLowerRule,
    CpuUpperRule,
    Decision,
    EvadeOomRule,
    IdleRule,
    MemLowerRule,
    MemUpperRule,
    PrepareRule,
    ReclaimRule,
    Sample,
    cooldown_left,
    evaluate,
    fmt_duration,
)
from outgrow.errors import ValidationError

LOCAL = parse_catalog(
    (Path(__file__).parents[2] / "src/outgrow/providers/local/catalog.yaml").read_text()
)

# A fine ladder: c{vcpus}m{GiB}, price = vcpus + GiB/2, so step arithmetic is visible.
LADDER = Catalog(
    tuple(
        sort_types(
            InstanceType(f"c{c}m{m}", c, m, c + m / 2, (c + m / 2) / 3)
            for c in (1, 2, 3, 4, 6, 8)
            for m in (1, 2, 3, 4, 5, 6, 8, 12, 16)
        )
    )
)


def ctx(
    current: str = "c2m4",
    policy: str = "[]",
    *,
    catalog: Catalog = LADDER,
    cpu: str = "0.25",
    mem: str = "0.25",
    now: float = 30.0,
    **kw: object,
) -> Context:
    return Context(
        policy=parse_migrate_policy(policy),
        current=catalog.get(current),
        catalog=catalog,
        cpu_range=parse_range(cpu, field="cpu"),
        mem_range=parse_range(mem, field="mem"),
        now=now,
        **kw,  # type: ignore[arg-type]
    )


def sample(
    t: float, current: InstanceType, mem_pct: float, cpu_pct: float = 10, oom: bool = False
) -> Sample:
    return Sample(
        t=t,
        mem_used_bytes=round(current.memory_bytes * mem_pct / 100),
        mem_limit_bytes=current.memory_bytes,
        cpu_used_vcpus=current.vcpus * cpu_pct / 100,
        cpu_quota_vcpus=current.vcpus,
        oom_stalled=oom,
    )


def window(
    c: Context,
    mem_pct: float,
    cpu_pct: float = 10,
    times: Iterable[float] = range(0, 31, 5),
    oom: bool = False,
) -> list[Sample]:
    return [sample(t, c.current, mem_pct, cpu_pct, oom) for t in times]


def series(c: Context, points: Sequence[tuple[float, float, float]]) -> list[Sample]:
    return [sample(t, c.current, m, p) for t, m, p in points]


def target(d: Decision | None) -> str | None:
    assert d is not None
    return d.target.name if d.target else None


# --- Sample -----------------------------------------------------------------------------


def test_sample_ratios_and_validation() -> None:
    s = Sample(0, GIB, 4 * GIB, 1.5, 2)
    assert s.ratio("mem") == 25 and s.ratio("cpu") == 75
    assert s.used("mem") == 1 and s.used("cpu") == 1.5
    with pytest.raises(ValidationError):
        Sample(0, GIB, 0, 1, 2)
    with pytest.raises(ValidationError):
        Sample(0, -1, GIB, 1, 2)


def test_fmt_duration() -> None:
    assert [fmt_duration(x) for x in (30, 300, 3600, 7200, 5400, 0, 2.5)] == [
        "30 s",
        "300 s",
        "1 h",
        "2 h",
        "1 h 30 min",
        "0 s",
        "2.5 s",
    ]


# --- the seed-style reasons on the packaged catalog --------------------------------------


def test_reasons_on_the_local_catalog() -> None:
    c = ctx("lc.c2m2", catalog=LOCAL)
    d = evaluate(c, window(c, 93))
    assert d == Decision(
        "grow",
        LOCAL.get("lc.large"),
        "mem 93% ≥ 90% for 30 s → lc.large (2 vCPU 4 GiB)",
        "mem.upper",
    )

    c = ctx("lc.small", catalog=LOCAL)
    d = evaluate(c, window(c, 99, times=[30], oom=True))
    assert d.reason == "evadeOOM: memory limit reached (1 GiB) → lc.medium (1 vCPU 2 GiB)"
    assert (d.action, d.urgent, d.rule) == ("grow", True, "evadeOOM")

    c = ctx("lc.medium", "[mem.lowerBoundRatio=20]", catalog=LOCAL, now=300)
    d = evaluate(c, window(c, 12, 3, range(0, 301, 10)))
    assert d.reason == "mem 12% ≤ 20% for 300 s → lc.small (1 vCPU 1 GiB)"
    assert (d.action, target(d), d.urgent) == ("shrink", "lc.small", False)

    c = ctx("lc.large", catalog=LOCAL, spot=True, reclaim_notice=True)
    d = evaluate(c, [])
    assert d == Decision(
        "migrate",
        LOCAL.get("lc.large"),
        "spot reclaim notice → lc.large (on-demand)",
        "reclaim",
        True,
    )

    c = ctx("lc.large", catalog=LOCAL, idle_since=0.0, idle_timeout=7200.0, now=7200)
    assert evaluate(c, []) == Decision("suspend", None, "idle for 2 h → suspend", "idle")

    c = ctx("lc.xlarge", "[mem.limit=8]", catalog=LOCAL)
    d = evaluate(c, window(c, 95))
    assert d == Decision(
        "none",
        None,
        "mem 95% ≥ 90% for 30 s: no larger type within limit mem.limit=8 GiB",
        "mem.upper",
    )

    c = ctx("lc.r2xlarge", catalog=LOCAL)
    assert (
        evaluate(c, window(c, 95)).reason == "mem 95% ≥ 90% for 30 s: no larger type in the catalog"
    )


# --- EvadeOomRule -----------------------------------------------------------------------


def test_evade_oom_grows_at_once_by_step() -> None:
    c = ctx("c2m4")
    d = EvadeOomRule().evaluate(c, window(c, 100, times=[30], oom=True))
    assert d == Decision(
        "grow",
        LADDER.get("c2m6"),
        "evadeOOM: memory limit reached (4 GiB) → c2m6 (2 vCPU 6 GiB)",
        "evadeOOM",
        True,
    )


def test_evade_oom_needs_the_flag_and_a_stalled_latest_sample() -> None:
    c = ctx("c2m4", "[evadeOOM=false]")
    assert EvadeOomRule().evaluate(c, window(c, 100, oom=True)) is None
    c = ctx("c2m4")
    stalled_then_fine = window(c, 100, times=[20], oom=True) + window(c, 60, times=[30])
    assert EvadeOomRule().evaluate(c, stalled_then_fine) is None
    assert EvadeOomRule().evaluate(c, []) is None


def test_evade_oom_ignores_samples_of_the_previous_instance() -> None:
    c = ctx("c2m4", last_migration_at=25.0)
    assert EvadeOomRule().evaluate(c, window(c, 100, times=[20], oom=True)) is None


def test_evade_oom_step_and_step_auto() -> None:
    c = ctx("c2m4", "[mem.step=100]")
    assert target(EvadeOomRule().evaluate(c, window(c, 100, times=[30], oom=True))) == "c2m8"
    # stepAuto: limit 4 GiB at 72% (80% of upper 90) → 5.6 GiB → 6
    c = ctx("c2m4", "[mem.step=10,stepAuto=true]")
    assert target(EvadeOomRule().evaluate(c, window(c, 100, times=[30], oom=True))) == "c2m6"


def test_evade_oom_at_the_limit() -> None:
    c = ctx("c2m4", "[mem.limit=4]")
    d = EvadeOomRule().evaluate(c, window(c, 100, times=[30], oom=True))
    assert d == Decision(
        "none",
        None,
        "evadeOOM: memory limit reached (4 GiB): no larger type within limit mem.limit=4 GiB",
        "evadeOOM",
    )
    # a partial last step up to the limit is allowed
    c = ctx("c2m4", "[mem.limit=5]")
    assert target(EvadeOomRule().evaluate(c, window(c, 100, times=[30], oom=True))) == "c2m5"


# --- ReclaimRule ------------------------------------------------------------------------


def test_reclaim() -> None:
    c = ctx("c2m4", spot=True)
    assert ReclaimRule().evaluate(c, []) is None
    c = ctx("c2m4", spot=True, reclaim_notice=True)
    assert ReclaimRule().evaluate(c, []) == Decision(
        "migrate", LADDER.get("c2m4"), "spot reclaim notice → c2m4 (on-demand)", "reclaim", True
    )
    c = ctx("c2m4", spot=True, reclaim_notice=True, spot_only=True)
    assert ReclaimRule().evaluate(c, []).reason == "spot reclaim notice → c2m4 (spot)"  # type: ignore[union-attr]


# --- MemUpperRule / CpuUpperRule ---------------------------------------------------------


def test_upper_held_for_the_duration_fires() -> None:
    c = ctx("c2m4")
    d = MemUpperRule().evaluate(c, window(c, 93))
    assert d == Decision(
        "grow", LADDER.get("c2m6"), "mem 93% ≥ 90% for 30 s → c2m6 (2 vCPU 6 GiB)", "mem.upper"
    )


def test_upper_not_held_long_enough() -> None:
    c = ctx("c2m4")
    assert MemUpperRule().evaluate(c, window(c, 93, times=range(5, 31, 5))) is None


def test_upper_broken_by_one_sample_below() -> None:
    c = ctx("c2m4")
    points = [(t, 80 if t == 15 else 95, 10) for t in range(0, 31, 5)]
    assert MemUpperRule().evaluate(c, series(c, points)) is None
    # the run after the dip is 20..30 s: enough for a 10 s duration
    c = ctx("c2m4", "[mem.upperBoundDuration=10s]")
    assert target(MemUpperRule().evaluate(c, series(c, points))) == "c2m6"


def test_upper_exactly_at_the_bound_counts() -> None:
    c = ctx("c2m4")
    assert target(MemUpperRule().evaluate(c, window(c, 90))) == "c2m6"
    assert MemUpperRule().evaluate(c, window(c, 89.9)) is None


def test_upper_reason_shows_the_latest_usage() -> None:
    c = ctx("c2m4")
    points = [(t, 91 + t / 5, 10) for t in range(0, 31, 5)]
    d = MemUpperRule().evaluate(c, series(c, points))
    assert d is not None and d.reason.startswith("mem 97% ≥ 90% for 30 s")


def test_upper_ignores_old_instance_and_future_samples() -> None:
    c = ctx("c2m4", now=40.0, last_migration_at=10.0)
    assert MemUpperRule().evaluate(c, window(c, 95, times=range(0, 41, 5))) is None
    c = ctx("c2m4", now=20.0)
    assert MemUpperRule().evaluate(c, window(c, 95)) is None


def test_upper_accepts_an_unordered_window() -> None:
    c = ctx("c2m4")
    assert target(MemUpperRule().evaluate(c, list(reversed(window(c, 95))))) == "c2m6"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("[mem.step=25]", "c2m5"),
        ("[mem.step=50]", "c2m6"),
        ("[mem.step=100]", "c2m8"),
        ("[mem.step=200]", "c2m12"),
    ],
)
def test_upper_step_is_a_percent_of_the_current_size(policy: str, expected: str) -> None:
    c = ctx("c2m4", policy)
    assert target(MemUpperRule().evaluate(c, window(c, 95))) == expected


def test_upper_step_auto_sizes_from_usage() -> None:
    # 95% of 4 GiB = 3.8 GiB; at 72% → 5.28 GiB → 6 (step 25 alone would give 5)
    c = ctx("c2m4", "[mem.step=25,stepAuto=true]")
    assert target(MemUpperRule().evaluate(c, window(c, 95))) == "c2m6"
    # 90% → 3.6 GiB / 0.72 = 5 GiB
    c = ctx("c2m4", "[mem.step=100,stepAuto=true]")
    assert target(MemUpperRule().evaluate(c, window(c, 90))) == "c2m5"


def test_upper_is_capped_by_limit_and_range() -> None:
    c = ctx("c2m4", "[mem.step=100,mem.limit=6]")
    assert target(MemUpperRule().evaluate(c, window(c, 95))) == "c2m6"
    c = ctx("c2m4", "[mem.step=100]", mem="2:5")
    assert target(MemUpperRule().evaluate(c, window(c, 95))) == "c2m5"
    c = ctx("c2m4", mem="2:4")
    d = MemUpperRule().evaluate(c, window(c, 95))
    assert d == Decision(
        "none", None, "mem 95% ≥ 90% for 30 s: no larger type within limit -m 2:4", "mem.upper"
    )
    # the tighter of the two names the reason
    c = ctx("c2m4", "[mem.limit=4]", mem="2:8")
    assert MemUpperRule().evaluate(c, window(c, 95)).reason.endswith("within limit mem.limit=4 GiB")  # type: ignore[union-attr]


def test_cpu_upper() -> None:
    c = ctx("c2m4")
    d = CpuUpperRule().evaluate(c, window(c, 50, 95))
    assert d == Decision(
        "grow", LADDER.get("c3m4"), "cpu 95% ≥ 90% for 30 s → c3m4 (3 vCPU 4 GiB)", "cpu.upper"
    )
    assert MemUpperRule().evaluate(c, window(c, 50, 95)) is None
    c = ctx("c2m4", "[cpu.limit=2]")
    assert CpuUpperRule().evaluate(c, window(c, 50, 95)).reason == (  # type: ignore[union-attr]
        "cpu 95% ≥ 90% for 30 s: no larger type within limit cpu.limit=2 vCPU"
    )
    c = ctx("c2m4", "[cpu.limit=4,cpu.step=200]")
    assert target(CpuUpperRule().evaluate(c, window(c, 50, 95))) == "c4m4"
    c = ctx("c2m4", "[cpu.upperBoundRatio=70,cpu.upperBoundDuration=1m]", now=60)
    assert CpuUpperRule().evaluate(c, window(c, 50, 75)) is None
    assert target(CpuUpperRule().evaluate(c, window(c, 50, 75, range(0, 61, 5)))) == "c3m4"


def test_grow_picks_the_cheapest_fit_and_never_the_current_type() -> None:
    cat = Catalog(
        (
            InstanceType("cur", 2, 4, 1.0, 0.5),
            InstanceType("od", 2, 8, 2.0, 1.5),
            InstanceType("sp", 2, 8, 3.0, 0.6),
        )
    )
    c = ctx("cur", catalog=cat)
    assert target(MemUpperRule().evaluate(c, window(c, 95))) == "od"
    c = ctx("cur", catalog=cat, spot=True)
    assert target(MemUpperRule().evaluate(c, window(c, 95))) == "sp"


# --- MemLowerRule / CpuLowerRule ---------------------------------------------------------

LOW = range(0, 301, 10)


def test_lower_shrinks_by_step() -> None:
    c = ctx("c2m8", now=300)
    d = MemLowerRule().evaluate(c, window(c, 3, 50, LOW))
    assert d == Decision(
        "shrink", LADDER.get("c2m4"), "mem 3% ≤ 5% for 300 s → c2m4 (2 vCPU 4 GiB)", "mem.lower"
    )
    c = ctx("c2m8", "[mem.step=25]", now=300)
    assert target(MemLowerRule().evaluate(c, window(c, 3, 50, LOW))) == "c2m6"


def test_lower_duration_held_and_broken() -> None:
    c = ctx("c2m8", now=300)
    assert MemLowerRule().evaluate(c, window(c, 3, 50, range(10, 301, 10))) is None
    points = [(t, 30 if t == 150 else 3, 50) for t in LOW]
    assert MemLowerRule().evaluate(c, series(c, points)) is None


def test_lower_never_below_usage_plus_a_quarter() -> None:
    # step 75 → 2 GiB, but 30% of 8 = 2.4 GiB × 1.25 = 3 GiB
    c = ctx("c2m8", "[mem.lowerBoundRatio=40,mem.step=75]", now=300)
    assert target(MemLowerRule().evaluate(c, window(c, 30, 50, LOW))) == "c2m3"
    # the peak of the run counts, not the latest sample
    points = [(t, 35 if t == 100 else 20, 50) for t in LOW]
    assert target(MemLowerRule().evaluate(c, series(c, points))) == "c2m4"


def test_lower_is_floored_by_lower_limit_and_range() -> None:
    c = ctx("c2m8", "[mem.lowerLimit=6]", now=300)
    assert target(MemLowerRule().evaluate(c, window(c, 3, 50, LOW))) == "c2m6"
    c = ctx("c2m8", mem="8", now=300)
    d = MemLowerRule().evaluate(c, window(c, 3, 50, LOW))
    assert d == Decision(
        "none", None, "mem 3% ≤ 5% for 300 s: no smaller type within limit -m 8", "mem.lower"
    )
    c = ctx("c2m8", "[mem.lowerLimit=8]", mem="2", now=300)
    assert (
        MemLowerRule()
        .evaluate(c, window(c, 3, 50, LOW))
        .reason.endswith(  # type: ignore[union-attr]
            "no smaller type within limit mem.lowerLimit=8 GiB"
        )
    )


def test_lower_step_with_no_type_in_reach() -> None:
    c = ctx("lc.xlarge", "[mem.step=20]", catalog=LOCAL, now=300)
    d = MemLowerRule().evaluate(c, window(c, 3, 50, LOW))
    assert d is not None
    assert d.reason == "mem 3% ≤ 5% for 300 s: no smaller type within mem.step=20%"


def test_lower_step_auto() -> None:
    # peak 10% of 8 = 0.8 GiB at 72% → 1.11 GiB → 2 GiB (step 50 alone would give 4)
    c = ctx("c2m8", "[mem.lowerBoundRatio=10,stepAuto=true]", now=300)
    assert target(MemLowerRule().evaluate(c, window(c, 10, 50, LOW))) == "c2m2"


def test_shrink_must_be_cheaper() -> None:
    cat = Catalog((InstanceType("odd", 1, 2, 5.0), InstanceType("big", 1, 4, 1.0)))
    c = ctx("big", catalog=cat, now=300)
    d = MemLowerRule().evaluate(c, window(c, 3, 50, LOW))
    assert d is not None and d.reason == "mem 3% ≤ 5% for 300 s: no cheaper smaller type"


def test_cpu_lower() -> None:
    c = ctx("c4m4", now=300)
    d = CpuLowerRule().evaluate(c, window(c, 50, 2, LOW))
    assert d == Decision(
        "shrink", LADDER.get("c2m4"), "cpu 2% ≤ 5% for 300 s → c2m4 (2 vCPU 4 GiB)", "cpu.lower"
    )
    c = ctx("c4m4", "[cpu.lowerLimit=3]", now=300)
    assert target(CpuLowerRule().evaluate(c, window(c, 50, 2, LOW))) == "c3m4"
    c = ctx("c4m4", cpu="4:8", now=300)
    assert CpuLowerRule().evaluate(c, window(c, 50, 2, LOW)).reason.endswith("within limit -c 4:8")  # type: ignore[union-attr]


# --- IdleRule ---------------------------------------------------------------------------


def test_idle() -> None:
    assert IdleRule().evaluate(ctx(now=7200, idle_since=0.0), []) is None
    assert IdleRule().evaluate(ctx(now=7200, idle_timeout=7200.0), []) is None
    assert IdleRule().evaluate(ctx(now=7199, idle_since=0.0, idle_timeout=7200.0), []) is None
    d = IdleRule().evaluate(ctx(now=9000, idle_since=100.0, idle_timeout=5400.0), [])
    assert d == Decision("suspend", None, "idle for 1 h 30 min → suspend", "idle")
    d = IdleRule().evaluate(ctx(now=600, idle_since=0.0, idle_timeout=600.0), [])
    assert d is not None and d.reason == "idle for 600 s → suspend"


# --- PrepareRule ------------------------------------------------------------------------


def test_prepare_at_the_prepare_level() -> None:
    c = ctx("c2m4")
    d = PrepareRule().evaluate(c, window(c, 85, times=[15, 30]))
    assert d == Decision(
        "prepare", LADDER.get("c2m6"), "mem 85% ≥ 80% → prepare c2m6 (2 vCPU 6 GiB)", "prepare"
    )
    # Held for half the upper duration (15 of 30 s), not a one-sample spike.
    assert PrepareRule().evaluate(c, window(c, 85, times=[30])) is None
    assert PrepareRule().evaluate(c, window(c, 85, times=[20, 30])) is None
    assert PrepareRule().evaluate(c, window(c, 79, times=[15, 30])) is None
    c = ctx("c2m4", "[mem.prepareRatio=70]")
    assert target(PrepareRule().evaluate(c, window(c, 75, times=[15, 30]))) == "c2m6"
    c = ctx("c2m4", "[cpu.upperBoundRatio=60]")  # cpu prepare level 50
    d = PrepareRule().evaluate(c, window(c, 10, 55, times=[15, 30]))
    assert d is not None and d.reason == "cpu 55% ≥ 50% → prepare c3m4 (3 vCPU 4 GiB)"


def test_prepare_step_auto_sizes_for_usage_at_the_upper_bound() -> None:
    # 4 GiB × 90% = 3.6 GiB at 72% → 5 GiB
    c = ctx("c2m4", "[stepAuto=true]")
    assert target(PrepareRule().evaluate(c, window(c, 82, times=[15, 30]))) == "c2m5"


def test_prepare_nothing_when_no_larger_type() -> None:
    c = ctx("c2m4", "[mem.limit=4]")
    assert PrepareRule().evaluate(c, window(c, 85, times=[30])) is None
    assert PrepareRule().evaluate(c, []) is None


# --- evaluate: priorities, combination, disable, cooldown -------------------------------


def test_status_when_nothing_fires() -> None:
    c = ctx("c2m4")
    assert evaluate(c, window(c, 50, 12)) == Decision(
        "none", None, "mem 50%, cpu 12%: within bounds", "none"
    )
    assert evaluate(c, []) == Decision("none", None, "no samples yet", "none")
    c = ctx("c2m4", now=100, last_migration_at=90.0)
    assert evaluate(c, window(c, 50)).reason == "no samples since the last migration"


def test_both_upper_triggers_make_one_migration() -> None:
    c = ctx("c2m4")
    d = evaluate(c, window(c, 95, 95))
    assert d == Decision(
        "grow",
        LADDER.get("c3m6"),
        "mem 95% ≥ 90% for 30 s, cpu 95% ≥ 90% for 30 s → c3m6 (3 vCPU 6 GiB)",
        "mem.upper+cpu.upper",
    )


def test_combined_falls_back_to_the_resource_that_can_grow() -> None:
    c = ctx("c2m4", "[cpu.limit=2]")
    d = evaluate(c, window(c, 95, 95))
    assert (target(d), d.rule) == ("c2m6", "mem.upper")
    assert d.reason == "mem 95% ≥ 90% for 30 s → c2m6 (2 vCPU 6 GiB)"


def test_both_lower_triggers_make_one_migration() -> None:
    c = ctx("c4m8", now=300)
    d = evaluate(c, window(c, 3, 2, LOW))
    assert (d.action, target(d), d.rule) == ("shrink", "c2m4", "mem.lower+cpu.lower")


def test_priority_order() -> None:
    c = ctx("c2m4", spot=True, reclaim_notice=True)
    stalled = window(c, 95, times=range(0, 26, 5)) + window(c, 100, times=[30], oom=True)
    assert evaluate(c, stalled).rule == "evadeOOM"
    assert evaluate(c, window(c, 95)).rule == "reclaim"
    c = ctx("c2m4", now=300, idle_since=0.0, idle_timeout=60.0)
    # mem high, cpu low: grow wins over shrink; shrink wins over idle; idle over prepare
    assert evaluate(c, window(c, 95, 2, LOW)).rule == "mem.upper"
    assert evaluate(c, window(c, 3, 50, LOW)).rule == "mem.lower"
    assert evaluate(c, window(c, 85, 50, LOW)).rule == "idle"
    c = ctx("c2m4", now=300)
    assert evaluate(c, window(c, 85, 50, LOW)).rule == "prepare"


def test_disable_keeps_evade_oom_reclaim_and_idle() -> None:
    c = ctx("c2m4", "[disable=true]")
    assert evaluate(c, window(c, 95)) == Decision(
        "none", None, "auto-migration disabled (mem 95%, cpu 10%)", "disabled"
    )
    assert evaluate(c, window(c, 85)).rule == "disabled"  # no prepare either
    assert evaluate(c, window(c, 100, times=[30], oom=True)).rule == "evadeOOM"
    c = ctx("c2m4", "[disable=true]", reclaim_notice=True)
    assert evaluate(c, window(c, 95)).rule == "reclaim"
    c = ctx("c2m4", "[disable=true]", idle_since=0.0, idle_timeout=30.0)
    assert evaluate(c, window(c, 95)).action == "suspend"
    c = ctx("c2m8", "[disable=true]", now=300)
    assert evaluate(c, window(c, 3, 2, LOW)).rule == "disabled"


def test_cooldown_holds_back_grow_and_shrink() -> None:
    c = ctx("c2m4", now=100, last_migration_at=40.0)
    assert cooldown_left(c) == 60
    d = evaluate(c, window(c, 95, times=range(60, 101, 10)))
    assert d == Decision(
        "none",
        None,
        "cooldown: mem 95% ≥ 90% for 30 s → c2m6 (2 vCPU 6 GiB) held back, 60 s left of 120 s",
        "cooldown",
    )
    c = ctx("c2m8", "[mem.lowerBoundDuration=30s]", now=100, last_migration_at=40.0)
    d = evaluate(c, window(c, 3, 50, range(60, 101, 10)))
    assert d.rule == "cooldown" and d.reason.startswith("cooldown: mem 3% ≤ 5% for 30 s → c2m4")


def test_cooldown_ends() -> None:
    c = ctx("c2m4", now=160, last_migration_at=40.0)
    assert cooldown_left(c) == 0
    assert evaluate(c, window(c, 95, times=range(100, 161, 10))).action == "grow"
    c = ctx("c2m4", "[cooldown=0]", now=100, last_migration_at=40.0)
    assert evaluate(c, window(c, 95, times=range(60, 101, 10))).action == "grow"
    assert cooldown_left(ctx("c2m4")) == 0


def test_cooldown_does_not_hold_urgent_or_suspend() -> None:
    c = ctx("c2m4", now=100, last_migration_at=90.0)
    d = evaluate(c, window(c, 100, times=[95], oom=True))
    assert (d.action, d.urgent) == ("grow", True)
    c = ctx("c2m4", now=100, last_migration_at=90.0, reclaim_notice=True)
    assert evaluate(c, []).action == "migrate"
    c = ctx("c2m4", now=100, last_migration_at=40.0, idle_since=0.0, idle_timeout=60.0)
    assert evaluate(c, window(c, 95, times=range(60, 101, 10))).action == "suspend"


def test_cooldown_allows_prepare_below_the_upper_bound_only() -> None:
    c = ctx("c2m4", now=100, last_migration_at=80.0)
    assert evaluate(c, window(c, 85, times=[85, 100])).action == "prepare"
    c = ctx("c2m4", now=100, last_migration_at=40.0)
    assert evaluate(c, window(c, 95, times=range(60, 101, 10))).rule == "cooldown"


def test_a_rule_with_no_target_does_not_hide_later_actions() -> None:
    c = ctx("c2m4", "[mem.limit=4]", now=300, idle_since=0.0, idle_timeout=60.0)
    assert evaluate(c, window(c, 95, 50, LOW)).action == "suspend"
    c = ctx("c2m4", "[mem.limit=4]", now=300)
    d = evaluate(c, window(c, 95, 50, LOW))
    assert d.reason == "mem 95% ≥ 90% for 30 s: no larger type within limit mem.limit=4 GiB"
