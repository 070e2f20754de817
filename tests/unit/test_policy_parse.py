from collections.abc import Callable

import pytest

from outgrow.domain.policy import (
    MIGRATE_KEYS,
    MigratePolicy,
    ResourcePolicy,
    ResourceRange,
    VmPolicy,
    format_migrate_policy,
    format_vm_policy,
    parse_duration,
    parse_migrate_policy,
    parse_range,
    parse_vm_policy,
)
from outgrow.errors import ValidationError

SEED_MIGRATE = (
    "[cpu.upperBoundRatio=90,cpu.lowerBoundRatio=5,cpu.upperBoundDuration=30s,"
    "cpu.lowerBoundDuration=300s,cpu.step=50,mem.upperBoundRatio=90,mem.lowerBoundRatio=5,"
    "mem.upperBoundDuration=30s,mem.lowerBoundDuration=300s,mem.step=50,stepAuto=false,"
    "evadeOOM=true]"
)


def err(fn: Callable[..., object], *args: object) -> ValidationError:
    with pytest.raises(ValidationError) as exc:
        fn(*args)
    return exc.value


# --- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("90", 90),
        ("1.5", 1.5),
        ("1h30m", 5400),
        ("1h30m15s", 5415),
        (" 10S ", 10),
        ("0", 0),
        ("0.5m", 30),
        (45, 45),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "abc", "5x", "30m1h", "5m5m", "1h 30m", "-5", "-5s", "1e3"]
)
def test_parse_duration_errors(text: str) -> None:
    e = err(parse_duration, text, "mem.upperBoundDuration")
    assert e.field == "mem.upperBoundDuration"
    assert str(e).startswith("mem.upperBoundDuration: ")


def test_parse_duration_rejects_negative_numbers_and_bools() -> None:
    assert str(err(parse_duration, -1.0, "cooldown")) == "cooldown: duration must be ≥ 0, got -1.0"
    assert err(parse_duration, True, "cooldown").field == "cooldown"
    assert str(err(parse_duration, "5x", "t")) == (
        "t: invalid duration '5x' (use e.g. 30s, 5m, 2h, 1h30m or seconds)"
    )


# --- ranges -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", ResourceRange(2, None)),
        ("2:8", ResourceRange(2, 8)),
        (" 2 : 8 ", ResourceRange(2, 8)),
        ("0.5:4", ResourceRange(0.5, 4)),
        ("4:4", ResourceRange(4, 4)),
        (4, ResourceRange(4, None)),
    ],
)
def test_parse_range(text: str | int, expected: ResourceRange) -> None:
    assert parse_range(text, field="cpu") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8:2", "cpu: max 2 is below min 8"),
        ("0", "cpu: min must be > 0, got 0"),
        ("-1", "cpu: min must be > 0, got -1"),
        ("abc", "cpu: invalid range 'abc' (use N or MIN:MAX, e.g. 2 or 2:8)"),
        ("2:", "cpu: invalid range '2:': max missing after ':' (use N or MIN:MAX, e.g. 2 or 2:8)"),
        (":8", "cpu: invalid range ':8': min missing before ':' (use N or MIN:MAX, e.g. 2 or 2:8)"),
        ("1:2:3", "cpu: invalid range '1:2:3' (use N or MIN:MAX, e.g. 2 or 2:8)"),
        ("", "cpu: invalid range '' (use N or MIN:MAX, e.g. 2 or 2:8)"),
    ],
)
def test_parse_range_errors(text: str, message: str) -> None:
    e = err(parse_range, text, "cpu")
    assert str(e) == message
    assert e.field == "cpu"


def test_range_helpers() -> None:
    r = parse_range("4:64", field="mem")
    assert r.describe() == "4:64"
    assert parse_range("2", field="cpu").describe() == "2"
    assert r.contains(4) and r.contains(64) and not r.contains(65) and not r.contains(3)
    assert ResourceRange(2).contains(1000)
    with pytest.raises(ValidationError):
        ResourceRange(8, 2)


# --- migratePolicy ----------------------------------------------------------------------


def test_defaults_follow_the_seed_form() -> None:
    p = parse_migrate_policy("[]")
    assert p == MigratePolicy()
    assert p.mem == ResourcePolicy(90, 5, 30, 300, 50, None, None, None)
    assert p.cpu == p.mem
    assert (p.step_auto, p.evade_oom, p.disable, p.cooldown) == (False, True, False, 120)
    assert p.mem.prepare_level == 80
    # the seed's generated command line is all defaults
    assert parse_migrate_policy(SEED_MIGRATE) == MigratePolicy()
    assert format_migrate_policy(parse_migrate_policy(SEED_MIGRATE)) == "[]"


def test_parse_every_key() -> None:
    text = (
        "[cpu.upperBoundRatio=80,cpu.lowerBoundRatio=10,cpu.upperBoundDuration=1m,"
        "cpu.lowerBoundDuration=1h,cpu.step=100,cpu.limit=8,cpu.lowerLimit=1,cpu.prepareRatio=70,"
        "mem.upperBoundRatio=95,mem.lowerBoundRatio=20,mem.upperBoundDuration=10,"
        "mem.lowerBoundDuration=600s,mem.step=25,mem.limit=64,mem.lowerLimit=0.5,"
        "mem.prepareRatio=85,stepAuto=true,evadeOOM=false,disable=true,cooldown=5m]"
    )
    p = parse_migrate_policy(text)
    assert p.cpu == ResourcePolicy(80, 10, 60, 3600, 100, 8, 1, 70)
    assert p.mem == ResourcePolicy(95, 20, 10, 600, 25, 64, 0.5, 85)
    assert (p.step_auto, p.evade_oom, p.disable, p.cooldown) == (True, False, True, 300)
    assert parse_migrate_policy(format_migrate_policy(p)) == p


def test_whitespace_units_and_bool_spellings() -> None:
    p = parse_migrate_policy(
        "  [ mem.upperBoundRatio = 85% ,mem.limit=512MiB, evadeOOM = False , stepAuto=yes, ] "
    )
    assert p.mem.upper_bound_ratio == 85
    assert p.mem.limit == 0.5
    assert p.evade_oom is False and p.step_auto is True
    assert parse_migrate_policy("[mem.limit=2GiB]").mem.limit == 2
    assert parse_migrate_policy("[mem.limit=1Ti]").mem.limit == 1024


def test_format_is_canonical_and_round_trips() -> None:
    p = parse_migrate_policy("[evadeOOM=false, mem.step=25, cooldown=1h30m, cpu.limit=4]")
    assert format_migrate_policy(p) == "[cpu.limit=4,mem.step=25,evadeOOM=false,cooldown=5400s]"
    p2 = parse_migrate_policy("[mem.upperBoundDuration=1m,mem.prepareRatio=72.5]")
    assert format_migrate_policy(p2) == "[mem.upperBoundDuration=60s,mem.prepareRatio=72.5]"
    for q in (p, p2, MigratePolicy()):
        assert parse_migrate_policy(format_migrate_policy(q)) == q
    assert format_migrate_policy(MigratePolicy()) == "[]"


def test_prepare_level_derivation() -> None:
    assert parse_migrate_policy("[mem.upperBoundRatio=60]").mem.prepare_level == 50
    # upper − 10 would not be above lower: halfway instead
    p = parse_migrate_policy("[mem.upperBoundRatio=20,mem.lowerBoundRatio=12]")
    assert p.mem.prepare_level == 16
    assert parse_migrate_policy("[cpu.prepareRatio=90]").cpu.prepare_level == 90


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (
            "mem.step=50",
            "migratePolicy",
            "migratePolicy: expected [key=value,...] in square brackets, got 'mem.step=50'",
        ),
        (
            "[mem.step=50",
            "migratePolicy",
            "migratePolicy: expected [key=value,...] in square brackets, got '[mem.step=50'",
        ),
        (
            "[mem.step]",
            "migratePolicy.mem.step",
            "migratePolicy: 'mem.step' has no '=' (expected key=value)",
        ),
        ("[=5]", "migratePolicy", "migratePolicy: '=5' has no key before '='"),
        ("[mem.step=]", "migratePolicy.mem.step", "migratePolicy: mem.step has no value"),
        (
            "[mem.upperBoundRatoi=90]",
            "migratePolicy.mem.upperBoundRatoi",
            "migratePolicy: unknown key 'mem.upperBoundRatoi' "
            "(did you mean 'mem.upperBoundRatio'?)",
        ),
        (
            "[evadeoom=true]",
            "migratePolicy.evadeoom",
            "migratePolicy: unknown key 'evadeoom' (did you mean 'evadeOOM'?)",
        ),
        (
            "[memory.limit=8]",
            "migratePolicy.memory.limit",
            "migratePolicy: unknown key 'memory.limit' (did you mean 'mem.limit'?)",
        ),
        ("[zzz=1]", "migratePolicy.zzz", "migratePolicy: unknown key 'zzz'"),
        (
            "[mem.step=abc]",
            "migratePolicy.mem.step",
            "migratePolicy.mem.step: expected a number, got 'abc'",
        ),
        (
            "[cpu.limit=8GiB]",
            "migratePolicy.cpu.limit",
            "migratePolicy.cpu.limit: expected a number, got '8GiB'",
        ),
        (
            "[mem.limit=8XB]",
            "migratePolicy.mem.limit",
            "migratePolicy.mem.limit: expected a memory size in GiB (e.g. 8, 8GiB, 512MiB), "
            "got '8XB'",
        ),
        (
            "[evadeOOM=maybe]",
            "migratePolicy.evadeOOM",
            "migratePolicy.evadeOOM: expected true or false, got 'maybe'",
        ),
        (
            "[cpu.lowerBoundDuration=5x]",
            "migratePolicy.cpu.lowerBoundDuration",
            "migratePolicy.cpu.lowerBoundDuration: invalid duration '5x' "
            "(use e.g. 30s, 5m, 2h, 1h30m or seconds)",
        ),
        (
            "[cooldown=-5]",
            "migratePolicy.cooldown",
            "migratePolicy.cooldown: duration must be ≥ 0, got '-5'",
        ),
        (
            "[mem.upperBoundRatio=0]",
            "migratePolicy.mem.upperBoundRatio",
            "migratePolicy.mem.upperBoundRatio: 0 must be a percentage > 0 and ≤ 100",
        ),
        (
            "[cpu.lowerBoundRatio=101]",
            "migratePolicy.cpu.lowerBoundRatio",
            "migratePolicy.cpu.lowerBoundRatio: 101 must be a percentage > 0 and ≤ 100",
        ),
        (
            "[cpu.prepareRatio=-1]",
            "migratePolicy.cpu.prepareRatio",
            "migratePolicy.cpu.prepareRatio: -1 must be a percentage > 0 and ≤ 100",
        ),
        (
            "[mem.lowerBoundRatio=95]",
            "migratePolicy.mem.lowerBoundRatio",
            "migratePolicy.mem.lowerBoundRatio: 95 must be below mem.upperBoundRatio (90)",
        ),
        (
            "[cpu.upperBoundRatio=50,cpu.lowerBoundRatio=50]",
            "migratePolicy.cpu.lowerBoundRatio",
            "migratePolicy.cpu.lowerBoundRatio: 50 must be below cpu.upperBoundRatio (50)",
        ),
        (
            "[mem.prepareRatio=95]",
            "migratePolicy.mem.prepareRatio",
            "migratePolicy.mem.prepareRatio: 95 must be above mem.lowerBoundRatio (5) "
            "and at most mem.upperBoundRatio (90)",
        ),
        (
            "[mem.step=0]",
            "migratePolicy.mem.step",
            "migratePolicy.mem.step: 0 must be a percentage > 0 and ≤ 1000",
        ),
        (
            "[cpu.limit=0]",
            "migratePolicy.cpu.limit",
            "migratePolicy.cpu.limit: 0 must be > 0 vCPU",
        ),
        (
            "[mem.limit=4,mem.lowerLimit=8]",
            "migratePolicy.mem.lowerLimit",
            "migratePolicy.mem.lowerLimit: 8 GiB must not exceed mem.limit (4 GiB)",
        ),
        (
            "[mem.step=50, mem.step=60]",
            "migratePolicy.mem.step",
            "migratePolicy.mem.step: given twice",
        ),
    ],
)
def test_migrate_policy_errors(text: str, field: str, message: str) -> None:
    e = err(parse_migrate_policy, text)
    assert str(e) == message
    assert e.field == field


def test_every_key_is_accepted() -> None:
    values = {
        "Ratio": "50",
        "Duration": "10s",
        "step": "10",
        "limit": "4",
        "Limit": "1",
        "stepAuto": "true",
        "evadeOOM": "true",
        "disable": "false",
        "cooldown": "1m",
        "moveMode": "postcopy",
    }
    for key in MIGRATE_KEYS:
        value = next(v for suffix, v in values.items() if key.endswith(suffix))
        if key.endswith("lowerBoundRatio"):
            value = "1"
        if key.endswith("prepareRatio"):
            value = "85"
        parse_migrate_policy(f"[{key}={value}]")


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValidationError) as exc:
        MigratePolicy(mem=ResourcePolicy(upper_bound_ratio=150))
    assert exc.value.field == "migratePolicy.mem.upperBoundRatio"
    with pytest.raises(ValidationError, match=r"^migratePolicy.cooldown: -1 must be ≥ 0 seconds$"):
        MigratePolicy(cooldown=-1)


# --- from_mapping -----------------------------------------------------------------------


def test_from_mapping_nested_flat_and_mixed() -> None:
    nested = MigratePolicy.from_mapping({"mem": {"upperBoundRatio": 80}, "evadeOOM": False})
    flat = MigratePolicy.from_mapping({"mem.upperBoundRatio": "80", "evadeOOM": "false"})
    assert nested == flat == parse_migrate_policy("[mem.upperBoundRatio=80,evadeOOM=false]")
    mixed = MigratePolicy.from_mapping(
        {"cpu": {"limit": 4, "upperBoundDuration": "1m"}, "mem.step": 25, "cooldown": 30}
    )
    assert mixed.cpu.limit == 4
    assert mixed.cpu.upper_bound_duration == 60
    assert mixed.mem.step == 25
    assert mixed.cooldown == 30
    assert MigratePolicy.from_mapping({}) == MigratePolicy()
    assert MigratePolicy.from_mapping({"mem": {"limit": None}}) == MigratePolicy()


def test_to_mapping_round_trips() -> None:
    p = parse_migrate_policy("[cpu.limit=4,mem.step=25,stepAuto=true,cooldown=90s]")
    assert p.to_mapping() == {
        "cpu": {"limit": 4.0},
        "mem": {"step": 25.0},
        "stepAuto": True,
        "cooldown": 90.0,
    }
    assert MigratePolicy.from_mapping(p.to_mapping()) == p


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (
            {"mem": {"upperBoundRatio": 150}},
            "migratePolicy.mem.upperBoundRatio",
            "migratePolicy.mem.upperBoundRatio: 150 must be a percentage > 0 and ≤ 100",
        ),
        (
            {"mem": {"upperBoundRatio": 80}, "mem.upperBoundRatio": 85},
            "migratePolicy.mem.upperBoundRatio",
            "migratePolicy.mem.upperBoundRatio: given twice",
        ),
        (
            {"mem": {"upper_bound_ratio": 80}},
            "migratePolicy.mem.upper_bound_ratio",
            "migratePolicy: unknown key 'mem.upper_bound_ratio' "
            "(did you mean 'mem.upperBoundRatio'?)",
        ),
        (
            {"mem": 8},
            "migratePolicy.mem",
            "migratePolicy.mem: expected a mapping of mem.* keys, got 8",
        ),
        (
            {"evadeOOM": 1},
            "migratePolicy.evadeOOM",
            "migratePolicy.evadeOOM: expected true or false, got 1",
        ),
        (
            {"mem.step": True},
            "migratePolicy.mem.step",
            "migratePolicy.mem.step: expected a number, got True",
        ),
        (
            {"cooldown": [1]},
            "migratePolicy.cooldown",
            "migratePolicy.cooldown: expected a duration, got [1]",
        ),
    ],
)
def test_from_mapping_errors(data: dict[str, object], field: str, message: str) -> None:
    e = err(MigratePolicy.from_mapping, data)
    assert str(e) == message
    assert e.field == field


def test_from_mapping_rejects_non_mappings() -> None:
    e = err(MigratePolicy.from_mapping, ["mem.step=5"])
    assert e.field == "migratePolicy"


# --- vmPolicy ---------------------------------------------------------------------------


def test_vm_policy_seed_and_defaults() -> None:
    p = parse_vm_policy("[spotFirst=true,retryLimit=3,retryInterval=600s]")
    assert p == VmPolicy() == parse_vm_policy("[]")
    assert (p.mode, p.retry_limit, p.retry_interval) == ("spotFirst", 3, 600)
    assert p.uses_spot and p.allows_on_demand
    assert format_vm_policy(p) == "[]"


def test_vm_policy_modes_and_round_trip() -> None:
    only = parse_vm_policy("[ spotOnly = true , retryLimit = 5 , retryInterval = 10m ]")
    assert (only.mode, only.retry_limit, only.retry_interval) == ("spotOnly", 5, 600)
    assert only.uses_spot and not only.allows_on_demand
    assert format_vm_policy(only) == "[spotOnly=true,retryLimit=5]"
    od = parse_vm_policy("[onDemand=true,spotFirst=false,retryInterval=30]")
    assert od.mode == "onDemand" and not od.uses_spot
    assert format_vm_policy(od) == "[onDemand=true,retryInterval=30s]"
    for q in (only, od, VmPolicy()):
        assert parse_vm_policy(format_vm_policy(q)) == q
        assert VmPolicy.from_mapping(q.to_mapping()) == q
    assert VmPolicy.from_mapping({"onDemand": True}).mode == "onDemand"


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (
            "spotOnly=true",
            "vmPolicy",
            "vmPolicy: expected [key=value,...] in square brackets, got 'spotOnly=true'",
        ),
        (
            "[spotOnly=true,onDemand=true]",
            "vmPolicy.onDemand",
            "vmPolicy: only one of spotFirst, spotOnly, onDemand may be true "
            "(got spotOnly, onDemand)",
        ),
        (
            "[spotFirst=false]",
            "vmPolicy.spotFirst",
            "vmPolicy: spotFirst=false does not choose a mode; set one of spotFirst, spotOnly, "
            "onDemand to true",
        ),
        (
            "[retryLimt=3]",
            "vmPolicy.retryLimt",
            "vmPolicy: unknown key 'retryLimt' (did you mean 'retryLimit'?)",
        ),
        (
            "[retryLimit=1.5]",
            "vmPolicy.retryLimit",
            "vmPolicy.retryLimit: expected a whole number, got '1.5'",
        ),
        ("[retryLimit=-1]", "vmPolicy.retryLimit", "vmPolicy.retryLimit: -1 must be ≥ 0"),
        (
            "[retryInterval=soon]",
            "vmPolicy.retryInterval",
            "vmPolicy.retryInterval: invalid duration 'soon' "
            "(use e.g. 30s, 5m, 2h, 1h30m or seconds)",
        ),
        (
            "[onDemand=yep]",
            "vmPolicy.onDemand",
            "vmPolicy.onDemand: expected true or false, got 'yep'",
        ),
        ("[retryLimit=1,retryLimit=2]", "vmPolicy.retryLimit", "vmPolicy.retryLimit: given twice"),
    ],
)
def test_vm_policy_errors(text: str, field: str, message: str) -> None:
    e = err(parse_vm_policy, text)
    assert str(e) == message
    assert e.field == field
