"""Instance types and the catalog: what sizes exist and what they cost."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from outgrow.errors import ConfigError, NotFoundError

GIB = 1024**3


@dataclass(frozen=True, order=True)
class InstanceType:
    """One size of instance. Prices are USD per hour."""

    name: str
    vcpus: float
    memory_gib: float
    price_per_hour: float
    spot_price_per_hour: float | None = None

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    def price(self, spot: bool) -> float:
        if spot and self.spot_price_per_hour is not None:
            return self.spot_price_per_hour
        return self.price_per_hour

    def describe(self) -> str:
        """``2 vCPU 8 GiB`` — used in reasons and tables."""
        cpu = f"{self.vcpus:g} vCPU"
        mem = (
            f"{self.memory_gib:g} GiB"
            if self.memory_gib >= 1
            else f"{self.memory_gib * 1024:g} MiB"
        )
        return f"{cpu} {mem}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Catalog:
    """An ordered set of instance types (ordered by memory, then vCPUs, then price)."""

    types: tuple[InstanceType, ...]

    def __post_init__(self) -> None:
        names = [t.name for t in self.types]
        if len(set(names)) != len(names):
            raise ConfigError("instance type catalog has duplicate names")

    def get(self, name: str) -> InstanceType:
        for t in self.types:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.types)
        raise NotFoundError(
            f"unknown instance type {name!r} (known: {known})", field="instance_type"
        )

    def __iter__(self) -> Iterator[InstanceType]:
        return iter(self.types)

    def __len__(self) -> int:
        return len(self.types)

    def fitting(
        self,
        min_vcpus: float = 0,
        max_vcpus: float | None = None,
        min_memory_gib: float = 0,
        max_memory_gib: float | None = None,
    ) -> list[InstanceType]:
        """Types within the ranges, cheapest first (on-demand price, then smaller)."""
        out = [
            t
            for t in self.types
            if t.vcpus >= min_vcpus - 1e-9
            and t.memory_gib >= min_memory_gib - 1e-9
            and (max_vcpus is None or t.vcpus <= max_vcpus + 1e-9)
            and (max_memory_gib is None or t.memory_gib <= max_memory_gib + 1e-9)
        ]
        return sorted(out, key=lambda t: (t.price_per_hour, t.memory_gib, t.vcpus, t.name))

    def cheapest(
        self,
        min_vcpus: float = 0,
        min_memory_gib: float = 0,
        max_vcpus: float | None = None,
        max_memory_gib: float | None = None,
    ) -> InstanceType | None:
        fit = self.fitting(min_vcpus, max_vcpus, min_memory_gib, max_memory_gib)
        return fit[0] if fit else None


def parse_catalog(text: str, source: str = "catalog") -> Catalog:
    """Parse a YAML catalog: ``types: [{name, vcpus, memory_gib, price_per_hour,
    spot_price_per_hour?}, ...]``. Errors name the entry and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("types"), list):
        raise ConfigError(f"{source}: expected a mapping with a 'types' list")
    types: list[InstanceType] = []
    for i, entry in enumerate(data["types"]):
        where = f"{source}: types[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping")
        unknown = set(entry) - {
            "name",
            "vcpus",
            "memory_gib",
            "price_per_hour",
            "spot_price_per_hour",
        }
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            t = InstanceType(
                name=str(entry["name"]),
                vcpus=float(entry["vcpus"]),
                memory_gib=float(entry["memory_gib"]),
                price_per_hour=float(entry["price_per_hour"]),
                spot_price_per_hour=(
                    float(entry["spot_price_per_hour"])
                    if entry.get("spot_price_per_hour") is not None
                    else None
                ),
            )
        except KeyError as exc:
            raise ConfigError(f"{where}: missing field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if t.vcpus <= 0 or t.memory_gib <= 0 or t.price_per_hour < 0:
            raise ConfigError(f"{where}: vcpus and memory_gib must be > 0, prices >= 0")
        types.append(t)
    return Catalog(tuple(sort_types(types)))


def sort_types(types: Iterable[InstanceType]) -> Sequence[InstanceType]:
    return sorted(types, key=lambda t: (t.memory_gib, t.vcpus, t.price_per_hour, t.name))
