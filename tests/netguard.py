"""No packet of a test run leaves this machine: the egress guard and fenced ranges.

House rule: tests reach only loopback and addresses inside network namespaces they create.
While a test session runs as root, two real mechanisms enforce and check it
(``tests/conftest.py`` wires them in):

* **The egress guard.** The session's process moves into a cgroup (v2) of its own, which
  every process it starts inherits (control planes, agents, the CLI, pip), and an
  nftables table ``inet outgrow_guard_<id>`` in the host's network namespace *rejects*
  every packet a socket of that cgroup sends out of an interface that leaves the machine
  (those existing at session start other than loopback and virtual links, plus the
  default routes' ones), recording its destination in a set. Rejected in the output
  hook, the packet never leaves, and the sender gets "no route to host" at once instead of
  a hang. Allowed out: the configured DNS resolvers (port 53) and the package index pip
  is configured with (image builds install from it). After every test the sets are read:
  a new destination fails that test, naming it.
* **The route audit.** The host's routes are recorded at session start; a route a test
  adds through such an interface (anything but ``blackhole``/``unreachable``/``prohibit``)
  fails that test.

Interfaces created during the run (test bridges, veths) are not guarded: what goes there
stays on this host. Packets forwarded from instance namespaces are not attributed (the
host forwards nothing with ``net.ipv4.ip_forward=0``, which the guard reports otherwise).

:func:`fenced_range` gives a test a private range it may pretend is remote (moto's fake
VPC): an ``unreachable`` route claims it host-wide (``ip route add`` is atomic, so two
concurrent runs never share one) and makes every connection there fail at once, locally.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SAFE_ROUTE_TYPES = {"blackhole", "unreachable", "prohibit", "local", "broadcast", "anycast"}


def _run(*cmd: str, input: str | None = None) -> str:
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"$ {' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.stdout


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = _run("ip", "-j", *args)
    return json.loads(out) if out.strip() else []


def routes() -> list[dict[str, Any]]:
    """Every IPv4 and IPv6 route of the host's network namespace, all tables."""
    return _ip_json("-4", "route", "show", "table", "all") + _ip_json(
        "-6", "route", "show", "table", "all"
    )


def _route_key(r: dict[str, Any]) -> str:
    return json.dumps({k: r.get(k) for k in ("type", "dst", "gateway", "dev", "table")})


def external_interfaces() -> set[str]:
    """Interfaces through which a packet leaves the machine: every link without a virtual
    kind (bridge, veth, …) but loopback, and those of the default routes (a container's
    uplink may be a veth)."""
    out = set()
    for link in _ip_json("-d", "link", "show"):
        name = str(link.get("ifname"))
        if name != "lo" and not (link.get("linkinfo") or {}).get("info_kind"):
            out.add(name)
    out |= {str(r["dev"]) for r in routes() if r.get("dst") == "default" and r.get("dev")}
    return out


def _resolve(host: str) -> set[str]:
    try:
        return {str(ai[4][0]) for ai in socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)}
    except OSError:
        return set()


def package_index_addresses() -> set[str]:
    """Addresses of the package index pip installs from (its default and the http(s)
    indexes configured for it): image builds in tests really install packages."""
    hosts: set[str] = set()
    try:
        from pip._internal.models.index import PyPI  # pip's own default, not hard-coded

        hosts |= {PyPI.netloc, PyPI.file_storage_domain}
    except ImportError:
        pass
    urls = " ".join(os.environ.get(k, "") for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"))
    for conf in (Path("/etc/pip.conf"), Path.home() / ".config/pip/pip.conf"):
        with contextlib.suppress(OSError):
            urls += " " + conf.read_text()
    for word in urls.replace("=", " ").split():
        if word.startswith(("http://", "https://")) and urlsplit(word).hostname:
            hosts.add(str(urlsplit(word).hostname))
    return {a for h in hosts for a in _resolve(h)}


def nameservers() -> set[str]:
    out = set()
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                out.add(parts[1].split("%")[0])
    return out


def _cgroup2_mount() -> Path | None:
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def _own_cgroup2() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


def _nft_elements(addrs: set[str], version: int) -> str:
    chosen = sorted(a for a in addrs if ip_address(a).version == version)
    return f"elements = {{ {', '.join(chosen)} }}" if chosen else ""


@dataclass
class EgressGuard:
    """The guard of one test session (see the module docstring)."""

    table: str = field(default_factory=lambda: f"outgrow_guard_{secrets.token_hex(4)}")
    cgroup: Path | None = None
    home_cgroup: Path | None = None
    external: set[str] = field(default_factory=set)
    baseline_routes: set[str] = field(default_factory=set)
    reported: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def start(self) -> None:
        mount = _cgroup2_mount()
        if mount is None or not mount.is_relative_to("/sys/fs/cgroup"):
            raise RuntimeError("no cgroup2 hierarchy under /sys/fs/cgroup")
        self.external = external_interfaces()
        self.baseline_routes = {_route_key(r) for r in routes()}
        self.home_cgroup = mount / _own_cgroup2().lstrip("/")
        self.cgroup = mount / self.table.replace("_", "-")
        self.cgroup.mkdir()
        level = len(self.cgroup.relative_to(mount).parts)
        path = self.cgroup.relative_to("/sys/fs/cgroup")  # nft resolves it from there
        allowed = package_index_addresses()
        dns = nameservers()
        ifaces = ", ".join(json.dumps(i) for i in sorted(self.external))
        script = f"""
table inet {self.table} {{
  comment "outgrow test session {os.getpid()}: no packet leaves this host (tests/netguard.py)"
  set external {{ type ifname; {f"elements = {{ {ifaces} }}" if ifaces else ""} }}
  set allowed4 {{ type ipv4_addr; {_nft_elements(allowed, 4)} }}
  set allowed6 {{ type ipv6_addr; {_nft_elements(allowed, 6)} }}
  set dns4 {{ type ipv4_addr; {_nft_elements(dns, 4)} }}
  set dns6 {{ type ipv6_addr; {_nft_elements(dns, 6)} }}
  set leaks4 {{ type ipv4_addr; flags dynamic; size 4096; }}
  set leaks6 {{ type ipv6_addr; flags dynamic; size 4096; }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname != @external accept
    socket cgroupv2 level {level} "{path}" jump session
  }}
  chain session {{
    ip daddr @allowed4 accept
    ip6 daddr @allowed6 accept
    ip daddr @dns4 meta l4proto {{ tcp, udp }} th dport 53 accept
    ip6 daddr @dns6 meta l4proto {{ tcp, udp }} th dport 53 accept
    meta nfproto ipv4 add @leaks4 {{ ip daddr }} counter reject with icmpx type admin-prohibited
    meta nfproto ipv6 add @leaks6 {{ ip6 daddr }} counter reject with icmpx type admin-prohibited
  }}
}}
"""
        try:
            _run("nft", "-f", "-", input=script)
            (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))
        except BaseException:
            self.stop()
            raise
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "0":
            self.notes.append("net.ipv4.ip_forward=1: packets forwarded for instances unguarded")

    def leaks(self) -> set[str]:
        """Destinations the session tried to reach off this host so far."""
        out = set()
        for s in ("leaks4", "leaks6"):
            data = json.loads(_run("nft", "-j", "list", "set", "inet", self.table, s))
            for item in data.get("nftables", []):
                for e in (item.get("set") or {}).get("elem", []):
                    out.add(str(e.get("elem", {}).get("val") if isinstance(e, dict) else e))
        return out

    def new_routes(self) -> list[str]:
        """Routes added since the session started that send packets off this host."""
        out = []
        for r in routes():
            if r.get("type", "unicast") in SAFE_ROUTE_TYPES or r.get("dev") not in self.external:
                continue
            if _route_key(r) not in self.baseline_routes:
                out.append(_route_key(r))
        return out

    def check(self) -> str | None:
        """What broke the rule since the last check (each thing reported once), or None."""
        found = []
        fresh = self.leaks() - self.reported
        if fresh:
            found.append(f"packets to {', '.join(sorted(fresh))} (rejected before leaving)")
        routes_now = set(self.new_routes()) - self.reported
        if routes_now:
            found.append(f"routes off this host added: {', '.join(sorted(routes_now))}")
        self.reported |= fresh | routes_now
        return "; ".join(found) or None

    def stop(self) -> None:
        """Leave the cgroup (with every process still in it) and remove table and cgroup."""
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)
        if self.cgroup is None or not self.cgroup.exists():
            return
        home = self.home_cgroup or self.cgroup.parent
        with contextlib.suppress(OSError):
            for pid in (self.cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (home / "cgroup.procs").write_text(pid)
            self.cgroup.rmdir()


def _taken_v4() -> list[IPv4Network]:
    """Everything this host routes or uses in IPv4 (a fence must not cover any of it)."""
    taken: list[IPv4Network] = []
    for r in _ip_json("-4", "route", "show", "table", "all"):
        for key in ("dst", "gateway", "prefsrc"):
            v = r.get(key)
            if v and v != "default":
                with contextlib.suppress(ValueError):
                    taken.append(IPv4Network(v, strict=False))
    taken += [IPv4Network(a) for a in nameservers() if ip_address(a).version == 4]
    return taken


@contextlib.contextmanager
def fenced_range(within: str = "10.0.0.0/8", prefixlen: int = 16) -> Iterator[str]:
    """A subnet of ``within`` that nothing on this host uses, made unreachable for the
    test (``ip route add unreachable``): connections there fail at once, locally, and no
    packet leaves. Removed afterwards, even on failure. Needs root."""
    outer = ip_network(within)
    assert isinstance(outer, IPv4Network)
    candidates = list(outer.subnets(new_prefix=prefixlen))
    random.shuffle(candidates)
    taken = _taken_v4()
    for net in candidates:
        if any(net.overlaps(t) for t in taken):
            continue
        proc = subprocess.run(
            ["ip", "route", "add", "unreachable", str(net)], capture_output=True, text=True
        )
        if proc.returncode == 0:
            break
        if "File exists" not in proc.stderr:  # else another run holds it: try the next
            raise RuntimeError(f"cannot fence {net}: {proc.stderr.strip()}")
    else:
        raise RuntimeError(f"no free /{prefixlen} in {within} to fence")
    try:
        yield str(net)
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", str(net)], capture_output=True)
