"""The migration policy engine: small rules over a window of usage samples.

:func:`evaluate` runs the rules in priority order and returns one :class:`Decision` with a
human reason. Pure: the caller passes the samples, the catalog and ``now``.

Semantics (see also ``policy.py``):

* **Durations** — a threshold must hold in *every* sample of a trailing run spanning at least
  the duration (``last.t − first.t ≥ duration``); one sample on the other side breaks it.
  Samples taken before ``last_migration_at`` (the previous instance) and after ``now`` are
  ignored.
* **step** — grow: the target must have at least ``current size × (1 + step/100)`` of the
  resource (clamped to the limit, so a partial last step is allowed); shrink: at least
  ``current size × (1 − step/100)`` — never more than one step down — and never below the
  peak usage of the run × 1.25 (both resources).
* **stepAuto** — the size comes from usage instead: the smallest size putting the peak usage
  at 80 % of the upper bound (90 % → 72 %), for grow and shrink alike (not limited by step).
* **Limits** — ``limit`` and the job's range max cap a grow; ``lowerLimit`` and the range min
  floor a shrink. The other resource keeps at least its current size (capped by its limit).
  The target is the cheapest catalog type that fits (spot price when on spot), never the
  current type; a shrink must also be cheaper. Upper (or lower) triggers on both resources
  are combined into one migration.
* **disable** — turns threshold auto-migration off (upper, lower, prepare). evadeOOM (its own
  flag), spot reclaim and the idle timeout still act.
* **cooldown** — a non-urgent grow/shrink within ``cooldown`` s of the last migration is held
  back (a ``none`` decision whose reason starts with ``cooldown:``); urgent decisions
  (evadeOOM, reclaim), suspend and prepare are not held back.
* **prepare** — when usage reaches the prepare level (upper − 10 by default) the target the
  upper rule would pick is announced so the control plane can pre-create it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from outgrow.domain.instance_types import GIB, Catalog, InstanceType
from outgrow.domain.policy import MigratePolicy, Resource, ResourceRange, describe_size
from outgrow.errors import ValidationError

Action = Literal["grow", "shrink", "migrate", "prepare", "suspend", "none"]
Direction = Literal["grow", "shrink"]

AUTO_HEADROOM = 0.8  # stepAuto aims usage at this fraction of the upper bound
USAGE_HEADROOM = 1.25  # a shrink keeps at least peak usage × this
_EPS = 1e-9
_RATIO_EPS = 1e-6  # percent: 90% of a byte count is still 90%
_FLAGS: dict[Resource, str] = {"cpu": "-c", "mem": "-m"}
RESOURCES: tuple[Resource, ...] = ("mem", "cpu")  # also the order of combined reasons


@dataclass(frozen=True)
class Sample:
    """One usage sample of the job (its cgroup), at time ``t`` (seconds)."""

    t: float
    mem_used_bytes: int
    mem_limit_bytes: int
    cpu_used_vcpus: float
    cpu_quota_vcpus: float
    oom_stalled: bool = False  # the job is stalled at its memory limit (reclaim/OOM pressure)

    def __post_init__(self) -> None:
        if self.mem_limit_bytes <= 0 or self.cpu_quota_vcpus <= 0:
            raise ValidationError("sample limits must be > 0", field="sample")
        if self.mem_used_bytes < 0 or self.cpu_used_vcpus < 0:
            raise ValidationError("sample usage must be ≥ 0", field="sample")

    def ratio(self, res: Resource) -> float:
        """Usage in percent of the limit."""
        if res == "cpu":
            return 100.0 * self.cpu_used_vcpus / self.cpu_quota_vcpus
        return 100.0 * self.mem_used_bytes / self.mem_limit_bytes

    def used(self, res: Resource) -> float:
        """Usage in vCPUs (cpu) or GiB (mem)."""
        return self.cpu_used_vcpus if res == "cpu" else self.mem_used_bytes / GIB

    def limit(self, res: Resource) -> float:
        return self.cpu_quota_vcpus if res == "cpu" else self.mem_limit_bytes / GIB


@dataclass(frozen=True)
class Context:
    """Everything a rule may look at besides the samples."""

    policy: MigratePolicy
    current: InstanceType
    catalog: Catalog
    cpu_range: ResourceRange
    mem_range: ResourceRange
    now: float
    last_migration_at: float | None = None
    spot: bool = False  # the job runs on spot capacity (prices compared at spot price)
    reclaim_notice: bool = False  # the provider announced the spot instance's reclaim
    idle_since: float | None = None
    idle_timeout: float | None = None  # None: never suspend for idleness
    spot_only: bool = False  # vmPolicy spotOnly: a reclaim moves to spot, not on-demand

    def resource_range(self, res: Resource) -> ResourceRange:
        return self.cpu_range if res == "cpu" else self.mem_range


@dataclass(frozen=True)
class Decision:
    action: Action
    target: InstanceType | None
    reason: str
    rule: str
    urgent: bool = False


@dataclass(frozen=True)
class Need:
    """A resource that wants to change size: ``size`` is the least the target must have."""

    resource: Resource
    direction: Direction
    size: float
    trigger: str  # "mem 93% ≥ 90% for 30 s"
    basis: str = ""  # what set ``size`` for a shrink, named when no type fits


# --- helpers ----------------------------------------------------------------------------


def size_of(t: InstanceType, res: Resource) -> float:
    return t.vcpus if res == "cpu" else t.memory_gib


def fmt_pct(ratio: float) -> str:
    return f"{ratio:.0f}%"


def fmt_duration(seconds: float) -> str:
    """``30 s``, ``300 s``, ``2 h``, ``1 h 30 min``."""
    if seconds != round(seconds):
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s >= 3600 and s % 60 == 0:
        hours, minutes = divmod(s // 60, 60)
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    return f"{s} s"


def fmt_bytes(n: float) -> str:
    return describe_size("mem", n / GIB)


def relevant_samples(ctx: Context, window: Iterable[Sample]) -> list[Sample]:
    """The samples of the current instance up to ``now``, oldest first."""
    last = ctx.last_migration_at
    out = [s for s in window if s.t <= ctx.now + _EPS and (last is None or s.t > last)]
    return sorted(out, key=lambda s: s.t)


def trailing_run(samples: Sequence[Sample], pred: Callable[[Sample], bool]) -> list[Sample]:
    """The longest run of samples at the end of ``samples`` all satisfying ``pred``."""
    i = len(samples)
    while i > 0 and pred(samples[i - 1]):
        i -= 1
    return list(samples[i:])


def held_for(run: Sequence[Sample], duration: float) -> bool:
    return bool(run) and run[-1].t - run[0].t >= duration - _EPS


def _cap(ctx: Context, res: Resource) -> tuple[float | None, str]:
    """The most a grow may reach, and how to name it."""
    limit, rng = ctx.policy.resource(res).limit, ctx.resource_range(res)
    cap, text = None, ""
    if limit is not None:
        cap, text = limit, f"{res}.limit={describe_size(res, limit)}"
    if rng.max is not None and (cap is None or rng.max < cap):
        cap, text = rng.max, f"{_FLAGS[res]} {rng.describe()}"
    return cap, text


def _floor(ctx: Context, res: Resource) -> tuple[float, str]:
    """The least a shrink may reach, and how to name it."""
    lower, rng = ctx.policy.resource(res).lower_limit, ctx.resource_range(res)
    floor, text = rng.min, f"{_FLAGS[res]} {rng.describe()}"
    if lower is not None and lower > floor:
        floor, text = lower, f"{res}.lowerLimit={describe_size(res, lower)}"
    return floor, text


def grow_size(ctx: Context, res: Resource, peak_used: float) -> tuple[float, str]:
    """The size a grow of ``res`` must reach (before limits), and its basis."""
    pol = ctx.policy.resource(res)
    cur = size_of(ctx.current, res)
    if ctx.policy.step_auto:
        size = peak_used / (AUTO_HEADROOM * pol.upper_bound_ratio / 100)
        return max(size, cur + _EPS), "stepAuto"
    return cur * (1 + pol.step / 100), f"{res}.step={pol.step:g}%"


def choose_target(ctx: Context, needs: Sequence[Need]) -> InstanceType | str:
    """The cheapest type meeting every need, or the reason none does."""
    direction = needs[0].direction
    moving = {n.resource: n for n in needs}
    bounds: dict[Resource, tuple[float, float | None, bool]] = {}  # lo, hi, hi exclusive
    for res in RESOURCES:
        cur = size_of(ctx.current, res)
        cap, cap_text = _cap(ctx, res)
        need = moving.get(res)
        if need is None:  # the other resource keeps its size (within its limit)
            bounds[res] = (cur if cap is None else min(cur, cap), cap, False)
        elif direction == "grow":
            if cap is not None and cap <= cur + _EPS:
                return f"no larger type within limit {cap_text}"
            bounds[res] = (need.size if cap is None else min(need.size, cap), cap, False)
        else:
            floor, floor_text = _floor(ctx, res)
            if floor >= cur - _EPS:
                return f"no smaller type within limit {floor_text}"
            if need.size >= cur - _EPS:
                return f"no smaller type within {need.basis}"
            bounds[res] = (max(floor, need.size), cur, True)

    def fits(t: InstanceType) -> bool:
        for res, (lo, hi, exclusive) in bounds.items():
            size = size_of(t, res)
            if size < lo - _EPS or (hi is not None and size > hi + _EPS):
                return False
            if exclusive and hi is not None and size >= hi - _EPS:
                return False
        return True

    found = [t for t in ctx.catalog.types if t.name != ctx.current.name and fits(t)]
    if direction == "shrink" and found:
        found = [t for t in found if t.price(ctx.spot) < ctx.current.price(ctx.spot)]
        if not found:
            return "no cheaper smaller type"
    if found:
        return min(found, key=lambda t: (t.price(ctx.spot), t.memory_gib, t.vcpus, t.name))
    if direction == "grow":
        for need in needs:
            cap, cap_text = _cap(ctx, need.resource)
            if cap is not None:
                return f"no larger type within limit {cap_text}"
        return "no larger type in the catalog"
    texts = []
    for need in needs:
        floor, floor_text = _floor(ctx, need.resource)
        texts.append(f"limit {floor_text}" if floor >= need.size - _EPS else need.basis)
    return f"no smaller type within {', '.join(texts)}"


def decide(ctx: Context, needs: Sequence[Need], rule: str, urgent: bool = False) -> Decision:
    """Turn needs into a grow/shrink decision (or ``none`` naming why nothing fits)."""
    triggers = ", ".join(n.trigger for n in needs)
    target = choose_target(ctx, needs)
    if isinstance(target, str):
        return Decision("none", None, f"{triggers}: {target}", rule)
    reason = f"{triggers} → {target.name} ({target.describe()})"
    return Decision(needs[0].direction, target, reason, rule, urgent)


# --- rules ------------------------------------------------------------------------------


class EvadeOomRule:
    """evadeOOM: the job stalls at its memory limit → grow memory now (urgent: no duration,
    no cooldown). Sized by ``mem.step`` (or stepAuto from the limit)."""

    name = "evadeOOM"

    def evaluate(self, ctx: Context, window: Sequence[Sample]) -> Decision | None:
        samples = relevant_samples(ctx, window)
        if not ctx.policy.evade_oom or not samples or not samples[-1].oom_stalled:
            return None
        latest = samples[-1]
        peak = max(latest.used("mem"), latest.limit("mem"))
        size, basis = grow_size(ctx, "mem", peak)
        trigger = f"evadeOOM: memory limit reached ({fmt_bytes(latest.mem_limit_bytes)})"
        return decide(ctx, [Need("mem", "grow", size, trigger, basis)], self.name, urgent=True)


class ReclaimRule:
    """A spot reclaim notice → move now to the same size (on-demand unless spotOnly)."""

    name = "reclaim"

    def evaluate(self, ctx: Context, window: Sequence[Sample]) -> Decision | None:
        if not ctx.reclaim_notice:
            return None
        cur = ctx.current
        same = [
            t for t in ctx.catalog.types if t.vcpus == cur.vcpus and t.memory_gib == cur.memory_gib
        ]
        on_spot = ctx.spot_only
        target = min(same or [cur], key=lambda t: (t.name != cur.name, t.price(on_spot), t.name))
        capacity = "spot" if on_spot else "on-demand"
        reason = f"spot reclaim notice → {target.name} ({capacity})"
        return Decision("migrate", target, reason, self.name, urgent=True)


class UpperRule:
    """Usage ≥ upperBoundRatio in every sample for ≥ upperBoundDuration → grow."""

    resource: Resource = "mem"

    @property
    def name(self) -> str:
        return f"{self.resource}.upper"

    def need(self, ctx: Context, window: Sequence[Sample]) -> Need | None:
        res, pol = self.resource, ctx.policy.resource(self.resource)
        samples = relevant_samples(ctx, window)
        run = trailing_run(samples, lambda s: s.ratio(res) >= pol.upper_bound_ratio - _RATIO_EPS)
        if not held_for(run, pol.upper_bound_duration):
            return None
        trigger = (
            f"{res} {fmt_pct(run[-1].ratio(res))} ≥ {pol.upper_bound_ratio:g}% "
            f"for {fmt_duration(pol.upper_bound_duration)}"
        )
        size, basis = grow_size(ctx, res, max(s.used(res) for s in run))
        return Need(res, "grow", size, trigger, basis)

    def evaluate(self, ctx: Context, window: Sequence[Sample]) -> Decision | None:
        need = self.need(ctx, window)
        return None if need is None else decide(ctx, [need], self.name)


class LowerRule:
    """Usage ≤ lowerBoundRatio in every sample for ≥ lowerBoundDuration → shrink."""

    resource: Resource = "mem"

    @property
    def name(self) -> str:
        return f"{self.resource}.lower"

    def need(self, ctx: Context, window: Sequence[Sample]) -> Need | None:
        res, pol = self.resource, ctx.policy.resource(self.resource)
        samples = relevant_samples(ctx, window)
        run = trailing_run(samples, lambda s: s.ratio(res) <= pol.lower_bound_ratio + _RATIO_EPS)
        if not held_for(run, pol.lower_bound_duration):
            return None
        trigger = (
            f"{res} {fmt_pct(run[-1].ratio(res))} ≤ {pol.lower_bound_ratio:g}% "
            f"for {fmt_duration(pol.lower_bound_duration)}"
        )
        peak = max(s.used(res) for s in run)
        usage_floor = peak * USAGE_HEADROOM
        usage_text = f"{res} usage {describe_size(res, peak)} × {USAGE_HEADROOM:g}"
        if ctx.policy.step_auto:
            size = peak / (AUTO_HEADROOM * pol.upper_bound_ratio / 100)
            basis = "stepAuto"
        else:
            size = size_of(ctx.current, res) * max(0.0, 1 - pol.step / 100)
            basis = f"{res}.step={pol.step:g}%"
        if usage_floor > size:
            size, basis = usage_floor, usage_text
        return Need(res, "shrink", size, trigger, basis)

    def evaluate(self, ctx: Context, window: Sequence[Sample]) -> Decision | None:
        need = self.need(ctx, window)
        return None if need is None else decide(ctx, [need], self.name)


class MemUpperRule(UpperRule):
    resource: Resource = "mem"


class CpuUpperRule(UpperRule):
    resource: Resource = "cpu"


class MemLowerRule(LowerRule):
    resource: Resource = "mem"


class CpuLowerRule(LowerRule):
    resource: Resource = "cpu"


class IdleRule:
    """Idle for ≥ idle_timeout → suspend (independent of the migrate policy)."""

    name = "idle"

    def evaluate(self, ctx: Context, window: Sequence[Sample]) -> Decision | None:
        if ctx.idle_timeout is None or ctx.idle_since is None:
            return None
        if ctx.now - ctx.idle_since < ctx.idle_timeout - _EPS:
            return None
        return Decision(
            "suspend", None, f"idle for {fmt_duration(ctx.idle_timeout)} → suspend", self.name
        )


def _at_least(res: Resource, level: float) -> Callable[[Sample], bool]:
    return lambda x: x.ratio(res) >= level - _RATIO_EPS


class PrepareRule:
    """Usage ≥ the prepare level for half the upper bound's duration → announce the grow
    target the upper rule would pick, so it is warm by the time that rule fires. (A single
    sample was not enough: every Jupyter server briefly uses a full CPU when it starts.)
    Not urgent; nothing when no larger type fits."""

    name = "prepare"

    def evaluate(self, ctx: Context, window: Sequence[Sample]) -> Decision | None:
        samples = relevant_samples(ctx, window)
        if not samples:
            return None
        latest = samples[-1]
        needs = []
        for res in RESOURCES:
            pol = ctx.policy.resource(res)
            level = pol.prepare_level
            run = trailing_run(samples, _at_least(res, level))
            if run and held_for(run, pol.upper_bound_duration / 2):
                # size it as the upper rule will: usage at (at least) the upper bound
                at_upper = latest.limit(res) * pol.upper_bound_ratio / 100
                size, basis = grow_size(ctx, res, max(latest.used(res), at_upper))
                trigger = f"{res} {fmt_pct(latest.ratio(res))} ≥ {level:g}%"
                needs.append(Need(res, "grow", size, trigger, basis))
        if not needs:
            return None
        target = choose_target(ctx, needs)
        if isinstance(target, str):
            return None
        triggers = ", ".join(n.trigger for n in needs)
        reason = f"{triggers} → prepare {target.name} ({target.describe()})"
        return Decision("prepare", target, reason, self.name)


# --- the engine -------------------------------------------------------------------------


def _combined(
    ctx: Context, window: Sequence[Sample], rules: Sequence[UpperRule | LowerRule]
) -> Decision | None:
    """Upper (or lower) triggers of both resources → one migration satisfying both."""
    fired = [(rule, need) for rule in rules if (need := rule.need(ctx, window)) is not None]
    if not fired:
        return None
    both = decide(ctx, [n for _, n in fired], "+".join(r.name for r, _ in fired))
    if both.action != "none" or len(fired) == 1:
        return both
    for rule, need in fired:  # nothing fits both: move for the one that can be served
        alone = decide(ctx, [need], rule.name)
        if alone.action != "none":
            return alone
    return both


def cooldown_left(ctx: Context) -> float:
    if ctx.last_migration_at is None:
        return 0.0
    return max(0.0, ctx.last_migration_at + ctx.policy.cooldown - ctx.now)


def _status(ctx: Context, samples: Sequence[Sample]) -> Decision:
    if not samples:
        usage = "no samples" + (
            " since the last migration" if ctx.last_migration_at is not None else " yet"
        )
    else:
        latest = samples[-1]
        usage = f"mem {fmt_pct(latest.ratio('mem'))}, cpu {fmt_pct(latest.ratio('cpu'))}"
    if ctx.policy.disable:
        return Decision("none", None, f"auto-migration disabled ({usage})", "disabled")
    if not samples:
        return Decision("none", None, usage, "none")
    return Decision("none", None, f"{usage}: within bounds", "none")


def evaluate(ctx: Context, window: Sequence[Sample]) -> Decision:
    """Run the rules in priority order: evadeOOM, reclaim, upper, lower, idle, prepare.

    The first rule with an action wins. A rule that fired but found no type, or a grow/shrink
    held back by the cooldown, is remembered and reported (the first one) if no later rule
    acts (only idle may still act after a held-back grow/shrink). Otherwise the decision is
    ``none`` with the current usage.
    """
    steps: list[Callable[[], Decision | None]] = [
        lambda: EvadeOomRule().evaluate(ctx, window),
        lambda: ReclaimRule().evaluate(ctx, window),
    ]
    if not ctx.policy.disable:
        steps.append(lambda: _combined(ctx, window, [MemUpperRule(), CpuUpperRule()]))
        steps.append(lambda: _combined(ctx, window, [MemLowerRule(), CpuLowerRule()]))
    steps.append(lambda: IdleRule().evaluate(ctx, window))
    if not ctx.policy.disable:
        steps.append(lambda: PrepareRule().evaluate(ctx, window))

    held: Decision | None = None
    for step in steps:
        decision = step()
        if decision is None:
            continue
        if decision.action == "prepare" and held is not None and held.rule == "cooldown":
            continue  # the held-back grow is reported instead
        if decision.action == "none":
            held = held or decision
            continue
        left = cooldown_left(ctx)
        if decision.action in ("grow", "shrink") and not decision.urgent and left > 0:
            reason = (
                f"cooldown: {decision.reason} held back, {fmt_duration(math.ceil(left))} left "
                f"of {fmt_duration(ctx.policy.cooldown)}"
            )
            held = held or Decision("none", None, reason, "cooldown")
            continue
        return decision
    return held or _status(ctx, relevant_samples(ctx, window))
