"""The aws catalog: the price table's types (``prices.py``) that pass the allow/deny
lists, with vCPUs and memory from DescribeInstanceTypes (only the AMI's architecture) and
the current spot price from DescribeSpotPriceHistory; rebuilt every ``CATALOG_TTL_S``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from outgrow.domain.instance_types import Catalog, InstanceType, sort_types
from outgrow.errors import ConfigError, NotFoundError
from outgrow.providers.aws.account import Account
from outgrow.providers.aws.prices import PriceTable
from outgrow.providers.aws.tags import chunks

log = logging.getLogger("outgrow.provider.aws")

SPOT_PRODUCTS = ["Linux/UNIX (Amazon VPC)", "Linux/UNIX"]
CATALOG_TTL_S = 600.0


class InstanceCatalog:
    def __init__(
        self,
        account: Account,
        prices: PriceTable,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.account = account
        self.aws = account.aws
        self.prices = prices
        self.clock = clock
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._built_at = 0.0

    def get(self) -> Catalog:
        with self._lock:
            if self._catalog is None or self.clock() - self._built_at > CATALOG_TTL_S:
                self._catalog = self.build()
                self._built_at = self.clock()
            return self._catalog

    def build(self) -> Catalog:
        region = self.account.region
        table = self.prices.for_region(region)
        names = sorted(n for n in table if self.aws.type_allowed(n))
        if not names:
            raise ConfigError(
                f"no instance type of the price table for {region} passes "
                f"allow_types={self.aws.allow_types} deny_types={self.aws.deny_types}",
                field="allow_types",
            )
        shapes: dict[str, tuple[float, float]] = {}
        for chunk in chunks(names):
            for t in self.account.adaptor.pages(
                "ec2",
                "describe_instance_types",
                "InstanceTypes",
                Filters=[
                    {"Name": "instance-type", "Values": chunk},
                    {
                        "Name": "processor-info.supported-architecture",
                        "Values": [self.aws.architecture],
                    },
                ],
            ):
                shapes[t["InstanceType"]] = (
                    float(t["VCpuInfo"]["DefaultVCpus"]),
                    float(t["MemoryInfo"]["SizeInMiB"]) / 1024,
                )
        missing = [n for n in names if n not in shapes]
        if missing:
            log.info("not offered in %s (or not %s): %s", region, self.aws.architecture, missing)
        spot = self.spot_prices(sorted(shapes))
        types = [
            InstanceType(
                name=n,
                vcpus=shapes[n][0],
                memory_gib=shapes[n][1],
                price_per_hour=table[n],
                spot_price_per_hour=spot.get(n),
            )
            for n in shapes
        ]
        return Catalog(tuple(sort_types(types)))

    def spot_prices(self, names: list[str]) -> dict[str, float]:
        """Current spot price per type (DescribeSpotPriceHistory from now): in the
        subnet's availability zone when a subnet is configured, else the lowest of any."""
        az = self.account.network()["az"] if self.aws.subnet_id else None
        latest: dict[tuple[str, str], tuple[datetime, float]] = {}
        for chunk in chunks(names):
            params: dict[str, Any] = {
                "InstanceTypes": chunk,
                "ProductDescriptions": SPOT_PRODUCTS,
                "StartTime": datetime.now(UTC),
            }
            if az:
                params["AvailabilityZone"] = az
            for h in self.account.adaptor.pages(
                "ec2", "describe_spot_price_history", "SpotPriceHistory", **params
            ):
                k = (h["InstanceType"], h["AvailabilityZone"])
                ts, price = h["Timestamp"], float(h["SpotPrice"])
                if k not in latest or ts > latest[k][0]:
                    latest[k] = (ts, price)
        out: dict[str, float] = {}
        for (name, _), (_, price) in latest.items():
            out[name] = min(price, out.get(name, price))
        return out

    def type_of(self, name: str) -> InstanceType:
        """The catalog's type, or (an instance launched before the allow/deny lists
        changed) its shape from DescribeInstanceTypes."""
        try:
            return self.get().get(name)
        except NotFoundError:
            t = self.account.ec2("describe_instance_types", InstanceTypes=[name])["InstanceTypes"][
                0
            ]
            return InstanceType(
                name,
                float(t["VCpuInfo"]["DefaultVCpus"]),
                float(t["MemoryInfo"]["SizeInMiB"]) / 1024,
                self.prices.regions.get(self.account.region, {}).get(name, 0.0),
            )
