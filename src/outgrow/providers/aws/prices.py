"""On-demand prices: a packaged, dated table per region (``prices.yaml``).

The scheduler chooses the cheapest instance type that fits, so every offered type needs
an on-demand price; spot prices come live from DescribeSpotPriceHistory (see
``provider.py``). The AWS Pricing API is slow, paginated and only in a few regions, so
the on-demand prices are a file packaged with outgrow, with the date they were taken.
A type missing from the table for the region is not offered (logged once).

Refreshing the table (needs ``pricing:GetProducts``; the Pricing API answers in
us-east-1 for every region)::

    python -m outgrow.providers.aws.prices refresh \\
        --region us-east-1 --region eu-west-1 --region eu-central-1 \\
        --family t3 --family m5 --family m6i --family c5 --family r5 --family r6i \\
        -o src/outgrow/providers/aws/prices.yaml

or point ``OUTGROW_AWS_PRICE_TABLE`` at a file of the same shape (``as_of``, ``regions:
{region: {type: usd_per_hour}}``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from outgrow.errors import ConfigError

if TYPE_CHECKING:
    from outgrow.transfer.boto import AwsAdaptor

STALE_AFTER_DAYS = 180


@dataclass(frozen=True)
class PriceTable:
    as_of: date
    source: str
    regions: dict[str, dict[str, float]]

    def for_region(self, region: str) -> dict[str, float]:
        try:
            return self.regions[region]
        except KeyError:
            raise ConfigError(
                f"the price table ({self.source}, {self.as_of}) has no prices for region "
                f"{region!r} (has: {', '.join(sorted(self.regions))}); refresh it, see "
                "docs/aws.md",
                field="price_table",
            ) from None

    def age_days(self, today: date | None = None) -> int:
        return ((today or datetime.now(UTC).date()) - self.as_of).days

    def stale(self, today: date | None = None) -> bool:
        return self.age_days(today) > STALE_AFTER_DAYS


def parse_price_table(text: str, source: str = "price table") -> PriceTable:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("regions"), dict):
        raise ConfigError(f"{source}: expected a mapping with 'as_of' and 'regions'")
    try:
        as_of = date.fromisoformat(str(data["as_of"]))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{source}: 'as_of' must be a date (YYYY-MM-DD)") from exc
    regions: dict[str, dict[str, float]] = {}
    for region, prices in data["regions"].items():
        if not isinstance(prices, dict):
            raise ConfigError(f"{source}: regions.{region}: expected type: price")
        out: dict[str, float] = {}
        for name, price in prices.items():
            try:
                p = float(price)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{source}: regions.{region}.{name}: not a price") from exc
            if p < 0:
                raise ConfigError(f"{source}: regions.{region}.{name}: negative price")
            out[str(name)] = p
        regions[str(region)] = out
    return PriceTable(as_of, str(data.get("source", source)), regions)


def load_price_table(path: Path | None = None) -> PriceTable:
    """The user's table when configured, else the packaged one."""
    if path is None:
        text = resources.files("outgrow.providers.aws").joinpath("prices.yaml").read_text()
        return parse_price_table(text, "packaged AWS price table")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the price table {path}: {exc.strerror}") from exc
    return parse_price_table(text, str(path))


# ---- refreshing from the AWS Pricing API ----------------------------------------------


def parse_price_item(item: str | dict[str, Any]) -> tuple[str, float] | None:
    """One PriceList entry of ``pricing:GetProducts`` → (instance type, USD/h), or None
    when it is not a plain hourly on-demand price."""
    doc = json.loads(item) if isinstance(item, str) else item
    attrs = doc.get("product", {}).get("attributes", {})
    name = attrs.get("instanceType")
    if not name:
        return None
    for term in doc.get("terms", {}).get("OnDemand", {}).values():
        for dim in term.get("priceDimensions", {}).values():
            usd = dim.get("pricePerUnit", {}).get("USD")
            if dim.get("unit") in ("Hrs", "Hr") and usd is not None and float(usd) > 0:
                return str(name), float(usd)
    return None


def fetch_region(adaptor: AwsAdaptor, region: str, families: Sequence[str]) -> dict[str, float]:
    """On-demand Linux/shared/no-preinstalled-software prices of ``region`` (every type
    of ``families``, or every type when empty)."""
    filters = [
        {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
        {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
        {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
        {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
        {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
        {"Type": "TERM_MATCH", "Field": "licenseModel", "Value": "No License required"},
    ]
    out: dict[str, float] = {}
    for item in adaptor.pages(
        "pricing", "get_products", "PriceList", ServiceCode="AmazonEC2", Filters=filters
    ):
        parsed = parse_price_item(item)
        if parsed is None:
            continue
        name, price = parsed
        if families and name.split(".")[0] not in families:
            continue
        out[name] = min(price, out.get(name, price))
    return dict(sorted(out.items()))


def render_table(regions: dict[str, dict[str, float]], as_of: date, source: str) -> str:
    head = (
        "# On-demand prices (USD per hour, Linux, shared tenancy), see\n"
        "# outgrow.providers.aws.prices for how to refresh this file.\n"
    )
    body = yaml.safe_dump(
        {"as_of": as_of.isoformat(), "source": source, "currency": "USD", "regions": regions},
        sort_keys=False,
    )
    return head + body


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m outgrow.providers.aws.prices")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("refresh", help="fetch on-demand prices from the AWS Pricing API")
    r.add_argument("--region", action="append", required=True)
    r.add_argument("--family", action="append", default=[])
    r.add_argument("-o", "--output", type=Path, required=True)
    s = sub.add_parser("show", help="print the table in use")
    s.add_argument("--table", type=Path)
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.cmd == "show":
        t = load_price_table(args.table)
        print(f"as of {t.as_of} ({t.age_days()} days), {t.source}")
        for region, prices in t.regions.items():
            print(f"{region}: {len(prices)} types")
        return 0
    from outgrow.transfer.boto import AwsAdaptor

    adaptor = AwsAdaptor("us-east-1")  # the Pricing API's endpoint for every region
    regions = {reg: fetch_region(adaptor, reg, args.family) for reg in args.region}
    args.output.write_text(
        render_table(regions, datetime.now(UTC).date(), "AWS Pricing API (GetProducts)")
    )
    print(f"wrote {sum(len(v) for v in regions.values())} prices to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
