"""Security groups of the local provider: one nftables table in the instance's netns.

The table ``inet outgrow_sg`` lives inside the instance's network namespace, so it goes
away with the namespace. It is (re)written in one ``nft -f`` transaction ("add table;
delete table; table {...}"), so a change is atomic: packets see the old rules or the new
ones, never none. The policy is the one of :mod:`outgrow.domain.security`:

* ``input`` (filter, priority 0, policy drop): loopback; ``ct state established,related``;
  the gateway (control plane) to the agent and every published host/job port; the pool
  (other instances) to the agent and the CRIU page-server range; each ``allow_cidr`` to
  each published pair. Allow rules for published pairs match on the conntrack *original*
  destination port, so ``9100:9000`` admits 9100 (redirected to 9000) without opening 9000
  itself.
* ``prerouting`` (nat, priority -100), only when a host port differs from its job port:
  ``tcp dport HOST redirect to :JOB``.

The agent's checkpoint lock (``table inet og-move-<id>``, input priority -5, policy accept)
runs before our input chain and only drops more; an accept there does not bypass ours
(every base chain of a hook must accept), and our accepts cannot undo its drops. The job
is not touched: no outbound rules.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess

from outgrow.domain.security import DEFAULT_AGENT_PORT, PAGE_SERVER_PORTS, SecurityGroup
from outgrow.errors import ProviderError

log = logging.getLogger(__name__)

TABLE = "outgrow_sg"
NFT_TIMEOUT = 15.0


def ruleset(
    sg: SecurityGroup,
    *,
    gateway: str,
    pool: str,
    agent_port: int = DEFAULT_AGENT_PORT,
    page_server_ports: tuple[int, int] = PAGE_SERVER_PORTS,
) -> str:
    """The nft script (one transaction) that replaces the table with ``sg``'s rules."""
    sg.check_reserved(agent_port, page_server_ports)
    lo, hi = page_server_ports
    control = ", ".join(str(p) for p in sg.gateway_ports(agent_port))
    comment = _quote(f"outgrow security group of job {sg.job_id}")
    lines = [
        f"add table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        f"  comment {comment}",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        '    iifname "lo" accept comment "loopback"',
        '    ct state established,related accept comment "replies"',
        f"    ip saddr {gateway} tcp dport {{ {control} }} accept"
        ' comment "control plane: agent API and published ports"',
        f"    ip saddr {pool} tcp dport {{ {agent_port}, {lo}-{hi} }} accept"
        ' comment "instances: agent API and CRIU page server"',
    ]
    v4 = [c for c in sg.allow_cidrs if ipaddress.ip_network(c).version == 4]
    v6 = [c for c in sg.allow_cidrs if ipaddress.ip_network(c).version == 6]
    for family, cidrs in (("ip", v4), ("ip6", v6)):
        if not cidrs:
            continue
        sources = "{ " + ", ".join(cidrs) + " }"
        for host, job in sg.publish:
            # One rule per pair: nft 1.0.6 lists anonymous sets of `ct original proto-dst`
            # as "[invalid type]", so single values keep `nft list` readable.
            lines.append(
                f"    {family} saddr {sources} tcp dport {job}"
                f" ct original proto-dst {host} accept"
                f' comment "published {host}:{job}"'
            )
    lines.append("  }")
    if sg.redirects:
        lines += [
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            *(
                f'    tcp dport {host} redirect to :{job} comment "publish {host}:{job}"'
                for host, job in sg.redirects
            ),
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply(
    netns_path: str,
    sg: SecurityGroup,
    *,
    gateway: str,
    pool: str,
    agent_port: int = DEFAULT_AGENT_PORT,
    page_server_ports: tuple[int, int] = PAGE_SERVER_PORTS,
) -> None:
    """Create or atomically replace the security group table in the netns."""
    script = ruleset(
        sg, gateway=gateway, pool=pool, agent_port=agent_port, page_server_ports=page_server_ports
    )
    _nft(netns_path, ["-f", "-"], script, what="cannot apply the security group")


def remove(netns_path: str) -> None:
    """Drop the table (the instance is open again); idempotent."""
    _nft(
        netns_path,
        ["-f", "-"],
        f"add table inet {TABLE}\ndelete table inet {TABLE}\n",
        what="cannot remove the security group",
    )


def current(netns_path: str) -> dict[str, object] | None:
    """The table as nft reports it (``nft -j list table``), or None when there is none."""
    out = _nft(netns_path, ["-j", "list", "table", "inet", TABLE], None, what="", ok_missing=True)
    if out is None:
        return None
    data: dict[str, object] = json.loads(out)
    return data


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "").replace('"', "'") + '"'


def _nft(
    netns_path: str, args: list[str], script: str | None, *, what: str, ok_missing: bool = False
) -> str | None:
    cmd = ["nsenter", f"--net={netns_path}", "nft", *args]
    shown = " ".join(cmd)
    try:
        proc = subprocess.run(
            cmd,
            input=script if script is not None else "",
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProviderError(what, detail=f"$ {shown}\n{exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if ok_missing and "No such file or directory" in err:
            return None
        raise ProviderError(what, detail=f"$ {shown}\n{err}\n{script or ''}".strip())
    log.debug("$ %s", shown)
    return proc.stdout
