"""Job policies in the seed product's syntax.

``--migratePolicy [cpu.upperBoundRatio=90,cpu.lowerBoundRatio=5,cpu.upperBoundDuration=30s,
cpu.lowerBoundDuration=300s,cpu.step=50,mem.upperBoundRatio=90,...,stepAuto=false,evadeOOM=true]``
and ``--vmPolicy [spotFirst=true,retryLimit=3,retryInterval=600s]``, exactly as the seed's job
form generates them. The same keys work from a mapping (YAML job file, JSON API), nested
(``{"mem": {"step": 50}}``) or flat (``{"mem.step": 50}``).

Defaults are the seed's job form defaults (upper 90 % for 30 s, lower 5 % for 300 s, step 50 %,
stepAuto false, evadeOOM true; spotFirst, retryLimit 3, retryInterval 600 s). Ours:
``cooldown`` (120 s), ``prepareRatio`` (upper − 10), ``limit``/``lowerLimit`` unset,
``moveMode`` (auto: plain or post-copy, see domain/movemode.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from outgrow.domain.movemode import MoveModeChoice, parse_move_mode
from outgrow.domain.policy_parse import (
    ResourceRange,
    format_duration_value,
    format_number,
    parse_bool,
    parse_duration,
    parse_int,
    parse_mem_gib,
    parse_number,
    parse_range,
    split_bracket_list,
    unknown_key,
)
from outgrow.errors import ValidationError

__all__ = [
    "MigratePolicy",
    "ResourcePolicy",
    "ResourceRange",
    "VmPolicy",
    "format_migrate_policy",
    "format_vm_policy",
    "parse_duration",
    "parse_migrate_policy",
    "parse_range",
    "parse_vm_policy",
]

Resource = Literal["cpu", "mem"]
VmMode = Literal["spotFirst", "spotOnly", "onDemand"]

MIGRATE = "migratePolicy"
VM = "vmPolicy"
MAX_STEP = 1000.0
PREPARE_GAP = 10.0  # default prepare level = upper bound − this many points


@dataclass(frozen=True)
class ResourcePolicy:
    """The auto-migration thresholds of one resource (``cpu.*`` or ``mem.*``).

    Ratios are percent of the current allocation; durations are seconds; ``limit`` and
    ``lower_limit`` are sizes (vCPUs for cpu, GiB for mem) that auto-migration never goes
    above / below. ``step`` is the percent change of size in one migration.
    """

    upper_bound_ratio: float = 90.0
    lower_bound_ratio: float = 5.0
    upper_bound_duration: float = 30.0
    lower_bound_duration: float = 300.0
    step: float = 50.0
    limit: float | None = None
    lower_limit: float | None = None
    prepare_ratio: float | None = None  # None: derived, see prepare_level

    @property
    def prepare_level(self) -> float:
        """Usage (percent) at which the next grow target is pre-created: ``prepare_ratio``,
        else upper − 10 (or halfway between the bounds when that is not above lower)."""
        if self.prepare_ratio is not None:
            return self.prepare_ratio
        level = self.upper_bound_ratio - PREPARE_GAP
        if level > self.lower_bound_ratio:
            return level
        return (self.lower_bound_ratio + self.upper_bound_ratio) / 2


@dataclass(frozen=True)
class MigratePolicy:
    """``--migratePolicy``: when to grow/shrink the job's instance. See module doc."""

    cpu: ResourcePolicy = field(default_factory=ResourcePolicy)
    mem: ResourcePolicy = field(default_factory=ResourcePolicy)
    step_auto: bool = False  # pick the size from usage instead of the step
    evade_oom: bool = True  # grow at once when the job stalls at its memory limit
    disable: bool = False  # turn threshold auto-migration off (evadeOOM still acts)
    cooldown: float = 120.0  # s between two non-urgent migrations (ours)
    move_mode: MoveModeChoice = "auto"  # how a move carries the memory (ours)

    def __post_init__(self) -> None:
        _validate_resource("cpu", self.cpu)
        _validate_resource("mem", self.mem)
        if not math.isfinite(self.cooldown) or self.cooldown < 0:
            raise _invalid("cooldown", f"{format_number(self.cooldown)} must be ≥ 0 seconds")

    def resource(self, name: Resource) -> ResourcePolicy:
        return self.cpu if name == "cpu" else self.mem

    @classmethod
    def parse(cls, text: str) -> MigratePolicy:
        return parse_migrate_policy(text)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> MigratePolicy:
        """Nested (``{"mem": {"upperBoundRatio": 90}, "evadeOOM": True}``) or flat dotted
        (``{"mem.upperBoundRatio": 90}``) keys, native values or the bracket syntax's strings.
        ``None`` means the default."""
        return _build_migrate(_flatten(data, MIGRATE, ("cpu", "mem")))

    def to_mapping(self) -> dict[str, Any]:
        """The non-default fields, nested, with native values (inverse of from_mapping)."""
        out: dict[str, Any] = {}
        for key, value in _migrate_items(self):
            res, dot, sub = key.partition(".")
            if dot:
                out.setdefault(res, {})[sub] = value
            else:
                out[key] = value
        return out


@dataclass(frozen=True)
class VmPolicy:
    """``--vmPolicy``: which capacity to run on.

    ``spotFirst`` tries spot capacity and falls back to on-demand; ``spotOnly`` waits for
    spot (retrying ``retry_limit`` times, ``retry_interval`` apart, then NoAvailableHost);
    ``onDemand`` never uses spot.
    """

    mode: VmMode = "spotFirst"
    retry_limit: int = 3
    retry_interval: float = 600.0

    def __post_init__(self) -> None:
        if self.mode not in _VM_MODES:
            raise ValidationError(
                f"{VM}: mode must be one of {', '.join(_VM_MODES)}, got {self.mode!r}",
                field=f"{VM}.mode",
            )
        if self.retry_limit < 0:
            raise ValidationError(
                f"{VM}.retryLimit: {self.retry_limit} must be ≥ 0", field=f"{VM}.retryLimit"
            )
        if not math.isfinite(self.retry_interval) or self.retry_interval < 0:
            raise ValidationError(
                f"{VM}.retryInterval: {format_number(self.retry_interval)} must be ≥ 0 seconds",
                field=f"{VM}.retryInterval",
            )

    @property
    def uses_spot(self) -> bool:
        return self.mode != "onDemand"

    @property
    def allows_on_demand(self) -> bool:
        return self.mode != "spotOnly"

    @classmethod
    def parse(cls, text: str) -> VmPolicy:
        return parse_vm_policy(text)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> VmPolicy:
        return _build_vm(_flatten(data, VM, ()))

    def to_mapping(self) -> dict[str, Any]:
        return dict(_vm_items(self))


# --- keys -------------------------------------------------------------------------------

# (seed key, attribute, kind) — in the seed's order, which is also the canonical format order.
_RESOURCE_KEYS: tuple[tuple[str, str, str], ...] = (
    ("upperBoundRatio", "upper_bound_ratio", "ratio"),
    ("lowerBoundRatio", "lower_bound_ratio", "ratio"),
    ("upperBoundDuration", "upper_bound_duration", "duration"),
    ("lowerBoundDuration", "lower_bound_duration", "duration"),
    ("step", "step", "step"),
    ("limit", "limit", "size"),
    ("lowerLimit", "lower_limit", "size"),
    ("prepareRatio", "prepare_ratio", "ratio"),
)
_GLOBAL_KEYS: tuple[tuple[str, str, str], ...] = (
    ("stepAuto", "step_auto", "bool"),
    ("evadeOOM", "evade_oom", "bool"),
    ("disable", "disable", "bool"),
    ("cooldown", "cooldown", "duration"),
    ("moveMode", "move_mode", "movemode"),
)
MIGRATE_KEYS: tuple[str, ...] = (
    *(f"{res}.{key}" for res in ("cpu", "mem") for key, _, _ in _RESOURCE_KEYS),
    *(key for key, _, _ in _GLOBAL_KEYS),
)
_VM_MODES: tuple[VmMode, ...] = ("spotFirst", "spotOnly", "onDemand")
VM_KEYS: tuple[str, ...] = (*_VM_MODES, "retryLimit", "retryInterval")


def _invalid(key: str, problem: str, prefix: str = MIGRATE) -> ValidationError:
    return ValidationError(f"{prefix}.{key}: {problem}", field=f"{prefix}.{key}")


def _validate_resource(res: str, p: ResourcePolicy) -> None:
    ratios = [("upperBoundRatio", p.upper_bound_ratio), ("lowerBoundRatio", p.lower_bound_ratio)]
    if p.prepare_ratio is not None:
        ratios.append(("prepareRatio", p.prepare_ratio))
    for key, value in ratios:
        if not (0 < value <= 100):
            raise _invalid(
                f"{res}.{key}", f"{format_number(value)} must be a percentage > 0 and ≤ 100"
            )
    for key, value in (
        ("upperBoundDuration", p.upper_bound_duration),
        ("lowerBoundDuration", p.lower_bound_duration),
    ):
        if not math.isfinite(value) or value < 0:
            raise _invalid(f"{res}.{key}", f"{format_number(value)} must be ≥ 0 seconds")
    if not (0 < p.step <= MAX_STEP):
        raise _invalid(
            f"{res}.step", f"{format_number(p.step)} must be a percentage > 0 and ≤ {MAX_STEP:g}"
        )
    unit = "vCPU" if res == "cpu" else "GiB"
    for key, size in (("limit", p.limit), ("lowerLimit", p.lower_limit)):
        if size is not None and (not math.isfinite(size) or size <= 0):
            raise _invalid(f"{res}.{key}", f"{format_number(size)} must be > 0 {unit}")
    if p.lower_bound_ratio >= p.upper_bound_ratio:
        raise _invalid(
            f"{res}.lowerBoundRatio",
            f"{format_number(p.lower_bound_ratio)} must be below "
            f"{res}.upperBoundRatio ({format_number(p.upper_bound_ratio)})",
        )
    if p.prepare_ratio is not None and not (
        p.lower_bound_ratio < p.prepare_ratio <= p.upper_bound_ratio
    ):
        raise _invalid(
            f"{res}.prepareRatio",
            f"{format_number(p.prepare_ratio)} must be above {res}.lowerBoundRatio "
            f"({format_number(p.lower_bound_ratio)}) and at most {res}.upperBoundRatio "
            f"({format_number(p.upper_bound_ratio)})",
        )
    if p.limit is not None and p.lower_limit is not None and p.lower_limit > p.limit:
        raise _invalid(
            f"{res}.lowerLimit",
            f"{format_number(p.lower_limit)} {unit} must not exceed "
            f"{res}.limit ({format_number(p.limit)} {unit})",
        )


def _parse_value(kind: str, raw: object, res: str, fld: str) -> Any:
    if kind in ("ratio", "step"):
        return parse_number(raw, fld, percent=True)
    if kind == "duration":
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ValidationError(f"{fld}: expected a duration, got {raw!r}", field=fld)
        return parse_duration(raw, fld)
    if kind == "size":
        return parse_mem_gib(raw, fld) if res == "mem" else parse_number(raw, fld)
    if kind == "bool":
        return parse_bool(raw, fld)
    if kind == "int":
        return parse_int(raw, fld)
    if kind == "movemode":
        return parse_move_mode(raw, fld)
    raise AssertionError(kind)  # pragma: no cover


def _flatten(
    data: Mapping[str, Any], prefix: str, groups: tuple[str, ...]
) -> list[tuple[str, object]]:
    if not isinstance(data, Mapping):
        raise ValidationError(f"{prefix}: expected a mapping, got {data!r}", field=prefix)
    pairs: list[tuple[str, object]] = []
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValidationError(f"{prefix}: keys must be strings, got {key!r}", field=prefix)
        if key in groups:
            if not isinstance(value, Mapping):
                raise _invalid(key, f"expected a mapping of {key}.* keys, got {value!r}", prefix)
            for sub, sub_value in value.items():
                pairs.append((f"{key}.{sub}", sub_value))
        else:
            pairs.append((key, value))
    return pairs


def _check_pairs(
    pairs: Iterable[tuple[str, object]], known: tuple[str, ...], prefix: str
) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key not in known:
            raise unknown_key(key, known, prefix)
        if key in seen:
            raise _invalid(key, "given twice", prefix)
        seen[key] = value
    return seen


def _build_migrate(pairs: Iterable[tuple[str, object]]) -> MigratePolicy:
    given = _check_pairs(pairs, MIGRATE_KEYS, MIGRATE)
    per_res: dict[str, dict[str, Any]] = {"cpu": {}, "mem": {}}
    top: dict[str, Any] = {}
    for key, raw in given.items():
        if raw is None:
            continue
        fld = f"{MIGRATE}.{key}"
        res, dot, sub = key.partition(".")
        if dot:
            attr, kind = next((a, k) for n, a, k in _RESOURCE_KEYS if n == sub)
            per_res[res][attr] = _parse_value(kind, raw, res, fld)
        else:
            attr, kind = next((a, k) for n, a, k in _GLOBAL_KEYS if n == key)
            top[attr] = _parse_value(kind, raw, "", fld)
    return MigratePolicy(
        cpu=replace(ResourcePolicy(), **per_res["cpu"]),
        mem=replace(ResourcePolicy(), **per_res["mem"]),
        **top,
    )


def _build_vm(pairs: Iterable[tuple[str, object]]) -> VmPolicy:
    given = _check_pairs(pairs, VM_KEYS, VM)
    modes = {m: parse_bool(given[m], f"{VM}.{m}") for m in _VM_MODES if given.get(m) is not None}
    chosen = [m for m, on in modes.items() if on]
    if len(chosen) > 1:
        raise ValidationError(
            f"{VM}: only one of spotFirst, spotOnly, onDemand may be true "
            f"(got {', '.join(chosen)})",
            field=f"{VM}.{chosen[1]}",
        )
    if modes and not chosen:
        off = next(iter(modes))
        raise ValidationError(
            f"{VM}: {off}=false does not choose a mode; set one of spotFirst, spotOnly, "
            "onDemand to true",
            field=f"{VM}.{off}",
        )
    kwargs: dict[str, Any] = {}
    if chosen:
        kwargs["mode"] = chosen[0]
    if given.get("retryLimit") is not None:
        kwargs["retry_limit"] = _parse_value("int", given["retryLimit"], "", f"{VM}.retryLimit")
    if given.get("retryInterval") is not None:
        kwargs["retry_interval"] = _parse_value(
            "duration", given["retryInterval"], "", f"{VM}.retryInterval"
        )
    return VmPolicy(**kwargs)


def _native(kind: str, value: Any) -> Any:
    return value if kind in ("bool", "movemode") else float(value)


def _migrate_items(p: MigratePolicy) -> list[tuple[str, Any]]:
    default_res = ResourcePolicy()
    out: list[tuple[str, Any]] = []
    for res in ("cpu", "mem"):
        rp = p.cpu if res == "cpu" else p.mem
        for key, attr, kind in _RESOURCE_KEYS:
            value = getattr(rp, attr)
            if value != getattr(default_res, attr):
                out.append((f"{res}.{key}", _native(kind, value)))
    defaults = MigratePolicy()
    for key, attr, kind in _GLOBAL_KEYS:
        value = getattr(p, attr)
        if value != getattr(defaults, attr):
            out.append((key, _native(kind, value)))
    return out


def _vm_items(p: VmPolicy) -> list[tuple[str, Any]]:
    d = VmPolicy()
    out: list[tuple[str, Any]] = []
    if p.mode != d.mode:
        out.append((p.mode, True))
    if p.retry_limit != d.retry_limit:
        out.append(("retryLimit", p.retry_limit))
    if p.retry_interval != d.retry_interval:
        out.append(("retryInterval", float(p.retry_interval)))
    return out


def _render(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if key.endswith(("Duration", "cooldown", "retryInterval")):
        return format_duration_value(value)
    if isinstance(value, int):
        return str(value)
    return format_number(value)


# --- public API -------------------------------------------------------------------------


def parse_migrate_policy(text: str) -> MigratePolicy:
    """``"[mem.upperBoundRatio=90,mem.upperBoundDuration=30s,evadeOOM=true]"`` → policy.
    ``"[]"`` → defaults. Raises ValidationError naming the bad key."""
    return _build_migrate(split_bracket_list(text, MIGRATE))


def format_migrate_policy(policy: MigratePolicy) -> str:
    """The canonical bracket string of the non-default fields (round-trips)."""
    return "[" + ",".join(f"{k}={_render(k, v)}" for k, v in _migrate_items(policy)) + "]"


def parse_vm_policy(text: str) -> VmPolicy:
    """``"[spotFirst=true,retryLimit=3,retryInterval=600s]"`` → policy; ``"[]"`` → defaults."""
    return _build_vm(split_bracket_list(text, VM))


def format_vm_policy(policy: VmPolicy) -> str:
    return "[" + ",".join(f"{k}={_render(k, v)}" for k, v in _vm_items(policy)) + "]"


def describe_size(res: Resource, size: float) -> str:
    """``2 vCPU`` / ``8 GiB`` / ``512 MiB``."""
    if res == "cpu":
        return f"{size:g} vCPU"
    return f"{round(size, 2):g} GiB" if size >= 1 else f"{round(size * 1024):g} MiB"


def parse_cpu_range(value: str | float) -> ResourceRange:
    """``-c 2`` / ``-c 2:8`` (vCPUs)."""
    return parse_range(value, "cpu")


def parse_mem_range(value: str | float) -> ResourceRange:
    """``-m 4`` / ``-m 4:64`` (GiB)."""
    return parse_range(value, "mem")
