"""A job's :class:`~outgrow.domain.security.SecurityGroup` as EC2 security-group rules.

EC2 security groups are stateful allow-lists with an implicit default deny inbound, so of
the domain's ordered rules (see ``domain/security.py``) the loopback, the replies and the
final deny need no rule; each remaining *allow inbound tcp* rule becomes one ingress
permission (port or port range, one CIDR, the rule's reason as description):

* the control plane (``control_plane_cidr``, default the VPC's CIDR): the agent port and
  every published host and job port (the stable-URL proxy);
* the VPC (other instances): the agent port and the CRIU page-server range (an incoming
  migration, agent → agent directly inside the VPC);
* each ``allow_cidr``: the published host ports.

A published ``HOSTPORT:JOBPORT`` pair with different ports is opened on HOSTPORT and
redirected on the instance (an nftables rule from the user-data): a security group
cannot rewrite ports. Egress stays EC2's default (everything).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from outgrow.domain.security import PAGE_SERVER_PORTS, SecurityGroup

_DESC_OK = re.compile(r"[^A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*]")


@dataclass(frozen=True, order=True)
class Permission:
    """One ingress rule: tcp ``from_port``-``to_port`` from ``cidr``."""

    from_port: int
    to_port: int
    cidr: str
    description: str = ""

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.from_port, self.to_port, self.cidr)

    def to_api(self) -> dict[str, Any]:
        rng: dict[str, str] = {"Description": self.description} if self.description else {}
        ranges = (
            {"Ipv6Ranges": [{"CidrIpv6": self.cidr, **rng}]}
            if ":" in self.cidr
            else {"IpRanges": [{"CidrIp": self.cidr, **rng}]}
        )
        return {"IpProtocol": "tcp", "FromPort": self.from_port, "ToPort": self.to_port, **ranges}


def _ports(port: int | str) -> tuple[int, int]:
    if isinstance(port, int):
        return port, port
    lo, _, hi = str(port).partition("-")
    return int(lo), int(hi or lo)


def permissions(
    sg: SecurityGroup,
    *,
    control_plane_cidr: str,
    vpc_cidr: str,
    agent_port: int,
    page_server_ports: tuple[int, int] = PAGE_SERVER_PORTS,
) -> list[Permission]:
    """The ingress permissions of ``sg`` (deduplicated, in the domain's order)."""
    sg.check_reserved(agent_port, page_server_ports)
    cp = str(ipaddress.ip_network(control_plane_cidr, strict=False))
    vpc = str(ipaddress.ip_network(vpc_cidr, strict=False))
    out: dict[tuple[int, int, str], Permission] = {}
    for rule in sg.rules(
        gateway=cp, pool=vpc, agent_port=agent_port, page_server_ports=page_server_ports
    ):
        if rule["action"] != "allow" or rule["direction"] != "inbound" or rule["proto"] != "tcp":
            continue
        port = rule["port"]
        if port is None:
            continue
        lo, hi = _ports(port)
        why = _DESC_OK.sub("", rule["why"])[:255]
        perm = Permission(lo, hi, str(ipaddress.ip_network(rule["from"], strict=False)), why)
        out.setdefault(perm.key, perm)
    return list(out.values())


def base_permissions(
    *, control_plane_cidr: str, vpc_cidr: str, agent_port: int
) -> list[Permission]:
    """Instances created without a job security group: every TCP port from the control
    plane, the agent and page-server range from the VPC."""
    lo, hi = PAGE_SERVER_PORTS
    return [
        Permission(1, 65535, control_plane_cidr, "control plane (no job security group)"),
        Permission(agent_port, agent_port, vpc_cidr, "other instances' agents (migration)"),
        Permission(lo, hi, vpc_cidr, "CRIU page server (incoming migration)"),
    ]


def from_api(ip_permissions: list[dict[str, Any]]) -> list[Permission]:
    """Ingress permissions as DescribeSecurityGroups returns them (tcp with CIDRs only)."""
    out = []
    for p in ip_permissions:
        if p.get("IpProtocol") != "tcp":
            continue
        lo, hi = int(p.get("FromPort", 0)), int(p.get("ToPort", 65535))
        for r in p.get("IpRanges", []):
            out.append(Permission(lo, hi, r["CidrIp"], r.get("Description", "")))
        for r in p.get("Ipv6Ranges", []):
            out.append(Permission(lo, hi, r["CidrIpv6"], r.get("Description", "")))
    return out


def diff(
    current: list[Permission], wanted: list[Permission]
) -> tuple[list[Permission], list[Permission]]:
    """(to authorize, to revoke), compared on port range and CIDR."""
    have = {p.key: p for p in current}
    want = {p.key: p for p in wanted}
    add = [p for k, p in want.items() if k not in have]
    drop = [p for k, p in have.items() if k not in want]
    return add, drop
