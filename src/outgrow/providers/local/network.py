"""Host networking of the local provider: one network namespace per instance.

Every instance is a network namespace ``<prefix>-<id>`` (a file under ``/run/netns``) whose
``eth0`` is one end of a veth pair; the host end ``<prefix><id>`` is enslaved to the bridge
``<prefix>-br0``, which holds the first address of the pool. The host (control plane) reaches
every instance through the bridge's connected route, and instances reach each other at layer 2
on the bridge: no NAT, no forwarding, no host sysctl is touched.

Instance addresses are allocated host-wide, in ``<run_dir>/<prefix>/network.json`` guarded
by ``fcntl.flock`` (``hoststate.py``): every process creating instances of the prefix —
several control planes with their own data dirs, the CLI, tests — shares one table, and each
entry names its *owner* (the data dir of the control plane that made it). Everything this
module creates is named with the resource prefix, so leftovers can be found again; a
sweep (``cleanup``) removes only its owner's instances and those nobody owns (no entry, or
the owner's data dir is gone), never another control plane's.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import secrets
import subprocess
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path
from typing import Any

from outgrow.errors import ConfigError, ProviderError, ValidationError
from outgrow.providers.local.hoststate import RUN_DIR, Pools, locked, read_json, write_json

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
IP_TIMEOUT = 15.0
_INSTANCE_ID = re.compile(r"[0-9a-f]{8}")
_PREFIX = re.compile(r"[a-z0-9]{2,5}")
# stderr fragments of `ip` meaning "the thing to delete is already gone"
_MISSING = ("Cannot find device", "does not exist", "No such file or directory")


@dataclass(frozen=True)
class NetnsInfo:
    instance_id: str  # 8 lowercase hex chars, e.g. "3f9a2c1d"
    name: str  # f"{prefix}-{instance_id}", also the netns name under /run/netns
    path: str  # "/run/netns/<name>"
    address: IPv4Address
    prefix_len: int
    gateway: IPv4Address  # the bridge address
    host_veth: str  # f"{prefix}{instance_id}"
    inode: int  # st_ino of the netns file (CRIU's --external net[<inode>])


def _owner(entry: dict[str, Any] | None) -> str | None:
    """The owner of an allocation entry; None when there is none, or when its data dir is
    gone (that control plane and its records are gone for good: a leftover)."""
    owner = (entry or {}).get("owner")
    if owner is None or not Path(str(owner)).exists():
        return None
    return str(owner)


def mac_for(address: IPv4Address) -> str:
    """A locally administered unicast MAC that encodes the IPv4 address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


def new_instance_id() -> str:
    """A fresh random instance id (8 lowercase hex characters)."""
    return secrets.token_hex(4)


def validate_instance_id(instance_id: str) -> str:
    if not isinstance(instance_id, str) or not _INSTANCE_ID.fullmatch(instance_id):
        raise ValidationError(
            f"invalid instance id {instance_id!r}: must be 8 lowercase hex characters",
            field="instance_id",
        )
    return instance_id


def netns_fd(path: str | os.PathLike[str]) -> int:
    """Open a netns file read-only, e.g. to hand it to CRIU with ``--inherit-fd``.

    The caller owns the descriptor (close it; pass it with ``pass_fds=``).
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ProviderError(
            "cannot open the instance network namespace", detail=f"open({path}): {exc}"
        ) from exc


def run_in_netns_argv(netns_path: str) -> list[str]:
    """Argv prefix running a command in an instance's netns (network namespace only).

    Not ``ip netns exec``: that also unshares a mount namespace, which breaks CRIU.
    """
    return ["nsenter", f"--net={netns_path}"]


def _drop_host_sockets(dst: str) -> None:
    """Close the host's TCP sockets to ``dst`` (an address or the pool) at once.

    A connection whose peer vanished with its namespace lingers half-closed (LAST-ACK,
    FIN-WAIT) and the kernel retransmits its FIN for minutes; once the bridge is gone
    those retransmissions follow the default route off this machine. Best effort:
    ``ss -K`` needs CONFIG_INET_DIAG_DESTROY (present on Debian's kernels).
    """
    try:
        proc = subprocess.run(
            ["ss", "-K", "-tan", "dst", dst], capture_output=True, text=True,
            timeout=IP_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not close the host's sockets to %s: %s", dst, exc)
        return
    if proc.returncode != 0:
        log.warning("could not close the host's sockets to %s: %s", dst, proc.stderr.strip())


def _ip(*args: str, what: str, ok_missing: bool = False, timeout: float = IP_TIMEOUT) -> str | None:
    """Run ``ip ARGS``; return stdout, or None if ``ok_missing`` and the object is gone.

    Raises ProviderError(what, detail=command + stderr) on any failure.
    """
    cmd = ["ip", *args]
    shown = " ".join(cmd)
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProviderError(what, detail=f"$ {shown}\ntimed out after {timeout:g}s") from exc
    except OSError as exc:
        raise ProviderError(what, detail=f"$ {shown}\n{exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if ok_missing and any(m in err for m in _MISSING):
            return None
        raise ProviderError(what, detail=f"$ {shown}\nexit {proc.returncode}: {err}")
    log.debug("$ %s", shown)
    return proc.stdout


def _ip_json(*args: str, what: str, ok_missing: bool = False) -> list[dict[str, Any]] | None:
    out = _ip("-json", *args, what=what, ok_missing=ok_missing)
    if out is None:
        return None
    if not out.strip():
        return []
    try:
        data = json.loads(out)
    except ValueError as exc:
        raise ProviderError(
            what, detail=f"$ ip -json {' '.join(args)}\nbad JSON: {out[:500]}"
        ) from exc
    if not isinstance(data, list):
        raise ProviderError(what, detail=f"$ ip -json {' '.join(args)}\nunexpected: {out[:500]}")
    return data


class HostNetwork:
    """The bridge, the instance namespaces and the address pool of one resource prefix, as
    one owner (a control plane's data dir) sees them."""

    def __init__(self, prefix: str, pool: str, owner: str, run_dir: Path = RUN_DIR):
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigError(
                f"invalid resource prefix {prefix!r}: must be 2-5 lowercase letters or digits",
                field="resource_prefix",
            )
        try:
            net = ip_network(pool, strict=True)
        except ValueError as exc:
            raise ConfigError(
                f"invalid address pool {pool!r}: {exc}", field="address_pool"
            ) from exc
        if not isinstance(net, IPv4Network) or net.prefixlen > 30:
            raise ConfigError(
                f"invalid address pool {pool!r}: must be an IPv4 network of at least 4 addresses",
                field="address_pool",
            )
        self.prefix = prefix
        self.pool = net
        self.owner = owner
        self.state_dir = Path(run_dir) / prefix
        self.pools = Pools(Path(run_dir))
        self.bridge_name = f"{prefix}-br0"
        self.gateway: IPv4Address = net.network_address + 1
        self._alloc_file = self.state_dir / "network.json"
        self._lock_file = self.state_dir / "network.lock"
        self._netns_re = re.compile(rf"{re.escape(prefix)}-([0-9a-f]{{8}})")
        self._veth_re = re.compile(rf"{re.escape(prefix)}([0-9a-f]{{8}})")

    # -- names ---------------------------------------------------------------------------------

    def netns_name(self, instance_id: str) -> str:
        return f"{self.prefix}-{instance_id}"

    def netns_path(self, instance_id: str) -> Path:
        return NETNS_DIR / self.netns_name(instance_id)

    def veth_name(self, instance_id: str) -> str:
        return f"{self.prefix}{instance_id}"

    # -- bridge --------------------------------------------------------------------------------

    def ensure_bridge(self) -> None:
        """Create the bridge, give it the gateway address and bring it up (idempotent)."""
        br = self.bridge_name
        self.pools.claim(self.prefix, self.pool)  # no other prefix may overlap it
        links = _ip_json(
            "-d", "link", "show", "dev", br, what="cannot inspect the bridge", ok_missing=True
        )
        if not links:
            self._check_pool_unused()
            try:
                _ip("link", "add", br, "type", "bridge", what="cannot create the bridge")
            except ProviderError as exc:
                if "File exists" not in (exc.detail or ""):  # another process was quicker
                    raise
            links = _ip_json("-d", "link", "show", "dev", br, what="cannot inspect the bridge")
        kind = ((links or [{}])[0].get("linkinfo") or {}).get("info_kind")
        if kind != "bridge":
            raise ProviderError(
                f"link {br} exists but is not a bridge",
                detail=f"$ ip -d link show dev {br}\ninfo_kind={kind}",
            )
        cidr = f"{self.gateway}/{self.pool.prefixlen}"
        addrs = _ip_json("-4", "addr", "show", "dev", br, what="cannot inspect the bridge") or []
        have = {
            f"{a.get('local')}/{a.get('prefixlen')}"
            for link in addrs
            for a in link.get("addr_info", [])
        }
        if cidr not in have:
            self._check_pool_unused()
            _ip("addr", "replace", cidr, "dev", br, what="cannot assign the bridge address")
        if "UP" not in (links or [{}])[0].get("flags", []):
            _ip("link", "set", "dev", br, "up", what="cannot bring the bridge up")

    def _check_pool_unused(self) -> None:
        """Refuse a pool that overlaps a route of another interface (it would be unreachable)."""
        routes = (
            _ip_json("-4", "route", "show", "table", "main", what="cannot read host routes") or []
        )
        for route in routes:
            dst, dev = route.get("dst"), route.get("dev")
            if not dst or dst == "default" or dev == self.bridge_name:
                continue
            try:
                other = ip_network(dst, strict=False)
            except ValueError:
                continue
            if other.overlaps(self.pool):
                raise ProviderError(
                    f"address pool {self.pool} overlaps the host route {dst} on {dev}",
                    detail=json.dumps(route),
                )

    def teardown(self) -> None:
        """Remove this owner's instances (and unowned leftovers), then the bridge and the
        prefix's host-wide state — unless another owner still has instances on it."""
        self.cleanup()
        with self._locked():
            others = sorted(
                {
                    str(e.get("owner"))
                    for iid, e in self._entries().items()
                    if e.get("owner") != self.owner and self.netns_path(iid).exists()
                }
            )
            if others:
                log.info("bridge %s kept: instances of %s use it", self.bridge_name, others)
                return
            _drop_host_sockets(str(self.pool))
            _ip(
                "link", "del", "dev", self.bridge_name,
                what="cannot delete the bridge", ok_missing=True,
            )  # fmt: skip
            self.pools.release(self.prefix)
            for path in (self._alloc_file, self._lock_file):
                path.unlink(missing_ok=True)  # waiters on the lock notice (hoststate.locked)
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()

    # -- instances -----------------------------------------------------------------------------

    def create(self, instance_id: str) -> NetnsInfo:
        """Create the instance's netns, veth pair and address. All or nothing."""
        validate_instance_id(instance_id)
        name = self.netns_name(instance_id)
        path = self.netns_path(instance_id)
        veth = self.veth_name(instance_id)
        undo: list[str] = []
        try:
            with self._locked():  # the bridge too: a teardown may not remove it meanwhile
                self.ensure_bridge()
                if path.exists():
                    raise ProviderError(
                        f"network of instance {instance_id} already exists",
                        detail=f"{path} exists",
                    )
                address = self._allocate_locked(instance_id)
                undo.append("release")
                # Under the lock: an allocation whose netns exists is never taken as stale.
                _ip("netns", "add", name, what="cannot create the instance network namespace")
                undo.append("netns")
            cidr = f"{address}/{self.pool.prefixlen}"
            # The MAC is derived from the address (as Docker does): an address reused by a
            # new instance keeps its MAC, so peers' cached ARP entries stay right. A fresh
            # random MAC left other instances sending to the dead one for ~70 s (measured).
            _ip(
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name,
                "address", mac_for(address),
                what="cannot create the instance network interface",
            )  # fmt: skip
            undo.append("veth")
            failed = "cannot configure the instance network"
            gateway = str(self.gateway)
            for args in (
                ("-n", name, "addr", "add", cidr, "dev", "eth0"),
                ("-n", name, "link", "set", "dev", "lo", "up"),
                ("-n", name, "link", "set", "dev", "eth0", "up"),
                ("-n", name, "route", "add", "default", "via", gateway, "dev", "eth0"),
                ("link", "set", "dev", veth, "master", self.bridge_name, "up"),
            ):
                _ip(*args, what=failed)
            try:
                inode = os.stat(path).st_ino
            except OSError as exc:
                raise ProviderError(failed, detail=f"stat({path}): {exc}") from exc
        except BaseException as exc:
            self._undo(instance_id, undo[::-1], exc)
            raise
        return NetnsInfo(
            instance_id=instance_id,
            name=name,
            path=str(path),
            address=address,
            prefix_len=self.pool.prefixlen,
            gateway=self.gateway,
            host_veth=veth,
            inode=inode,
        )

    def _undo(self, instance_id: str, steps: Sequence[str], cause: BaseException) -> None:
        problems: list[str] = []
        for step in steps:
            try:
                if step == "veth":
                    _ip(
                        "link",
                        "del",
                        "dev",
                        self.veth_name(instance_id),
                        what="undo",
                        ok_missing=True,
                    )
                elif step == "netns":
                    _ip("netns", "del", self.netns_name(instance_id), what="undo", ok_missing=True)
                elif step == "release":
                    self._release(instance_id)
            except Exception as exc:  # keep undoing; report below
                problems.append(f"undo {step}: {getattr(exc, 'detail', None) or exc}")
        if problems:
            log.warning("incomplete rollback of instance %s network: %s", instance_id, problems)
            if isinstance(cause, ProviderError):
                cause.detail = "\n".join([cause.detail or "", "rollback failed:", *problems])

    def get(self, instance_id: str) -> NetnsInfo | None:
        """The instance's network as found on the system and in the allocation file, or None."""
        validate_instance_id(instance_id)
        path = self.netns_path(instance_id)
        try:
            inode = os.stat(path).st_ino
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProviderError(
                "cannot inspect the instance network", detail=f"stat({path}): {exc}"
            ) from exc
        raw = self._read_allocations().get(instance_id)
        address = self._parse_address(raw) if raw else None
        if address is None:
            address = self._address_from_netns(instance_id)
        if address is None:
            return None  # half-made (being created, or a leftover for cleanup())
        return NetnsInfo(
            instance_id=instance_id,
            name=self.netns_name(instance_id),
            path=str(path),
            address=address,
            prefix_len=self.pool.prefixlen,
            gateway=self.gateway,
            host_veth=self.veth_name(instance_id),
            inode=inode,
        )

    def _address_from_netns(self, instance_id: str) -> IPv4Address | None:
        links = _ip_json(
            "-n", self.netns_name(instance_id), "-4", "addr", "show", "dev", "eth0",
            what="cannot inspect the instance network", ok_missing=True,
        )  # fmt: skip
        for link in links or []:
            for a in link.get("addr_info", []):
                address = self._parse_address(a.get("local"))
                if address is not None:
                    return address
        return None

    def list(self) -> list[NetnsInfo]:
        """Every instance network of this prefix this owner owns (sorted by instance id)."""
        out = []
        entries = self._entries()
        for instance_id in sorted(self._netns_ids()):
            if (entries.get(instance_id) or {}).get("owner") != self.owner:
                continue
            info = self.get(instance_id)
            if info is not None:
                out.append(info)
        return out

    def delete(self, instance_id: str) -> None:
        """Remove the instance's veth pair, netns and address (idempotent).

        The host veth is deleted explicitly first: ``ip netns del`` only unmounts the netns
        file, so the pair would survive while a process still runs in the namespace (and
        kernel netns teardown is asynchronous anyway).
        """
        validate_instance_id(instance_id)
        owner = self.owner_of(instance_id)
        if owner not in (None, self.owner):
            raise ProviderError(
                f"instance {instance_id} belongs to the control plane of {owner}: not deleted"
            )
        address = self._entries().get(instance_id, {}).get("address")
        _ip(
            "link", "del", "dev", self.veth_name(instance_id),
            what=f"cannot delete the network interface of instance {instance_id}", ok_missing=True,
        )  # fmt: skip
        if address:
            _drop_host_sockets(str(address))
        _ip(
            "netns", "del", self.netns_name(instance_id),
            what=f"cannot delete the network namespace of instance {instance_id}", ok_missing=True,
        )  # fmt: skip
        self._release(instance_id)

    def cleanup(self, keep: Collection[str] = ()) -> builtins.list[str]:
        """Delete the instance netns/veths/allocations of this prefix that this owner owns,
        or that nobody owns (leftovers), and whose id is not in keep; never another
        owner's. Returns the removed instance ids, sorted.

        Not safe against a concurrent create() of the same owner (it would be undone).
        Another owner's create() is safe: its allocation is written before its netns.
        """
        keep_ids = set(keep)
        # Links first, allocations second: a netns seen here has its entry by then.
        ids = self._netns_ids() | self._veth_ids()
        entries = self._entries()
        ids |= set(entries)
        removed = sorted(
            i for i in ids if i not in keep_ids and _owner(entries.get(i)) in (None, self.owner)
        )
        for instance_id in removed:
            self.delete(instance_id)
        return removed

    def owner_of(self, instance_id: str) -> str | None:
        """The data dir of the control plane owning the instance, None if nobody does."""
        return _owner(self._entries().get(instance_id))

    def _netns_ids(self) -> set[str]:
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise ProviderError(
                "cannot list network namespaces", detail=f"{NETNS_DIR}: {exc}"
            ) from exc
        return {m.group(1) for n in names if (m := self._netns_re.fullmatch(n))}

    def _veth_ids(self) -> set[str]:
        links = _ip_json("link", "show", "type", "veth", what="cannot list host links") or []
        return {
            m.group(1)
            for link in links
            if (m := self._veth_re.fullmatch(str(link.get("ifname", ""))))
        }

    # -- address allocation ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with locked(self._lock_file):
            yield

    def _entries(self) -> dict[str, dict[str, Any]]:
        """instance id -> {"address", "owner"}. Read without the lock: the file is replaced
        atomically."""
        data = read_json(self._alloc_file)
        allocs = data.get("allocations") or {}
        if not isinstance(allocs, dict):
            raise ProviderError(
                "cannot read the address allocation file",
                detail=f"{self._alloc_file}: no 'allocations' object",
            )
        return {
            str(k): v
            for k, v in allocs.items()
            if _INSTANCE_ID.fullmatch(str(k)) and isinstance(v, dict)
        }

    def _read_allocations(self) -> dict[str, str]:
        """instance id -> address."""
        return {k: str(v.get("address")) for k, v in self._entries().items()}

    def _write_allocations(self, entries: dict[str, dict[str, Any]]) -> None:
        write_json(self._alloc_file, {"pool": str(self.pool), "allocations": entries})

    def _parse_address(self, raw: object) -> IPv4Address | None:
        try:
            address = IPv4Address(str(raw))
        except ValueError:
            return None
        return address if address in self.pool else None

    def _allocate_locked(self, instance_id: str) -> IPv4Address:
        """Lowest free address after the gateway, for this owner. Caller holds the lock."""
        entries = self._entries()
        entries.pop(instance_id, None)  # a stale entry of this very id (its netns is gone)
        used: set[IPv4Address] = set()
        for other, e in list(entries.items()):
            address = self._parse_address(e.get("address"))
            if address is None or not self.netns_path(other).exists():
                del entries[other]  # stale: the address is reusable
            else:
                used.add(address)
        recorded = read_json(self._alloc_file).get("pool")
        if entries and recorded and recorded != str(self.pool):
            owners = sorted({str(e.get("owner")) for e in entries.values()})
            raise ProviderError(
                f"resource prefix {self.prefix} uses address pool {recorded} on this host "
                f"(control planes of {', '.join(owners)}), not {self.pool}"
            )
        # A netns without an entry (made before allocations were host-wide) keeps its address.
        for other in self._netns_ids() - set(entries) - {instance_id}:
            address = self._address_from_netns(other)
            if address is not None:
                used.add(address)
        first = int(self.gateway) + 1
        last = int(self.pool.broadcast_address) - 1
        for n in range(first, last + 1):
            address = IPv4Address(n)
            if address not in used:
                entries[instance_id] = {"address": str(address), "owner": self.owner}
                self._write_allocations(entries)
                return address
        raise ProviderError(
            f"address pool {self.pool} is exhausted",
            detail=f"{len(used)} addresses allocated in {self._alloc_file}",
        )

    def _release(self, instance_id: str) -> None:
        with self._locked():
            entries = self._entries()
            if entries.pop(instance_id, None) is not None:
                self._write_allocations(entries)
