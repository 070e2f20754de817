"""The aws provider: instances are EC2 instances running one outgrow agent each.

Same contract as the local provider (``providers/base.py``); only how instances are made
differs. Everything outgrow creates carries the tags ``outgrow:cluster`` (this control
plane), ``outgrow:instance`` (outgrow's id of the instance) and, for a job's instances
and security group, ``outgrow:job`` — and is found again by those tags, so a restarted
control plane sees the same instances (:meth:`AwsProvider.list_instances`) and delete is
idempotent. The agent token is derived (HMAC-SHA256) from a key in the control plane's
data directory and the instance id, so it is never stored in AWS tags yet survives a
restart of the control plane.

Creating an instance (:meth:`AwsProvider.create_instance`):

1. the job's security group ``outgrow-sg-<job>`` is created or reused and its rules made
   to match the job's (``groups.py``); every instance of the job gets the same group, so
   the rules follow the job to the new instance on a migration;
2. RunInstances: the AMI (``ami_id`` or the SSM parameter), the subnet, IMDSv2 required
   (``HttpTokens=required``, hop limit 1), an encrypted gp3 root volume deleted with the
   instance, on-demand or spot (one-time, terminate on interruption) as asked, the tags on
   the instance and its volume, and the cloud-init user-data (``userdata.py``) that
   installs the agent and CRIU and starts the agent with its token;
3. the agent's health is awaited (``agent_health_timeout_s``); on timeout, or when the
   instance dies while booting, it is terminated and a ProviderError says why (the
   console output's tail in the detail).

Capacity answers (InsufficientInstanceCapacity, SpotMaxPriceTooLow,
MaxSpotInstanceCountExceeded …) become CapacityError: the control plane then falls back
from spot to on-demand (vmPolicy spotFirst) and retries per retryLimit/retryInterval.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from outgrow import __version__
from outgrow.agent.client import AgentClient
from outgrow.domain.instance_types import Catalog, InstanceType, sort_types
from outgrow.domain.security import PAGE_SERVER_PORTS, SecurityGroup
from outgrow.errors import (
    AgentError,
    ConfigError,
    NotFoundError,
    OutgrowError,
    ProviderError,
)
from outgrow.providers.aws import groups
from outgrow.providers.aws.adaptor import AwsAdaptor, error_code, retry
from outgrow.providers.aws.criu_script import INSTALL_CRIU_SH
from outgrow.providers.aws.prices import PriceTable, load_price_table
from outgrow.providers.aws.settings import AwsSettings
from outgrow.providers.aws.userdata import AgentInstall, UserDataSpec, render
from outgrow.providers.base import Capability, InstanceInfo, Provider
from outgrow.settings import Settings

log = logging.getLogger("outgrow.provider.aws")

TAG_CLUSTER = "outgrow:cluster"
TAG_INSTANCE = "outgrow:instance"
TAG_JOB = "outgrow:job"
TAG_EC2_ID = "ec2:instance-id"  # added to InstanceInfo.tags (not an AWS tag)
LIVE_STATES = ("pending", "running", "stopping", "stopped")
NOT_GONE = (*LIVE_STATES, "shutting-down")
STATE_MAP = {
    "pending": "running",
    "running": "running",
    "stopping": "unhealthy",
    "stopped": "unhealthy",
    "shutting-down": "gone",
    "terminated": "gone",
}
SPOT_PRODUCTS = ["Linux/UNIX (Amazon VPC)", "Linux/UNIX"]
CATALOG_TTL_S = 600.0
CHUNK = 100


def _chunks(items: list[str], n: int = CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def sg_name(job_id: str) -> str:
    return f"outgrow-sg-{job_id}"


class AwsProvider(Provider):
    name = "aws"
    capabilities = frozenset({Capability.SPOT, Capability.SECURITY_GROUPS})

    def __init__(
        self,
        settings: Settings,
        aws: AwsSettings | None = None,
        *,
        adaptor: AwsAdaptor | None = None,
        prices: PriceTable | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self.aws = aws if aws is not None else AwsSettings()
        self.adaptor = adaptor or AwsAdaptor(
            self.aws.region,
            endpoint_url=self.aws.endpoint_url,
            profile=self.aws.profile,
            max_attempts=self.aws.max_attempts,
        )
        self.prices = prices if prices is not None else load_price_table(self.aws.price_table)
        self.sleep = sleep
        self._lock = threading.RLock()
        self._catalog: Catalog | None = None
        self._catalog_at = 0.0
        self._network: dict[str, str] | None = None
        self._image: tuple[str, str] | None = None
        self._key: bytes | None = None
        if self.prices.stale():
            log.warning(
                "the AWS price table is %d days old (%s): refresh it (docs/aws.md)",
                self.prices.age_days(),
                self.prices.as_of,
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> AwsProvider:
        return cls(settings)

    @property
    def region(self) -> str:
        self.adaptor.session  # noqa: B018 - resolves the region (settings, env or config)
        assert self.adaptor.region is not None
        return self.adaptor.region

    def _ec2(self, op: str, **params: Any) -> Any:
        return self.adaptor.call("ec2", op, **params)

    # ---- instance types -------------------------------------------------------------
    def instance_types(self) -> Catalog:
        with self._lock:
            if self._catalog is None or time.monotonic() - self._catalog_at > CATALOG_TTL_S:
                self._catalog = self._build_catalog()
                self._catalog_at = time.monotonic()
            return self._catalog

    def _build_catalog(self) -> Catalog:
        table = self.prices.for_region(self.region)
        names = sorted(n for n in table if self.aws.type_allowed(n))
        if not names:
            raise ConfigError(
                f"no instance type of the price table for {self.region} passes "
                f"allow_types={self.aws.allow_types} deny_types={self.aws.deny_types}",
                field="allow_types",
            )
        shapes: dict[str, tuple[float, float]] = {}
        for chunk in _chunks(names):
            for t in self.adaptor.pages(
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
            log.info(
                "not offered in %s (or not %s): %s", self.region, self.aws.architecture, missing
            )
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
        az = self.network()["az"] if self.aws.subnet_id else None
        latest: dict[tuple[str, str], tuple[datetime, float]] = {}
        for chunk in _chunks(names):
            params: dict[str, Any] = {
                "InstanceTypes": chunk,
                "ProductDescriptions": SPOT_PRODUCTS,
                "StartTime": datetime.now(UTC),
            }
            if az:
                params["AvailabilityZone"] = az
            for h in self.adaptor.pages(
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

    # ---- account resources ----------------------------------------------------------
    def network(self) -> dict[str, str]:
        """subnet, vpc, az, vpc_cidr, control_plane_cidr (resolved once)."""
        with self._lock:
            if self._network is None:
                if not self.aws.subnet_id:
                    raise ConfigError(
                        "set OUTGROW_AWS_SUBNET_ID: the subnet instances are launched in",
                        field="subnet_id",
                    )
                sub = self._ec2("describe_subnets", SubnetIds=[self.aws.subnet_id])["Subnets"][0]
                vpc_id = self.aws.vpc_id or sub["VpcId"]
                if vpc_id != sub["VpcId"]:
                    raise ConfigError(
                        f"subnet {sub['SubnetId']} is in {sub['VpcId']}, not in {vpc_id}",
                        field="vpc_id",
                    )
                vpc = self._ec2("describe_vpcs", VpcIds=[vpc_id])["Vpcs"][0]
                self._network = {
                    "subnet": sub["SubnetId"],
                    "vpc": vpc_id,
                    "az": sub["AvailabilityZone"],
                    "subnet_cidr": sub["CidrBlock"],
                    "vpc_cidr": vpc["CidrBlock"],
                    "control_plane_cidr": self.aws.control_plane_cidr or vpc["CidrBlock"],
                }
            return self._network

    def image(self) -> tuple[str, str]:
        """(AMI id, root device name)."""
        with self._lock:
            if self._image is None:
                ami = self.aws.ami_id
                if not ami:
                    try:
                        ami = self.adaptor.call(
                            "ssm", "get_parameter", Name=self.aws.ami_ssm_parameter
                        )["Parameter"]["Value"]
                    except NotFoundError as exc:
                        raise ConfigError(
                            f"SSM parameter {self.aws.ami_ssm_parameter} not found: set "
                            "OUTGROW_AWS_AMI_ID or OUTGROW_AWS_AMI_SSM_PARAMETER",
                            field="ami_id",
                        ) from exc
                images = self._ec2("describe_images", ImageIds=[ami])["Images"]
                if not images:
                    raise ConfigError(f"AMI {ami} not found in {self.region}", field="ami_id")
                img = images[0]
                if img.get("Architecture", self.aws.architecture) != self.aws.architecture:
                    raise ConfigError(
                        f"AMI {ami} is {img.get('Architecture')}, the settings say "
                        f"{self.aws.architecture}",
                        field="architecture",
                    )
                self._image = (str(ami), str(img.get("RootDeviceName") or "/dev/xvda"))
            return self._image

    def _token_key(self) -> bytes:
        with self._lock:
            if self._key is None:
                path = self.settings.data_dir / "aws" / "agent-token.key"
                try:
                    self._key = path.read_bytes()
                except FileNotFoundError:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    key = secrets.token_bytes(32)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(key)
                    self._key = key
            return self._key

    def agent_token(self, instance_id: str) -> str:
        mac = hmac.new(
            self._token_key(), f"{self.aws.cluster}/{instance_id}".encode(), hashlib.sha256
        )
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def _agent_install(self) -> AgentInstall:
        url = self.aws.agent_wheel_url
        if url is None:
            if not self.aws.agent_package:
                # Never a bare name from a public index: it may not be this project.
                raise ConfigError(
                    "instances need outgrow itself: set OUTGROW_AWS_AGENT_WHEEL_URL (a wheel "
                    "built with `pip wheel --no-deps . -w dist`, e.g. uploaded to S3) or "
                    f"OUTGROW_AWS_AGENT_PACKAGE (e.g. outgrow=={__version__} from your "
                    "package index)",
                    field="agent_wheel_url",
                )
            return AgentInstall(requirement=self.aws.agent_package)
        if url.startswith("s3://"):
            bucket, _, key = url[5:].partition("/")
            return AgentInstall(
                wheel_url=self.adaptor.presign(bucket, key, self.aws.presign_expiry_s),
                wheel_name=key.rsplit("/", 1)[-1],
                sha256=self.aws.agent_wheel_sha256,
            )
        return AgentInstall(wheel_url=url, sha256=self.aws.agent_wheel_sha256)

    # ---- security groups ------------------------------------------------------------
    def _find_group(self, name: str) -> dict[str, Any] | None:
        found = self._ec2(
            "describe_security_groups",
            Filters=[
                {"Name": "group-name", "Values": [name]},
                {"Name": "vpc-id", "Values": [self.network()["vpc"]]},
            ],
        )["SecurityGroups"]
        return found[0] if found else None

    def _ensure_group(
        self, name: str, description: str, tags: dict[str, str], wanted: list[groups.Permission]
    ) -> str:
        g = self._find_group(name)
        if g is None:
            try:
                gid = self._ec2(
                    "create_security_group",
                    GroupName=name,
                    Description=description,
                    VpcId=self.network()["vpc"],
                    TagSpecifications=[
                        {
                            "ResourceType": "security-group",
                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                        }
                    ],
                )["GroupId"]
            except ProviderError as exc:
                if error_code(exc) != "InvalidGroup.Duplicate":
                    raise
                g = self._find_group(name)  # created meanwhile by another worker
                if g is None:
                    raise
            else:
                g = self._find_group(name) or {"GroupId": gid, "IpPermissions": []}
        gid = str(g["GroupId"])
        add, drop = groups.diff(groups.from_api(g.get("IpPermissions", [])), wanted)
        if drop:
            self._ec2(
                "revoke_security_group_ingress",
                GroupId=gid,
                IpPermissions=[p.to_api() for p in drop],
            )
        if add:
            self._ec2(
                "authorize_security_group_ingress",
                GroupId=gid,
                IpPermissions=[p.to_api() for p in add],
            )
        return gid

    def ensure_security_group(self, sg: SecurityGroup) -> str:
        """Create or update the job's security group ``outgrow-sg-<job>``; its id."""
        net = self.network()
        wanted = groups.permissions(
            sg,
            control_plane_cidr=net["control_plane_cidr"],
            vpc_cidr=net["vpc_cidr"],
            agent_port=self.aws.agent_port,
        )
        return self._ensure_group(
            sg_name(sg.job_id),
            f"outgrow job {sg.job_id}",
            {TAG_CLUSTER: self.aws.cluster, TAG_JOB: sg.job_id, "Name": sg_name(sg.job_id)},
            wanted,
        )

    def _base_group(self) -> str:
        net = self.network()
        name = f"outgrow-{self.aws.cluster}-base"
        return self._ensure_group(
            name,
            f"outgrow cluster {self.aws.cluster}: instances without a job security group",
            {TAG_CLUSTER: self.aws.cluster, "Name": name},
            groups.base_permissions(
                control_plane_cidr=net["control_plane_cidr"],
                vpc_cidr=net["vpc_cidr"],
                agent_port=self.aws.agent_port,
            ),
        )

    def security_group_rules(self, job_id: str) -> list[groups.Permission]:
        g = self._find_group(sg_name(job_id))
        return groups.from_api(g.get("IpPermissions", [])) if g else []

    def update_security_group(self, instance_id: str, sg: SecurityGroup | None) -> None:
        """Give the instance ``sg``'s group (rules updated first); None: the base group."""
        raw = self._find(instance_id, NOT_GONE)
        if raw is None:
            raise NotFoundError(f"no instance {instance_id}", field="instance")
        if sg is not None:
            sg.check_reserved(self.aws.agent_port, PAGE_SERVER_PORTS)
        gid = self.ensure_security_group(sg) if sg is not None else self._base_group()
        self._ec2("modify_instance_attribute", InstanceId=raw["InstanceId"], Groups=[gid])

    def delete_security_group(self, job_id: str, timeout: float = 300.0) -> None:
        """Delete the job's security group (when the job ended); waits while instances
        that are shutting down still hold it. Nothing to do when there is none."""
        g = self._find_group(sg_name(job_id))
        if g is None:
            return
        gid = g["GroupId"]

        def delete() -> None:
            with contextlib.suppress(NotFoundError):
                self._ec2("delete_security_group", GroupId=gid)

        retry(
            delete,
            codes={"DependencyViolation"},
            timeout=timeout,
            what=f"deleting security group {sg_name(job_id)}",
            sleep=self.sleep,
        )

    # ---- instances ------------------------------------------------------------------
    def _filters(self, *, states: Collection[str], iid: str | None = None) -> list[dict[str, Any]]:
        f = [
            {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.aws.cluster]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
        if iid is not None:
            if iid.startswith("i-"):
                f.append({"Name": "instance-id", "Values": [iid]})
            else:
                f.append({"Name": f"tag:{TAG_INSTANCE}", "Values": [iid]})
        return f

    def _raw(self, *, states: Collection[str], iid: str | None = None) -> list[dict[str, Any]]:
        out = []
        for res in self.adaptor.pages(
            "ec2",
            "describe_instances",
            "Reservations",
            Filters=self._filters(states=states, iid=iid),
        ):
            out += res.get("Instances", [])
        return sorted(out, key=lambda i: i.get("LaunchTime") or datetime.min.replace(tzinfo=UTC))

    def _find(self, iid: str, states: Collection[str] = LIVE_STATES) -> dict[str, Any] | None:
        found = self._raw(states=states, iid=iid)
        return found[-1] if found else None

    def _type(self, name: str) -> InstanceType:
        try:
            return self.instance_types().get(name)
        except NotFoundError:  # launched before the allow/deny lists changed
            t = self._ec2("describe_instance_types", InstanceTypes=[name])["InstanceTypes"][0]
            return InstanceType(
                name,
                float(t["VCpuInfo"]["DefaultVCpus"]),
                float(t["MemoryInfo"]["SizeInMiB"]) / 1024,
                self.prices.regions.get(self.region, {}).get(name, 0.0),
            )

    def _info(self, raw: dict[str, Any]) -> InstanceInfo:
        tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
        iid = tags.get(TAG_INSTANCE, raw["InstanceId"])
        if self.aws.agent_address == "public":
            address = raw.get("PublicIpAddress") or ""
        else:
            address = raw.get("PrivateIpAddress") or ""
        launched = raw.get("LaunchTime")
        return InstanceInfo(
            id=iid,
            provider=self.name,
            type=self._type(raw["InstanceType"]),
            address=address,
            agent_url=f"http://{address}:{self.aws.agent_port}",
            agent_token=self.agent_token(iid),
            spot=raw.get("InstanceLifecycle") == "spot",
            created_at=launched.timestamp() if isinstance(launched, datetime) else time.time(),
            state=STATE_MAP.get(raw["State"]["Name"], "unhealthy"),
            tags={**tags, TAG_EC2_ID: raw["InstanceId"]},
        )

    def describe_instance(self, instance_id: str) -> InstanceInfo | None:
        raw = self._find(instance_id)
        return self._info(raw) if raw else None

    def list_instances(self) -> list[InstanceInfo]:
        return [self._info(r) for r in self._raw(states=LIVE_STATES)]

    def launch_request(
        self,
        iid: str,
        itype: InstanceType,
        *,
        spot: bool,
        tags: Mapping[str, str],
        group_id: str,
        user_data: str,
    ) -> dict[str, Any]:
        """The RunInstances parameters (public for tests and ``--dry-run`` style checks)."""
        net = self.network()
        ami, root = self.image()
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        req: dict[str, Any] = {
            "ImageId": ami,
            "InstanceType": itype.name,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": user_data,
            "ClientToken": f"outgrow-{self.aws.cluster}-{iid}"[:64],
            "MetadataOptions": {
                "HttpTokens": "required",  # IMDSv2 only
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": 1,
                "InstanceMetadataTags": "disabled",
            },
            "BlockDeviceMappings": [
                {
                    "DeviceName": root,
                    "Ebs": {
                        "VolumeSize": self.aws.root_volume_gib,
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                        "Encrypted": True,
                    },
                }
            ],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
            "InstanceInitiatedShutdownBehavior": "terminate",
        }
        if self.aws.associate_public_ip:
            req["NetworkInterfaces"] = [
                {
                    "DeviceIndex": 0,
                    "SubnetId": net["subnet"],
                    "Groups": [group_id],
                    "AssociatePublicIpAddress": True,
                    "DeleteOnTermination": True,
                }
            ]
        else:
            req["SubnetId"] = net["subnet"]
            req["SecurityGroupIds"] = [group_id]
        if self.aws.key_name:
            req["KeyName"] = self.aws.key_name
        if self.aws.instance_profile:
            p = self.aws.instance_profile
            req["IamInstanceProfile"] = {"Arn": p} if p.startswith("arn:") else {"Name": p}
        if spot:
            opts: dict[str, Any] = {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            }
            if self.aws.spot_max_price:
                opts["MaxPrice"] = self.aws.spot_max_price
            req["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": opts}
        return req

    def create_instance(
        self,
        type_name: str,
        *,
        spot: bool = False,
        tags: Mapping[str, str] | None = None,
        security_group: SecurityGroup | None = None,
        instance_id: str | None = None,
        wait_for_agent: bool = True,
        agent_timeout_s: float | None = None,
    ) -> InstanceInfo:
        """Launch (or, given the ``instance_id`` of an earlier attempt, find again) an
        instance and wait for its agent. ``wait_for_agent=False`` returns right after
        RunInstances (tests; callers that wait themselves)."""
        itype = self.instance_types().get(type_name)
        if security_group is not None:
            security_group.check_reserved(self.aws.agent_port, PAGE_SERVER_PORTS)
        install = self._agent_install()  # settings errors before anything is created
        if instance_id is not None:
            existing = self._find(instance_id)
            if existing is not None:
                info = self._info(existing)
                if wait_for_agent:
                    self.wait_for_agent(info, agent_timeout_s)
                return info
        iid = instance_id or secrets.token_hex(4)
        all_tags = {
            **{k: str(v) for k, v in (tags or {}).items()},
            TAG_CLUSTER: self.aws.cluster,
            TAG_INSTANCE: iid,
            "Name": f"outgrow-{iid}",
        }
        if security_group is not None:
            all_tags.setdefault(TAG_JOB, security_group.job_id)
        group_id = (
            self.ensure_security_group(security_group)
            if security_group is not None
            else self._base_group()
        )
        user_data = render(
            UserDataSpec(
                instance_id=iid,
                cluster=self.aws.cluster,
                token=self.agent_token(iid),
                cgroup=f"{self.settings.resource_prefix}-{iid}",
                install=install,
                install_criu_sh=INSTALL_CRIU_SH,
                agent_port=self.aws.agent_port,
                memory_reserve_mib=self.aws.memory_reserve_mib,
                oom_headroom_mib=self.settings.oom_headroom_mib,
                redirects=security_group.redirects if security_group else (),
                spot=spot,
            )
        )
        req = self.launch_request(
            iid, itype, spot=spot, tags=all_tags, group_id=group_id, user_data=user_data
        )
        raw = self._ec2("run_instances", **req)["Instances"][0]
        log.info(
            "launched %s %s (%s, %s)",
            iid,
            raw["InstanceId"],
            itype.name,
            "spot" if spot else "on-demand",
        )
        try:
            raw = self._await_visible(iid, raw)
            info = self._info(raw)
            if wait_for_agent:
                self.wait_for_agent(info, agent_timeout_s)
            return info
        except BaseException as exc:
            log.error("instance %s (%s) failed: %s; terminating it", iid, raw["InstanceId"], exc)
            with contextlib.suppress(OutgrowError):
                self.delete_instance(iid)
            if isinstance(exc, OutgrowError | KeyboardInterrupt | SystemExit):
                raise
            if isinstance(exc, Exception):
                raise ProviderError(f"creating a {type_name} instance failed: {exc}") from exc
            raise

    def _await_visible(
        self, iid: str, launched: dict[str, Any], timeout: float = 60.0
    ) -> dict[str, Any]:
        """The instance as DescribeInstances sees it (EC2 is eventually consistent)."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            raw = self._find(iid, NOT_GONE)
            if raw is not None and raw.get("PrivateIpAddress"):
                return raw
            if time.monotonic() > deadline:
                return raw or launched
            self.sleep(delay)
            delay = min(delay * 2, 5.0)

    def wait_for_agent(self, info: InstanceInfo, timeout: float | None = None) -> None:
        """Wait until the instance's agent answers /v1/health; ProviderError (with the
        console output's tail as detail) on timeout or when the instance goes away."""
        timeout = self.aws.agent_health_timeout_s if timeout is None else timeout
        ec2_id = info.tags.get(TAG_EC2_ID, info.id)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        next_state_check = 0.0
        with AgentClient(info.agent_url, info.agent_token) as c:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    c.health(timeout=max(0.2, min(3.0, remaining)))
                    return
                except AgentError as exc:
                    last = exc
                if time.monotonic() >= next_state_check:
                    next_state_check = time.monotonic() + 10.0
                    raw = self._find(info.id, (*NOT_GONE, "terminated"))
                    state = raw["State"]["Name"] if raw else "terminated"
                    if state in ("shutting-down", "terminated", "stopping", "stopped"):
                        reason = (raw or {}).get("StateReason", {}).get("Message", "")
                        raise ProviderError(
                            f"instance {info.id} ({ec2_id}) is {state} before its agent "
                            f"answered{': ' + reason if reason else ''}",
                            detail=str(last),
                        )
                self.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        raise ProviderError(
            f"the agent of instance {info.id} ({ec2_id}, {info.address or 'no address'}) "
            f"did not become healthy within {timeout:g} s; check that the control plane "
            f"reaches port {self.aws.agent_port} in the VPC and the instance's console "
            "output (cloud-init log)",
            detail=f"last error: {last}\n--- console output (tail) ---\n{self._console(ec2_id)}",
        )

    def _console(self, ec2_id: str) -> str:
        try:
            out = self._ec2("get_console_output", InstanceId=ec2_id, Latest=True)
        except OutgrowError as exc:
            return f"(unavailable: {exc})"
        return str(out.get("Output") or "")[-4000:]

    def delete_instance(self, instance_id: str) -> None:
        """Terminate the instance (idempotent: nothing to do when it is gone) and delete
        the volumes tagged with it that are left detached."""
        raw = self._find(instance_id, NOT_GONE)
        if raw is not None and raw["State"]["Name"] != "shutting-down":
            with contextlib.suppress(NotFoundError):
                self._ec2("terminate_instances", InstanceIds=[raw["InstanceId"]])
            log.info("terminated %s (%s)", instance_id, raw["InstanceId"])
        iid = instance_id
        if raw is not None:
            iid = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}.get(TAG_INSTANCE, iid)
        self._delete_volumes([{"Name": f"tag:{TAG_INSTANCE}", "Values": [iid]}])

    def _delete_volumes(self, filters: list[dict[str, Any]]) -> list[str]:
        removed = []
        for v in self.adaptor.pages(
            "ec2",
            "describe_volumes",
            "Volumes",
            Filters=[
                {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.aws.cluster]},
                {"Name": "status", "Values": ["available"]},
                *filters,
            ],
        ):
            with contextlib.suppress(NotFoundError):
                self._ec2("delete_volume", VolumeId=v["VolumeId"])
                removed.append(v["VolumeId"])
        return removed

    def wait_terminated(self, instance_ids: Collection[str] = (), timeout: float = 600.0) -> None:
        """Until none of ``instance_ids`` (default: the cluster's) is shutting down."""
        deadline = time.monotonic() + timeout
        delay = 1.0
        while True:
            left = [
                r
                for r in self._raw(states=NOT_GONE)
                if not instance_ids
                or {t["Key"]: t["Value"] for t in r.get("Tags", [])}.get(TAG_INSTANCE)
                in instance_ids
                or r["InstanceId"] in instance_ids
            ]
            if not left:
                return
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"{len(left)} instance(s) still not terminated after {timeout:g} s",
                    detail=", ".join(r["InstanceId"] for r in left),
                )
            self.sleep(delay)
            delay = min(delay * 2, 15.0)

    def cleanup(self, keep: Collection[str] = ()) -> list[str]:
        """Terminate the cluster's instances not in ``keep``; delete its detached volumes
        and the security groups no instance uses any more."""
        removed = super().cleanup(keep)
        removed += [f"volume {v}" for v in self._delete_volumes([])]
        in_use = {
            g["GroupId"] for r in self._raw(states=NOT_GONE) for g in r.get("SecurityGroups", [])
        }
        for g in self.adaptor.pages(
            "ec2",
            "describe_security_groups",
            "SecurityGroups",
            Filters=[
                {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.aws.cluster]},
                {"Name": "vpc-id", "Values": [self.network()["vpc"]]},
            ],
        ):
            if g["GroupId"] in in_use:
                continue
            try:
                self._ec2("delete_security_group", GroupId=g["GroupId"])
                removed.append(f"security group {g['GroupName']}")
            except NotFoundError:
                pass
            except ProviderError as exc:
                if error_code(exc) != "DependencyViolation":
                    raise
                log.info("security group %s still in use, kept", g["GroupName"])
        return removed

    def teardown(self, timeout: float = 600.0) -> list[str]:
        """Everything of this cluster: instances (waited until terminated), volumes,
        security groups (tests and ``outgrow cleanup --all``)."""
        removed = [r for r in super().cleanup() if r]
        self.wait_terminated(timeout=timeout)
        removed += self.cleanup()
        return removed

    def as_dict(self, info: InstanceInfo) -> dict[str, object]:
        d = asdict(info)
        d.pop("agent_token")
        return d
