"""Real tests of the local provider's host networking (netns + veth + bridge). Needs root.

Every test gets its own resource prefix (``t`` + 4 hex) and its own small pool inside
198.19.0.0/16, reserved host-wide (``hoststate.Pools``: no concurrent run gets it), and
tears everything down even on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from outgrow.errors import ConfigError, ProviderError, ValidationError
from outgrow.providers.local import network
from outgrow.providers.local.hoststate import Pools
from outgrow.providers.local.network import (
    HostNetwork,
    NetnsInfo,
    netns_fd,
    new_instance_id,
    run_in_netns_argv,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: creates network namespaces, veth pairs, a bridge"
    ),
    pytest.mark.skipif(
        not (shutil.which("ip") and shutil.which("nsenter")),
        reason="needs iproute2 (ip) and util-linux (nsenter)",
    ),
]

SRC = Path(__file__).resolve().parents[2] / "src"
PORT = 7070
SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"{sys.argv[2]} {peer[0]}\n".encode())
    c.close()
"""
CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    print(c.makefile().readline().strip())
"""
CREATE = r"""
import sys
from outgrow.providers.local.network import HostNetwork
net = HostNetwork(sys.argv[1], sys.argv[2], sys.argv[3])
print(net.create(sys.argv[4]).address)
"""


# -- helpers ------------------------------------------------------------------------------------


def ip_json(*args: str) -> Any:
    out = subprocess.run(["ip", "-json", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def netns_names() -> list[str]:
    try:
        return os.listdir("/run/netns")
    except FileNotFoundError:
        return []


def link_names() -> list[str]:
    return [str(link["ifname"]) for link in ip_json("link", "show")]


def link_exists(name: str) -> bool:
    return name in link_names()


def unique_prefix() -> str:
    for _ in range(100):
        prefix = "t" + secrets.token_hex(2)
        if not any(n.startswith(prefix) for n in netns_names() + link_names()):
            return prefix
    pytest.fail("no unused test prefix")


def allocations(net: HostNetwork) -> dict[str, str]:
    path = net.state_dir / "network.json"
    if not path.exists():
        return {}
    return {k: v["address"] for k, v in json.loads(path.read_text())["allocations"].items()}


def assert_gone(net: HostNetwork, instance_id: str) -> None:
    assert not os.path.exists(f"/run/netns/{net.prefix}-{instance_id}")
    assert not link_exists(net.veth_name(instance_id))
    assert instance_id not in allocations(net)
    assert net.get(instance_id) is None


def connect(address: IPv4Address, port: int = PORT) -> str:
    with socket.create_connection((str(address), port), timeout=5) as c:
        return c.makefile().readline().strip()


def connect_from(info: NetnsInfo, address: IPv4Address, port: int = PORT) -> str:
    argv = [*run_in_netns_argv(info.path), sys.executable, "-c", CLIENT, str(address), str(port)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# -- fixtures -----------------------------------------------------------------------------------

NetFactory = Callable[..., HostNetwork]


@pytest.fixture
def make_net(tmp_path: Path) -> Iterator[NetFactory]:
    """make_net(prefixlen=24) -> a HostNetwork with a fresh prefix and pool, owned by a
    fresh owner (a data dir); make_net(like=net) -> another owner on net's prefix and pool
    (a second control plane on the same host).

    The finalizer tears every one down and checks nothing with its prefix is left.
    """
    made: list[HostNetwork] = []

    def make(prefixlen: int = 24, like: HostNetwork | None = None) -> HostNetwork:
        owner = (
            tmp_path / f"owner{len(made)}"
        )  # a data dir: its instances are owned while it exists
        owner.mkdir()
        if like is not None:
            net = HostNetwork(like.prefix, str(like.pool), str(owner))
        else:
            prefix = unique_prefix()
            net = HostNetwork(prefix, Pools().reserve(prefix, prefixlen=prefixlen), str(owner))
        made.append(net)
        return net

    yield make
    errors = []
    for net in made:
        try:
            net.teardown()
        except Exception as exc:
            errors.append(f"teardown {net.prefix}: {exc!r} {getattr(exc, 'detail', '')}")
    for net in made:
        left = [n for n in netns_names() + link_names() if n.startswith(net.prefix)]
        if left:
            for n in left:  # last resort, so one failure does not pollute the host
                subprocess.run(["ip", "netns", "del", n], capture_output=True)
                subprocess.run(["ip", "link", "del", n], capture_output=True)
            errors.append(f"left behind with prefix {net.prefix}: {left}")
    assert not errors, errors


@pytest.fixture
def net(make_net: NetFactory) -> HostNetwork:
    return make_net()


@pytest.fixture
def serve() -> Iterator[Callable[[NetnsInfo], None]]:
    """serve(info): a TCP server on PORT inside the instance's netns, answering "<name> <peer>"."""
    procs: list[subprocess.Popen[str]] = []

    def start(info: NetnsInfo) -> None:
        argv = [*run_in_netns_argv(info.path), sys.executable, "-c", SERVER, str(PORT), info.name]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


# -- tests --------------------------------------------------------------------------------------


def check_instance(net: HostNetwork, info: NetnsInfo, address: str) -> None:
    iid = info.instance_id
    assert info.name == f"{net.prefix}-{iid}"
    assert info.path == f"/run/netns/{net.prefix}-{iid}"
    assert info.host_veth == f"{net.prefix}{iid}"
    assert info.address == IPv4Address(address)
    assert info.prefix_len == 24
    assert info.gateway == net.gateway == net.pool.network_address + 1
    assert info.inode == os.stat(info.path).st_ino
    assert run_in_netns_argv(info.path) == ["nsenter", f"--net=/run/netns/{info.name}"]
    # inside: lo and eth0 up, the address, the default route via the bridge
    links = {link["ifname"]: link for link in ip_json("-n", info.name, "link", "show")}
    assert set(links) == {"lo", "eth0"}
    assert "UP" in links["lo"]["flags"]
    assert "UP" in links["eth0"]["flags"] and links["eth0"]["operstate"] == "UP"
    addrs = ip_json("-n", info.name, "-4", "addr", "show", "dev", "eth0")[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [(address, 24)]
    routes = ip_json("-n", info.name, "-4", "route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [(str(net.gateway), "eth0")]
    # host side: veth enslaved to the bridge, up
    veth = ip_json("link", "show", "dev", info.host_veth)[0]
    assert veth["master"] == net.bridge_name and "UP" in veth["flags"]
    # the inode is the namespace a process inside sees (what CRIU's --external net[] names)
    seen = subprocess.run(
        [*run_in_netns_argv(info.path), "readlink", "/proc/self/ns/net"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert seen == f"net:[{info.inode}]"


def test_create_two_instances_reachable(
    net: HostNetwork, serve: Callable[[NetnsInfo], None]
) -> None:
    a = net.create(new_instance_id())
    b = net.create(new_instance_id())
    base = net.pool.network_address
    check_instance(net, a, str(base + 2))
    check_instance(net, b, str(base + 3))
    bridge = ip_json("-4", "addr", "show", "dev", net.bridge_name)[0]
    assert [(x["local"], x["prefixlen"]) for x in bridge["addr_info"]] == [(str(net.gateway), 24)]
    serve(a)
    serve(b)
    # host (control plane) -> instance: the peer it sees is the bridge address
    assert connect(a.address) == f"{a.name} {net.gateway}"
    assert connect(b.address) == f"{b.name} {net.gateway}"
    # instance <-> instance through the bridge, with their own addresses
    assert connect_from(a, b.address) == f"{b.name} {a.address}"
    assert connect_from(b, a.address) == f"{a.name} {b.address}"


def test_ensure_bridge_idempotent(net: HostNetwork) -> None:
    net.ensure_bridge()
    net.ensure_bridge()
    HostNetwork(net.prefix, str(net.pool), net.owner).ensure_bridge()
    bridge = ip_json("-d", "addr", "show", "dev", net.bridge_name)[0]
    assert bridge["linkinfo"]["info_kind"] == "bridge" and "UP" in bridge["flags"]
    v4 = [(x["local"], x["prefixlen"]) for x in bridge["addr_info"] if x["family"] == "inet"]
    assert v4 == [(str(net.gateway), 24)]


def test_overlapping_pool_refused(make_net: NetFactory) -> None:
    first = make_net()
    first.ensure_bridge()
    second = make_net()
    clash = HostNetwork(second.prefix, str(first.pool), second.owner)
    with pytest.raises(ProviderError, match="overlaps"):
        clash.create(new_instance_id())
    assert not link_exists(clash.bridge_name)
    assert not any(n.startswith(second.prefix) for n in netns_names())


def test_delete_releases_everything(net: HostNetwork, serve: Callable[[NetnsInfo], None]) -> None:
    a = net.create(new_instance_id())
    b = net.create(new_instance_id())
    serve(b)
    net.delete(a.instance_id)
    assert_gone(net, a.instance_id)
    net.delete(a.instance_id)  # idempotent
    assert net.list() == [b]
    assert connect(b.address) == f"{b.name} {net.gateway}"
    c = net.create(new_instance_id())
    assert c.address == a.address  # the lowest free address is reused
    assert allocations(net) == {b.instance_id: str(b.address), c.instance_id: str(c.address)}


def test_delete_while_a_process_holds_the_netns(
    net: HostNetwork, serve: Callable[[NetnsInfo], None]
) -> None:
    a = net.create(new_instance_id())
    serve(a)  # the server keeps the namespace alive after its file is removed
    net.delete(a.instance_id)
    assert_gone(net, a.instance_id)


def test_found_again_by_a_new_object(net: HostNetwork) -> None:
    a = net.create(new_instance_id())
    b = net.create(new_instance_id())
    net.delete(a.instance_id)
    again = HostNetwork(net.prefix, str(net.pool), net.owner)
    assert again.bridge_name == net.bridge_name and again.gateway == net.gateway
    assert again.get(b.instance_id) == b
    assert again.get(a.instance_id) is None
    assert again.list() == [b]
    # even without the allocation file, the address is read from the namespace
    (net.state_dir / "network.json").unlink()
    assert again.get(b.instance_id) == b


def test_cleanup_removes_orphans_only(net: HostNetwork) -> None:
    kept = [net.create(new_instance_id()) for _ in range(2)]
    orphans = [net.create(new_instance_id()) for _ in range(2)]
    # an orphan whose netns was removed behind our back (allocation, maybe veth left)
    lost = net.create(new_instance_id())
    subprocess.run(["ip", "netns", "del", lost.name], check=True)
    # a stale allocation only
    ghost = new_instance_id()
    allocs = allocations(net) | {ghost: str(net.pool.network_address + 100)}
    entries = {k: {"address": a, "owner": net.owner} for k, a in allocs.items()}
    path = net.state_dir / "network.json"
    path.write_text(json.dumps({"pool": str(net.pool), "allocations": entries}))

    removed = net.cleanup(keep=[k.instance_id for k in kept])
    assert removed == sorted([*(o.instance_id for o in orphans), lost.instance_id, ghost])
    for iid in removed:
        assert_gone(net, iid)
    assert net.list() == sorted(kept, key=lambda i: i.instance_id)
    assert allocations(net) == {k.instance_id: str(k.address) for k in kept}
    assert net.cleanup(keep=[k.instance_id for k in kept]) == []


def test_concurrent_allocation_threads(net: HostNetwork) -> None:
    ids = [new_instance_id() for _ in range(12)]

    def create(iid: str) -> NetnsInfo:  # a HostNetwork per thread, as separate workers would
        return HostNetwork(net.prefix, str(net.pool), net.owner).create(iid)

    with ThreadPoolExecutor(len(ids)) as pool:
        infos = list(pool.map(create, ids))
    base = net.pool.network_address
    assert sorted(i.address for i in infos) == [base + n for n in range(2, 2 + len(ids))]
    assert len(net.list()) == len(ids)


def test_concurrent_allocation_processes(net: HostNetwork) -> None:
    ids = [new_instance_id() for _ in range(8)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    args = [net.prefix, str(net.pool), net.owner]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, *args, iid], stdout=subprocess.PIPE, text=True, env=env
        )
        for iid in ids
    ]
    try:
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [0] * len(ids)
    base = net.pool.network_address
    addresses = sorted(IPv4Address(o.strip()) for o in outs)
    assert addresses == [base + n for n in range(2, 2 + len(ids))]
    assert {i.instance_id: i.address for i in net.list()} == {
        iid: IPv4Address(a) for iid, a in allocations(net).items()
    }


def test_pool_exhaustion(make_net: NetFactory) -> None:
    net = make_net(29)  # .0 network, .1 bridge, .2-.6 instances, .7 broadcast
    infos = [net.create(new_instance_id()) for _ in range(5)]
    base = net.pool.network_address
    assert [i.address for i in infos] == [base + n for n in range(2, 7)]
    extra = new_instance_id()
    with pytest.raises(ProviderError) as err:
        net.create(extra)
    assert str(err.value) == f"address pool {net.pool} is exhausted"
    assert_gone(net, extra)
    net.delete(infos[2].instance_id)
    assert net.create(extra).address == infos[2].address


def test_failure_halfway_veth_name_taken(net: HostNetwork) -> None:
    iid = new_instance_id()
    squatter = net.veth_name(iid)
    subprocess.run(["ip", "link", "add", squatter, "type", "bridge"], check=True)
    try:
        with pytest.raises(ProviderError) as err:
            net.create(iid)
        assert err.value.detail and "ip link add" in err.value.detail
        assert "File exists" in err.value.detail
        assert not os.path.exists(f"/run/netns/{net.prefix}-{iid}")
        assert allocations(net) == {}
        assert link_exists(squatter)  # not ours: the rollback must not delete it
    finally:
        subprocess.run(["ip", "link", "del", squatter], check=True)
    assert net.create(new_instance_id()).address == net.pool.network_address + 2


@pytest.mark.parametrize(
    "failing",
    ["netns add", "type veth", "addr add", "lo up", "eth0 up", "route add", "master"],
)
def test_failure_at_each_step_rolls_back(
    net: HostNetwork, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    keep = net.create(new_instance_id())
    real_ip = network._ip

    def flaky_ip(*args: str, **kw: Any) -> str | None:
        if failing in " ".join(args):
            raise ProviderError("injected failure", detail=f"$ ip {' '.join(args)}\ninjected")
        return real_ip(*args, **kw)

    monkeypatch.setattr(network, "_ip", flaky_ip)
    iid = new_instance_id()
    with pytest.raises(ProviderError, match="injected failure"):
        net.create(iid)
    monkeypatch.undo()
    assert_gone(net, iid)
    assert net.list() == [keep]
    assert net.create(new_instance_id()).address == keep.address + 1


def test_netns_fd(net: HostNetwork) -> None:
    info = net.create(new_instance_id())
    fd = netns_fd(info.path)
    try:
        assert os.fstat(fd).st_ino == info.inode
        seen = subprocess.run(
            ["nsenter", f"--net=/proc/self/fd/{fd}", "readlink", "/proc/self/ns/net"],
            pass_fds=(fd,), capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert seen == f"net:[{info.inode}]"
    finally:
        os.close(fd)
    with pytest.raises(ProviderError):
        netns_fd("/run/netns/does-not-exist")


def test_validation(net: HostNetwork, tmp_path: Path) -> None:
    for bad in ["", "3F9A2C1D", "3f9a2c1", "3f9a2c1d0", "../../x", "3f9a2c1g"]:
        with pytest.raises(ValidationError) as err:
            net.create(bad)
        assert err.value.field == "instance_id"
        with pytest.raises(ValidationError):
            net.get(bad)
        with pytest.raises(ValidationError):
            net.delete(bad)
    for prefix in ["a", "abcdef", "OG", "o-g", "ög"]:
        with pytest.raises(ConfigError, match="prefix"):
            HostNetwork(prefix, "198.19.0.0/24", str(tmp_path))
    for pool in ["nope", "198.19.0.1/24", "fd00::/64", "198.19.0.0/31"]:
        with pytest.raises(ConfigError, match="pool"):
            HostNetwork("tx", pool, str(tmp_path))
    assert not link_exists(net.bridge_name)  # nothing was created


def test_two_owners_on_one_prefix_never_share_an_address_or_an_instance(
    make_net: NetFactory, serve: Callable[[NetnsInfo], None]
) -> None:
    """Two control planes (two data dirs) on one prefix: one bridge, one host-wide address
    table; each sweeps only its own instances (and nobody's leftovers), never the other's,
    and the bridge stays while the other still has instances on it."""
    a_net = make_net()
    b_net = make_net(like=a_net)
    a1, b1, a2 = (n.create(new_instance_id()) for n in (a_net, b_net, a_net))
    assert len({a1.address, b1.address, a2.address}) == 3
    serve(b1)
    assert connect(b1.address) == f"{b1.name} {a_net.gateway}"
    assert a_net.list() == sorted([a1, a2], key=lambda i: i.instance_id)
    assert b_net.list() == [b1]
    assert a_net.owner_of(b1.instance_id) == b_net.owner
    with pytest.raises(ProviderError, match="belongs to the control plane of"):
        a_net.delete(b1.instance_id)
    # another pool on the same prefix is refused (one bridge, one gateway)
    other_pool = HostNetwork(a_net.prefix, "198.19.255.0/24", b_net.owner)
    with pytest.raises(ProviderError, match="already uses address pool"):
        other_pool.create(new_instance_id())
    # a leftover nobody owns (no entry) is swept by either owner
    leftover = new_instance_id()
    subprocess.run(["ip", "netns", "add", a_net.netns_name(leftover)], check=True)
    assert a_net.cleanup(keep=[a1.instance_id]) == sorted([a2.instance_id, leftover])
    assert b_net.get(b1.instance_id) == b1
    assert connect(b1.address) == f"{b1.name} {a_net.gateway}"
    # an owner whose data dir is gone is nobody: its instances are leftovers for anyone
    gone = make_net(like=a_net)
    g1 = gone.create(new_instance_id())
    Path(gone.owner).rmdir()
    assert a_net.owner_of(g1.instance_id) is None
    assert a_net.cleanup(keep=[a1.instance_id]) == [g1.instance_id]
    a_net.teardown()  # its instances go; the bridge stays: b1 is on it
    assert_gone(a_net, a1.instance_id)
    assert connect(b1.address) == f"{b1.name} {a_net.gateway}"
    assert b_net.list() == [b1]
    b_net.teardown()
    assert not link_exists(a_net.bridge_name)
    assert not a_net.state_dir.exists()


def test_pools_are_reserved_host_wide(tmp_path: Path) -> None:
    """Two reservations never get the same pool; a claim overlapping a held one is
    refused; a released pool is free again."""
    pools = Pools()
    p1, p2 = unique_prefix(), unique_prefix()
    try:
        n1 = pools.reserve(p1)
        n2 = pools.reserve(p2)
        assert n1 != n2
        assert pools.holders()[n1]["prefix"] == p1 and pools.holders()[n2]["pid"] == os.getpid()
        net = HostNetwork(p2, n1, str(tmp_path))
        with pytest.raises(ProviderError, match=f"overlaps {n1} of resource prefix {p1}"):
            net.ensure_bridge()
        pools.release(p1)
        assert n1 not in pools.holders()
        net.pools.claim(p2, net.pool)  # now free: p2 moves to it
        assert pools.holders()[n1]["prefix"] == p2 and n2 not in pools.holders()
    finally:
        pools.release(p1)
        pools.release(p2)
