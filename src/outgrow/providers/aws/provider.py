"""The aws provider: instances are EC2 instances running one outgrow agent each.

Same contract as the local provider (``providers/base.py``); only how instances are made
differs. Everything outgrow creates is tagged and found again by its tags (``tags.py``),
so a restarted control plane sees the same instances (:meth:`AwsProvider.list_instances`)
and delete is idempotent. :class:`AwsProvider` is the public face; the parts live beside
it:

* ``account.py`` — settings, adaptor, region, the subnet/VPC and the AMI (resolved once);
* ``catalog.py`` — instance types with on-demand (``prices.py``) and spot prices;
* ``secgroups.py`` — the job's security group (rules from ``groups.py``) and the base one;
* ``launch.py`` — agent token, agent install, user-data (``userdata.py``), RunInstances;
* ``volumes.py`` — a job's EBS volume, moved from instance to instance;
* ``storage.py`` — checkpoints and job directories in S3 (URLs handed to the agent).

Creating an instance (:meth:`AwsProvider.create_instance`):

1. the job's security group ``outgrow-sg-<job>`` is created or reused and its rules made
   to match the job's; every instance of the job gets the same group, so the rules follow
   the job to the new instance on a migration;
2. RunInstances: the AMI (``ami_id`` or the SSM parameter), the subnet, IMDSv2 required
   (``HttpTokens=required``, hop limit 1), an encrypted gp3 root volume deleted with the
   instance, on-demand or spot (one-time, terminate on interruption) as asked, the tags on
   the instance and its volume, and the cloud-init user-data that installs the agent and
   CRIU and starts the agent with its token;
3. the agent's health is awaited (``agent_health_timeout_s``); on timeout, or when the
   instance dies while booting, it is terminated and a ProviderError says why (the
   console output's tail in the detail).

Capacity answers (InsufficientInstanceCapacity, SpotMaxPriceTooLow,
MaxSpotInstanceCountExceeded …) become CapacityError: the control plane then falls back
from spot to on-demand (vmPolicy spotFirst) and retries per retryLimit/retryInterval.

Job storage (``OUTGROW_AWS_JOB_STORAGE``): ``ebs`` — the job directory is on the job's
own EBS volume, detached from the source and attached to the target of a move
(``volumes.py``); ``s3`` — it travels as a tar in the bucket (any AZ). Either way it
outlives instances: :meth:`delete_instance` and :meth:`cleanup` never delete it,
:meth:`delete_job_storage` (the job ended) and :meth:`teardown` do. Suspend checkpoints
are kept in S3 (:meth:`checkpoint_location`). Job directories are not shared between
instances, so the provider does not declare ``Capability.SHARED_JOB_STORAGE``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from outgrow.agentapi.client import AgentClient
from outgrow.cancel import Cancel, check, pause
from outgrow.domain.images import ImageSpec
from outgrow.domain.instance_types import Catalog, InstanceType
from outgrow.domain.security import PAGE_SERVER_PORTS, SecurityGroup
from outgrow.domain.storage import JobStorage, StorageKind
from outgrow.errors import AgentError, ConfigError, NotFoundError, OutgrowError, ProviderError
from outgrow.providers.aws import groups, launch
from outgrow.providers.aws.account import Account
from outgrow.providers.aws.catalog import InstanceCatalog
from outgrow.providers.aws.images import ImageShipping
from outgrow.providers.aws.prices import PriceTable, load_price_table
from outgrow.providers.aws.secgroups import SecurityGroups, sg_name
from outgrow.providers.aws.settings import AwsSettings
from outgrow.providers.aws.tags import (
    LIVE_STATES,
    NOT_GONE,
    STATE_MAP,
    TAG_CLUSTER,
    TAG_EC2_ID,
    TAG_INSTANCE,
    TAG_JOB,
    TAG_KIND,
    tag_dict,
)
from outgrow.providers.aws.volumes import JobVolumes
from outgrow.providers.base import Capability, InstanceInfo, Provider
from outgrow.settings import Settings
from outgrow.transfer.boto import AwsAdaptor
from outgrow.transfer.s3 import CheckpointStore, delete_url, parse_url, url_of

__all__ = [
    "TAG_CLUSTER",
    "TAG_EC2_ID",
    "TAG_INSTANCE",
    "TAG_JOB",
    "TAG_KIND",
    "AwsProvider",
    "sg_name",
]

log = logging.getLogger("outgrow.provider.aws")

JOBDIR_OBJECT = "workspace"  # <prefix>/<cluster>/jobdir/<job>/workspace.tar


class AwsProvider(Provider):
    name = "aws"
    capabilities = frozenset({Capability.SPOT, Capability.SECURITY_GROUPS})
    # Boot, cloud-init (installing outgrow and CRIU) and an answering agent: minutes.
    create_estimate_s = 240.0

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
        if self.aws.job_storage == "s3" and not self.aws.s3_bucket:
            raise ConfigError(
                "OUTGROW_AWS_JOB_STORAGE=s3 keeps job directories in S3: set "
                "OUTGROW_AWS_S3_BUCKET (or use OUTGROW_AWS_JOB_STORAGE=ebs)",
                field="s3_bucket",
            )
        self.adaptor = adaptor or AwsAdaptor(
            self.aws.region,
            endpoint_url=self.aws.endpoint_url,
            profile=self.aws.profile,
            max_attempts=self.aws.max_attempts,
        )
        self.prices = prices if prices is not None else load_price_table(self.aws.price_table)
        self.sleep = sleep
        self.account = Account(self.aws, self.adaptor)
        self.catalog = InstanceCatalog(self.account, self.prices)
        self.groups = SecurityGroups(self.account, sleep=self._sleep)
        self.volumes = JobVolumes(self.account, sleep=self._sleep)
        self.tokens = launch.AgentTokens(settings.data_dir, self.aws.cluster)
        if not self.aws.s3_bucket:
            log.warning(
                "no OUTGROW_AWS_S3_BUCKET: jobs on aws cannot be suspended (checkpoints "
                "are kept in S3)"
            )
        if self.prices.stale():
            log.warning(
                "the AWS price table is %d days old (%s): refresh it (docs/aws.md)",
                self.prices.age_days(),
                self.prices.as_of,
            )

    def _sleep(self, seconds: float) -> None:
        self.sleep(seconds)  # late-bound: tests replace ``sleep`` on the object

    @classmethod
    def from_settings(cls, settings: Settings) -> AwsProvider:
        return cls(settings)

    @property
    def region(self) -> str:
        return self.account.region

    def _ec2(self, op: str, **params: Any) -> Any:
        return self.account.ec2(op, **params)

    # ---- account resources, instance types --------------------------------------------
    def network(self) -> dict[str, str]:
        """subnet, vpc, az, subnet_cidr, vpc_cidr, control_plane_cidr (resolved once)."""
        return self.account.network()

    def image(self) -> tuple[str, str]:
        """(AMI id, root device name)."""
        return self.account.image()

    def instance_types(self) -> Catalog:
        return self.catalog.get()

    def spot_prices(self, names: list[str]) -> dict[str, float]:
        return self.catalog.spot_prices(names)

    def agent_token(self, instance_id: str) -> str:
        return self.tokens.token(instance_id)

    # ---- security groups ------------------------------------------------------------
    def ensure_security_group(self, sg: SecurityGroup) -> str:
        """Create or update the job's security group ``outgrow-sg-<job>``; its id."""
        return self.groups.ensure_job(sg)

    def security_group_rules(self, job_id: str) -> list[groups.Permission]:
        return self.groups.rules(job_id)

    def update_security_group(self, instance_id: str, sg: SecurityGroup | None) -> None:
        """Give the instance ``sg``'s group (rules updated first); None: the base group."""
        raw = self._find(instance_id, NOT_GONE)
        if raw is None:
            raise NotFoundError(f"no instance {instance_id}", field="instance")
        if sg is not None:
            sg.check_reserved(self.aws.agent_port, PAGE_SERVER_PORTS)
        gid = self.groups.ensure_job(sg) if sg is not None else self.groups.base()
        self._ec2("modify_instance_attribute", InstanceId=raw["InstanceId"], Groups=[gid])

    def delete_security_group(self, job_id: str, timeout: float = 300.0) -> None:
        """Delete the job's security group (when the job ended); waits while instances
        that are shutting down still hold it. Nothing to do when there is none."""
        self.groups.delete(job_id, timeout)

    # ---- OCI images (providers/aws/images.py) -----------------------------------------
    def _shipping(self) -> ImageShipping | None:
        return ImageShipping(self._store(), self.oci_cache()) if self.aws.s3_bucket else None

    def prepare_image(
        self,
        spec: ImageSpec,
        progress: Callable[[str], None] | None = None,
        cancel: Cancel | None = None,
    ) -> None:
        """An OCI image goes to S3 for the instance to fetch (a venv image is built by the
        agent on its instance)."""
        check(cancel, "preparing the image")
        shipping = self._shipping()
        if spec.oci is not None and shipping is not None:
            shipping.ship(spec.oci.digest, progress)

    def image_archive_url(self, digest: str) -> str | None:
        shipping = self._shipping()
        return shipping.url(digest) if shipping is not None else None

    def image_locations(self, digest: str) -> list[str]:
        shipping = self._shipping()
        found = super().image_locations(digest)
        if shipping is not None and shipping.shipped(digest):
            found.append(shipping.url(digest))
        return found

    def remove_image(self, digest: str) -> None:
        super().remove_image(digest)
        shipping = self._shipping()
        if shipping is not None:
            shipping.delete(digest)

    # ---- job storage ------------------------------------------------------------------
    def _store(self) -> CheckpointStore:
        if not self.aws.s3_bucket:
            raise ConfigError(
                "suspend on aws needs OUTGROW_AWS_S3_BUCKET (checkpoints are kept in S3)",
                field="s3_bucket",
            )
        return CheckpointStore(
            self.adaptor, self.aws.s3_bucket, prefix=self.aws.s3_prefix, cluster=self.aws.cluster
        )

    def jobdir_url(self, job_id: str) -> str:
        """``s3://bucket/<prefix>/<cluster>/jobdir/<job>/workspace.tar`` (s3 job storage)."""
        store = self._store()
        return url_of(store.bucket, store.key("jobdir", job_id, JOBDIR_OBJECT))

    def _ec2_id(self, instance: InstanceInfo, states: Collection[str]) -> str | None:
        known = instance.tags.get(TAG_EC2_ID)
        raw = self._find(known or instance.id, states)
        return str(raw["InstanceId"]) if raw else None

    def attach_job_storage(self, job_id: str, instance: InstanceInfo) -> JobStorage:
        """ebs: the job's volume (created on first use) attached to ``instance``;
        s3: the URL of the job directory's tar. Idempotent."""
        if self.aws.job_storage == "s3":
            return JobStorage(StorageKind.S3, url=self.jobdir_url(job_id))
        ec2_id = self._ec2_id(instance, LIVE_STATES)
        if ec2_id is None:
            raise ProviderError(
                f"instance {instance.id} is gone: cannot attach the volume of job {job_id}"
            )
        vid = self.volumes.attach(job_id, ec2_id)
        return JobStorage(StorageKind.VOLUME, device=f"ebs:{vid}")

    def detach_job_storage(self, job_id: str, instance: InstanceInfo) -> None:
        """ebs: detach the job's volume from ``instance`` (its agent unmounted it) and
        wait until it is available; idempotent. s3: nothing (the agent uploaded it)."""
        if self.aws.job_storage == "s3":
            return
        ec2_id = instance.tags.get(TAG_EC2_ID) or self._ec2_id(instance, (*NOT_GONE, "terminated"))
        if ec2_id is not None:
            self.volumes.detach(job_id, ec2_id)

    def delete_job_storage(self, job_id: str) -> None:
        """The job ended: delete its volumes (whatever the mode: a mode switch leaves
        none behind) and, with a bucket, its job-directory object; idempotent."""
        self.volumes.delete(job_id)
        if self.aws.s3_bucket:
            delete_url(self.jobdir_url(job_id), self.adaptor)

    def checkpoint_location(self, job_id: str, checkpoint_id: str) -> str:
        """Suspend checkpoints and snapshots, in S3 (the instance goes away):
        ``s3://bucket/<prefix>/<cluster>/suspend/<job>/<checkpoint>.tar``."""
        store = self._store()
        return url_of(store.bucket, store.key("suspend", job_id, checkpoint_id))

    def transfer_url(self, job_id: str, checkpoint_id: str) -> str | None:
        """``s3://bucket/<prefix>/<cluster>/transfer/<job>/<checkpoint>.tar`` when a bucket
        is configured (the lifecycle rule expires leftovers after a day), else None."""
        if not self.aws.s3_bucket:
            return None
        store = self._store()
        return url_of(store.bucket, store.key("transfer", job_id, checkpoint_id))

    def delete_checkpoint(self, url: str) -> None:
        """Delete a suspend or transfer checkpoint (and its manifest); idempotent. Only
        URLs ``checkpoint_location``/``transfer_url`` make (``…/suspend|transfer/<job>/<id>.tar``)
        are accepted."""
        _, key = parse_url(url)
        kinds = ("/suspend/", "/transfer/")
        if not any(k in f"/{key}" for k in kinds) or not key.endswith(".tar"):
            raise ProviderError(f"{url} is not a suspend checkpoint of outgrow: not deleted")
        delete_url(url, self.adaptor)

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

    def _info(self, raw: dict[str, Any]) -> InstanceInfo:
        tags = tag_dict(raw)
        iid = tags.get(TAG_INSTANCE, raw["InstanceId"])
        if self.aws.agent_address == "public":
            address = raw.get("PublicIpAddress") or ""
        else:
            address = raw.get("PrivateIpAddress") or ""
        launched = raw.get("LaunchTime")
        return InstanceInfo(
            id=iid,
            provider=self.name,
            type=self.catalog.type_of(raw["InstanceType"]),
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
        return launch.launch_request(
            self.aws,
            self.network(),
            self.image(),
            iid,
            itype,
            spot=spot,
            tags=tags,
            group_id=group_id,
            user_data=user_data,
        )

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
        cancel: Cancel | None = None,
    ) -> InstanceInfo:
        """Launch (or, given the ``instance_id`` of an earlier attempt, find again) an
        instance and wait for its agent. ``wait_for_agent=False`` returns right after
        RunInstances (tests; callers that wait themselves). A set ``cancel`` terminates
        the instance and raises CancelledError (its security group is the job's: it goes
        when the job ends)."""
        itype = self.instance_types().get(type_name)
        if security_group is not None:
            security_group.check_reserved(self.aws.agent_port, PAGE_SERVER_PORTS)
        # settings errors before anything is created
        install = launch.agent_install(self.aws, self.adaptor)
        if instance_id is not None:
            existing = self._find(instance_id)
            if existing is not None:
                info = self._info(existing)
                if wait_for_agent:
                    self.wait_for_agent(info, agent_timeout_s, cancel=cancel)
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
            self.groups.ensure_job(security_group)
            if security_group is not None
            else self.groups.base()
        )
        user_data = launch.user_data(
            self.settings,
            self.aws,
            region=self.region,
            instance_id=iid,
            token=self.agent_token(iid),
            install=install,
            security_group=security_group,
            spot=spot,
        )
        req = self.launch_request(
            iid, itype, spot=spot, tags=all_tags, group_id=group_id, user_data=user_data
        )
        check(cancel, "launching an instance")
        raw = self._ec2("run_instances", **req)["Instances"][0]
        log.info(
            "launched %s %s (%s, %s)",
            iid,
            raw["InstanceId"],
            itype.name,
            "spot" if spot else "on-demand",
        )
        try:
            raw = self._await_visible(iid, raw, cancel=cancel)
            info = self._info(raw)
            if wait_for_agent:
                self.wait_for_agent(info, agent_timeout_s, cancel=cancel)
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
        self,
        iid: str,
        launched: dict[str, Any],
        timeout: float = 60.0,
        cancel: Cancel | None = None,
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
            self._pause(delay, cancel, f"waiting for instance {iid} to show")
            delay = min(delay * 2, 5.0)

    def _pause(self, seconds: float, cancel: Cancel | None, what: str) -> None:
        if cancel is None:
            self.sleep(seconds)
        else:  # the cancel cuts the wait short (tests' no-op ``sleep`` does not apply)
            pause(cancel, seconds, what)

    def wait_for_agent(
        self, info: InstanceInfo, timeout: float | None = None, cancel: Cancel | None = None
    ) -> None:
        """Wait until the instance's agent answers /v1/health; ProviderError (with the
        console output's tail as detail) on timeout or when the instance goes away;
        CancelledError as soon as ``cancel`` is set."""
        timeout = self.aws.agent_health_timeout_s if timeout is None else timeout
        ec2_id = info.tags.get(TAG_EC2_ID, info.id)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        next_state_check = 0.0
        what = f"waiting for the agent of instance {info.id}"
        with AgentClient(info.agent_url, info.agent_token) as c:
            while True:
                check(cancel, what)
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
                self._pause(min(2.0, max(0.0, deadline - time.monotonic())), cancel, what)
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
        the volumes tagged with it that are left detached — never a job's volume, which
        EC2 detaches (``DeleteOnTermination`` false) and which moves on with the job."""
        raw = self._find(instance_id, NOT_GONE)
        if raw is not None and raw["State"]["Name"] != "shutting-down":
            with contextlib.suppress(NotFoundError):
                self._ec2("terminate_instances", InstanceIds=[raw["InstanceId"]])
            log.info("terminated %s (%s)", instance_id, raw["InstanceId"])
        iid = instance_id
        if raw is not None:
            iid = tag_dict(raw).get(TAG_INSTANCE, iid)
        self.volumes.delete_instance_volumes([{"Name": f"tag:{TAG_INSTANCE}", "Values": [iid]}])

    def wait_terminated(self, instance_ids: Collection[str] = (), timeout: float = 600.0) -> None:
        """Until none of ``instance_ids`` (default: the cluster's) is shutting down."""
        deadline = time.monotonic() + timeout
        delay = 1.0
        while True:
            left = [
                r
                for r in self._raw(states=NOT_GONE)
                if not instance_ids
                or tag_dict(r).get(TAG_INSTANCE) in instance_ids
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
        """Terminate the cluster's instances not in ``keep``; delete their detached
        volumes and the security groups no instance uses any more. Job volumes stay:
        they belong to jobs, not instances (:meth:`delete_job_storage`, :meth:`teardown`)."""
        removed = super().cleanup(keep)
        removed += [f"volume {v}" for v in self.volumes.delete_instance_volumes([])]
        in_use = {
            g["GroupId"] for r in self._raw(states=NOT_GONE) for g in r.get("SecurityGroups", [])
        }
        removed += self.groups.delete_unused(in_use)
        return removed

    def teardown(self, timeout: float = 600.0) -> list[str]:
        """Everything of this cluster: instances (waited until terminated), volumes —
        the jobs' volumes too —, security groups (tests and ``outgrow cleanup --all``)."""
        removed = [r for r in super().cleanup() if r]
        self.wait_terminated(timeout=timeout)
        removed += self.cleanup()
        removed += [f"job volume {v}" for v in self.volumes.delete_all()]
        return removed
