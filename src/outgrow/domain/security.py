"""Per-job security groups: which inbound connections reach a job's instance.

Pure: a :class:`SecurityGroup` is built from the job spec (``publish`` and ``allow_cidr``)
and describes itself as an ordered list of JSON-able rules for ``outgrow show`` and the
console. Providers enforce it (the local provider with an nftables table in the instance's
network namespace, see ``providers/local/firewall.py``).

The policy, in order (the first matching rule decides):

1. loopback: everything (the job talking to itself);
2. replies to connections the instance opened (established/related): everything;
3. from the control plane (the provider's gateway): the agent port and every published
   host and job port (the agent API and the stable-URL proxy);
4. from other instances (the address pool): the agent port and the CRIU page-server
   range (an incoming migration);
5. from each ``allow_cidr``: the published host ports (a ``HOSTPORT:JOBPORT`` pair with
   different ports is redirected to JOBPORT);
6. everything else inbound: denied. Outbound: unrestricted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

from outgrow.domain.images import DEFAULT_JUPYTER_PORT, JUPYTER_KINDS
from outgrow.errors import ValidationError

if TYPE_CHECKING:
    from outgrow.domain.jobs import JobSpec

DEFAULT_AGENT_PORT = 7070
# Where a target agent starts its CRIU page server (first free port), so the firewall can
# let only this range in from other instances.
PAGE_SERVER_PORTS: tuple[int, int] = (7100, 7199)
CONTROL_PLANE = "control plane"  # labels used when the addresses are not known
INSTANCES = "other instances"

_PUBLISH = re.compile(r"^\s*(\d{1,5})\s*:\s*(\d{1,5})\s*$")

# One rule as shown to users (functional form: "from" is a Python keyword). port: 8888,
# "7100-7199" or None (any port); to_port: the job port a published host port goes to.
Rule = TypedDict(
    "Rule",
    {
        "action": Literal["allow", "deny"],
        "direction": Literal["inbound", "outbound"],
        "proto": Literal["tcp", "any"],
        "port": int | str | None,
        "to_port": NotRequired[int],
        "from": str,
        "to": NotRequired[str],
        "state": NotRequired[str],
        "why": str,
    },
)


def parse_publish(item: str) -> tuple[int, int]:
    """``"HOSTPORT:JOBPORT"`` → ``(host_port, job_port)``; ValidationError otherwise."""
    m = _PUBLISH.match(str(item))
    if not m:
        raise ValidationError(f"publish {item!r} must be HOSTPORT:JOBPORT", field="publish")
    host, job = int(m.group(1)), int(m.group(2))
    if not (1 <= host <= 65535 and 1 <= job <= 65535):
        raise ValidationError(f"publish {item!r}: ports must be 1-65535", field="publish")
    return host, job


def _cidr(item: str) -> str:
    try:
        return str(ipaddress.ip_network(str(item).strip(), strict=False))
    except ValueError as exc:
        raise ValidationError(
            f"allow_cidr {item!r} is not a CIDR range", field="allow_cidr"
        ) from exc


def _unique(items: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class SecurityGroup:
    job_id: str
    publish: tuple[tuple[int, int], ...]  # (host_port, job_port)
    allow_cidrs: tuple[str, ...]
    # Job ports only the control plane reaches, e.g. Jupyter's 8888 when the spec
    # publishes other ports (the stable-URL proxy still needs it).
    control_only: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[int, int] = {}
        for host, job in self.publish:
            for p in (host, job):
                if not isinstance(p, int) or not 1 <= p <= 65535:
                    raise ValidationError(f"invalid port {p!r}", field="publish")
            if seen.setdefault(host, job) != job:
                raise ValidationError(
                    f"host port {host} is published twice ({seen[host]} and {job})",
                    field="publish",
                )
        for c in self.allow_cidrs:
            _cidr(c)
        for p in self.control_only:
            if not isinstance(p, int) or not 1 <= p <= 65535:
                raise ValidationError(f"invalid port {p!r}", field="publish")

    @classmethod
    def from_spec(
        cls, job_id: str, spec: JobSpec, default_ports: Sequence[int] = ()
    ) -> SecurityGroup:
        """The job's security group. ``default_ports`` (see :func:`default_ports`) are
        published as ``P:P`` when the spec publishes nothing; otherwise the control plane
        alone still reaches them."""
        publish = [parse_publish(p) for p in spec.publish]
        if not publish:
            publish = [(int(p), int(p)) for p in default_ports]
        jobs = {j for _, j in publish}
        return cls(
            job_id=job_id,
            publish=_unique(publish),
            allow_cidrs=_unique(_cidr(c) for c in spec.allow_cidr),
            control_only=_unique(int(p) for p in default_ports if int(p) not in jobs),
        )

    @property
    def host_ports(self) -> tuple[int, ...]:
        return _unique(h for h, _ in self.publish)

    @property
    def job_ports(self) -> tuple[int, ...]:
        return _unique(j for _, j in self.publish)

    @property
    def redirects(self) -> tuple[tuple[int, int], ...]:
        """The published pairs whose host port differs from the job port."""
        return tuple((h, j) for h, j in self.publish if h != j)

    def gateway_ports(self, agent_port: int = DEFAULT_AGENT_PORT) -> tuple[int, ...]:
        """Ports the control plane may reach: the agent, every host and job port, then
        ``control_only``."""
        return _unique([agent_port, *self.host_ports, *self.job_ports, *self.control_only])

    def check_reserved(
        self,
        agent_port: int = DEFAULT_AGENT_PORT,
        page_server_ports: tuple[int, int] = PAGE_SERVER_PORTS,
    ) -> None:
        """Refuse host ports that would hide the agent or the CRIU page server."""
        lo, hi = page_server_ports
        for host, _ in self.publish:
            if host == agent_port or lo <= host <= hi:
                raise ValidationError(
                    f"host port {host} is reserved (agent {agent_port}, page server {lo}-{hi})",
                    field="publish",
                )

    def rules(
        self,
        *,
        gateway: str | None = None,
        pool: str | None = None,
        agent_port: int = DEFAULT_AGENT_PORT,
        page_server_ports: tuple[int, int] = PAGE_SERVER_PORTS,
    ) -> list[Rule]:
        """What is allowed, in evaluation order, ending with the default deny.
        ``gateway``/``pool`` are the provider's control-plane address and instance pool
        (shown as labels when unknown)."""
        gw = f"{gateway}/32" if gateway and "/" not in gateway else (gateway or CONTROL_PLANE)
        peers = pool or INSTANCES
        replies = _rule("any", None, "any", "replies to connections the instance opened")
        replies["state"] = "established,related"
        out: list[Rule] = [
            _rule("any", None, "loopback", "the job and the agent talking to themselves"),
            replies,
            _rule("tcp", agent_port, gw, "control plane (agent API)"),
        ]
        proxied = list(self.publish)
        proxied += [
            (j, j) for j in (*self.job_ports, *self.control_only) if j not in self.host_ports
        ]
        for host, job in _unique(proxied):
            out.append(_rule("tcp", host, gw, "control plane (stable-URL proxy)", to_port=job))
        out.append(_rule("tcp", agent_port, peers, "other instances' agents (migration)"))
        lo, hi = page_server_ports
        out.append(_rule("tcp", f"{lo}-{hi}", peers, "CRIU page server (incoming migration)"))
        for cidr in self.allow_cidrs:
            for host, job in self.publish:
                out.append(_rule("tcp", host, cidr, "published (allow_cidr)", to_port=job))
        deny: Rule = {
            "action": "deny",
            "direction": "inbound",
            "proto": "any",
            "port": None,
            "from": "any",
            "why": "everything else inbound (default deny)",
        }
        outbound: Rule = {
            "action": "allow",
            "direction": "outbound",
            "proto": "any",
            "port": None,
            "from": "instance",
            "to": "any",
            "why": "outbound is unrestricted",
        }
        return [*out, deny, outbound]

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "publish": [f"{h}:{j}" for h, j in self.publish],
            "allow_cidrs": list(self.allow_cidrs),
            "control_only": list(self.control_only),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SecurityGroup:
        return cls(
            job_id=str(d["job_id"]),
            publish=tuple(parse_publish(p) for p in d.get("publish", [])),
            allow_cidrs=tuple(_cidr(c) for c in d.get("allow_cidrs", [])),
            control_only=tuple(int(p) for p in d.get("control_only", [])),
        )


def default_ports(kind: str, default_port: int | None = None) -> tuple[int, ...]:
    """Ports an image publishes when the spec has none: Jupyter kinds their server port
    (8888 unless the image says otherwise), python jobs nothing."""
    if kind in JUPYTER_KINDS:
        return (default_port or DEFAULT_JUPYTER_PORT,)
    return ()


def _rule(
    proto: Literal["tcp", "any"],
    port: int | str | None,
    source: str,
    why: str,
    *,
    to_port: int | None = None,
) -> Rule:
    r: Rule = {
        "action": "allow",
        "direction": "inbound",
        "proto": proto,
        "port": port,
        "from": source,
        "why": why,
    }
    if to_port is not None and to_port != port:
        r["to_port"] = to_port
    return r
