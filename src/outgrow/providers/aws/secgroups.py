"""The EC2 security groups of a cluster: one per job (``outgrow-sg-<job>``, its rules
from the job's :class:`~outgrow.domain.security.SecurityGroup` through ``groups.py``) and
a base group ``outgrow-<cluster>-base`` for instances without one.

Groups are found by name in the VPC, created on first use and their rules reconciled
(authorize what is missing, revoke what is no longer wanted) on every use, so every
instance of a job — a migration target included — gets the job's current rules. A job's
group outlives its instances and goes when the job ends (:meth:`SecurityGroups.delete`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from outgrow.domain.security import SecurityGroup
from outgrow.errors import NotFoundError, ProviderError
from outgrow.providers.aws import groups
from outgrow.providers.aws.account import Account
from outgrow.providers.aws.tags import TAG_CLUSTER, TAG_JOB, tag_spec
from outgrow.transfer.boto import error_code, retry

log = logging.getLogger("outgrow.provider.aws")


def sg_name(job_id: str) -> str:
    return f"outgrow-sg-{job_id}"


class SecurityGroups:
    def __init__(self, account: Account, *, sleep: Callable[[float], None] = time.sleep):
        self.account = account
        self.aws = account.aws
        self.sleep = sleep

    def find(self, name: str) -> dict[str, Any] | None:
        found = self.account.ec2(
            "describe_security_groups",
            Filters=[
                {"Name": "group-name", "Values": [name]},
                {"Name": "vpc-id", "Values": [self.account.network()["vpc"]]},
            ],
        )["SecurityGroups"]
        return found[0] if found else None

    def ensure(
        self, name: str, description: str, tags: dict[str, str], wanted: list[groups.Permission]
    ) -> str:
        """The group ``name`` (created when missing) with exactly the ``wanted`` rules."""
        g = self.find(name)
        if g is None:
            try:
                gid = self.account.ec2(
                    "create_security_group",
                    GroupName=name,
                    Description=description,
                    VpcId=self.account.network()["vpc"],
                    TagSpecifications=[tag_spec("security-group", tags)],
                )["GroupId"]
            except ProviderError as exc:
                if error_code(exc) != "InvalidGroup.Duplicate":
                    raise
                g = self.find(name)  # created meanwhile by another worker
                if g is None:
                    raise
            else:
                g = self.find(name) or {"GroupId": gid, "IpPermissions": []}
        gid = str(g["GroupId"])
        add, drop = groups.diff(groups.from_api(g.get("IpPermissions", [])), wanted)
        if drop:
            self.account.ec2(
                "revoke_security_group_ingress",
                GroupId=gid,
                IpPermissions=[p.to_api() for p in drop],
            )
        if add:
            self.account.ec2(
                "authorize_security_group_ingress",
                GroupId=gid,
                IpPermissions=[p.to_api() for p in add],
            )
        return gid

    def ensure_job(self, sg: SecurityGroup) -> str:
        """Create or update the job's security group ``outgrow-sg-<job>``; its id."""
        net = self.account.network()
        wanted = groups.permissions(
            sg,
            control_plane_cidr=net["control_plane_cidr"],
            vpc_cidr=net["vpc_cidr"],
            agent_port=self.aws.agent_port,
        )
        return self.ensure(
            sg_name(sg.job_id),
            f"outgrow job {sg.job_id}",
            {TAG_CLUSTER: self.aws.cluster, TAG_JOB: sg.job_id, "Name": sg_name(sg.job_id)},
            wanted,
        )

    def base(self) -> str:
        """The cluster's group for instances created without a job security group."""
        net = self.account.network()
        name = f"outgrow-{self.aws.cluster}-base"
        return self.ensure(
            name,
            f"outgrow cluster {self.aws.cluster}: instances without a job security group",
            {TAG_CLUSTER: self.aws.cluster, "Name": name},
            groups.base_permissions(
                control_plane_cidr=net["control_plane_cidr"],
                vpc_cidr=net["vpc_cidr"],
                agent_port=self.aws.agent_port,
            ),
        )

    def rules(self, job_id: str) -> list[groups.Permission]:
        g = self.find(sg_name(job_id))
        return groups.from_api(g.get("IpPermissions", [])) if g else []

    def delete(self, job_id: str, timeout: float = 300.0) -> None:
        """Delete the job's group; waits while instances that are shutting down still
        hold it (DependencyViolation). Nothing to do when there is none."""
        g = self.find(sg_name(job_id))
        if g is None:
            return
        gid = g["GroupId"]

        def delete() -> None:
            with contextlib.suppress(NotFoundError):
                self.account.ec2("delete_security_group", GroupId=gid)

        retry(
            delete,
            codes={"DependencyViolation"},
            timeout=timeout,
            what=f"deleting security group {sg_name(job_id)}",
            sleep=self.sleep,
        )

    def delete_unused(self, in_use: Collection[str]) -> list[str]:
        """Delete the cluster's groups whose id is not ``in_use``; what was removed."""
        removed = []
        for g in self.account.adaptor.pages(
            "ec2",
            "describe_security_groups",
            "SecurityGroups",
            Filters=[
                {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.aws.cluster]},
                {"Name": "vpc-id", "Values": [self.account.network()["vpc"]]},
            ],
        ):
            if g["GroupId"] in in_use:
                continue
            try:
                self.account.ec2("delete_security_group", GroupId=g["GroupId"])
                removed.append(f"security group {g['GroupName']}")
            except NotFoundError:
                pass
            except ProviderError as exc:
                if error_code(exc) != "DependencyViolation":
                    raise
                log.info("security group %s still in use, kept", g["GroupName"])
        return removed
