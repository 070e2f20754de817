"""Security groups for real: nftables in the instance netns, clients on the same bridge,
a job server that keeps its state across a live migration behind the target's group."""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import leftovers, make_settings, unique_prefix
from outgrow.agentapi.models import AgentPhase, CheckpointRequest
from outgrow.controlplane.images import Images
from outgrow.controlplane.instances import Instances
from outgrow.controlplane.jobs import start_request
from outgrow.domain.images import BUILTIN_IMAGES
from outgrow.domain.jobs import JobSpec
from outgrow.domain.security import PAGE_SERVER_PORTS, SecurityGroup
from outgrow.orchestrator.migrate import Migrator, agent, wait_job
from outgrow.providers.base import InstanceInfo
from outgrow.providers.local import firewall
from outgrow.providers.local.network import NetnsInfo, new_instance_id
from outgrow.providers.local.provider import LocalProvider
from outgrow.store import JobRecord, Store
from waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Two listeners: 9000 (published) and 9001 (never published). Each answer carries the
# connection count (it survives a migration: same process) and the peer address.
SERVER = """\
import selectors, socket
sel = selectors.DefaultSelector()
for port in (9000, 9001):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    sel.register(s, selectors.EVENT_READ, port)
n = 0
while True:
    for key, _ in sel.select():
        c, peer = key.fileobj.accept()
        n += 1
        c.sendall(f"hello {key.data} {n} {peer[0]}\\n".encode())
        c.close()
"""

PROBE = """\
import socket, sys
host, port, t = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    c = socket.create_connection((host, port), timeout=t)
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("error", e)
else:
    c.settimeout(0.5)
    try:
        print("ok", c.recv(200).decode().strip())
    except OSError:
        print("ok")
    c.close()
"""


def probe(address: str, port: int, netns: NetnsInfo | None = None, timeout: float = 1.5) -> str:
    """Connect to address:port from the host (the gateway) or from a client netns."""
    argv = ["nsenter", f"--net={netns.path}"] if netns else []
    argv += [sys.executable, "-c", PROBE, address, str(port), str(timeout)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def tables(netns_path: str) -> set[str]:
    out = subprocess.run(
        ["nsenter", f"--net={netns_path}", "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {ln.split()[-1] for ln in out.splitlines() if ln.startswith("table")}


def reachable(result: str) -> bool:
    return result.startswith("ok")


def count_of(result: str) -> int:
    # "ok hello 9000 <n> <peer>"
    return int(result.split()[3])


def peer_of(result: str) -> str:
    return result.split()[4]


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalProvider]:
    prefix = unique_prefix()
    p = LocalProvider(make_settings(tmp_path, prefix))
    try:
        yield p
    finally:
        p.teardown()
    assert leftovers(prefix) == []


def control(p: LocalProvider) -> tuple[Instances, Store]:
    """The control plane's own instance logic (vmPolicy, security group) on this provider,
    over a real in-memory store."""
    store = Store.open("sqlite://")
    return Instances(store, p, Images(store), threading.Event(), retry_cap_s=0.0), store


def new_job(store: Store, spec: JobSpec) -> JobRecord:
    user = store.get_user("u") or store.create_user("u", "password")
    job = store.get_job(store.create_job(user.id, spec, secrets.token_hex(16)))
    assert job is not None
    return job


def wait_listening(inst: InstanceInfo, timeout: float = 60) -> None:
    wait_until(
        lambda: reachable(probe(inst.address, 9000, timeout=0.5)),
        timeout=timeout,
        interval=0.2,
        what=f"the job server to listen on {inst.address}:9000",
    )


def test_security_group_follows_the_job(provider: LocalProvider) -> None:
    p = provider
    # Two clients on the bridge, with pool addresses (made before the instances, so they
    # get the lowest ones): the allowed CIDR is chosen to hold one and not the other.
    outside = p.net.create(new_instance_id())
    inside = p.net.create(new_instance_id())
    allowed = f"{inside.address}/32"
    assert outside.address not in ipaddress.ip_network(allowed)
    gateway = str(p.net.gateway)

    spec = JobSpec(
        name="sg", image="python", script=SERVER, publish=["9000:9000"], allow_cidr=[allowed]
    )
    instances, store = control(p)
    job = new_job(store, spec)
    job_id = job.id
    image = BUILTIN_IMAGES["python"]
    p.prepare_image(image)
    nano = p.instance_types().get("lc.nano")
    src = instances.create(job, nano)

    # The control plane made the group from the spec; the table is there before the job.
    sg = SecurityGroup(job_id, ((9000, 9000),), (allowed,))
    assert p.security_group(src.id) == sg
    table = firewall.current(f"/run/netns/{p.prefix}-{src.id}")
    assert table is not None and "outgrow_sg" in str(table)

    # The agent API works through it (the control plane is the gateway).
    with agent(src) as a:
        assert a.health().instance_id == src.id
        a.start_job(start_request(job, image))
    wait_job(src, timeout=300)
    wait_listening(src)

    # From the host (control plane): the published port; not an unpublished one.
    r = probe(src.address, 9000)
    assert reachable(r) and peer_of(r) == gateway
    assert probe(src.address, 9001) == "timeout"
    # From the allowed client: yes, and the job sees its real address (no SNAT).
    r = probe(src.address, 9000, inside)
    assert reachable(r) and peer_of(r) == str(inside.address)
    # From the client outside the CIDR: dropped. Other instances reach only the agent.
    assert probe(src.address, 9000, outside) == "timeout"
    assert probe(src.address, 9001, inside) == "timeout"
    assert reachable(probe(src.address, 7070, outside))

    # Publish 9100:9000 too (atomic replace while the job runs).
    spec2 = spec.model_copy(update={"publish": ["9000:9000", "9100:9000"]})
    sg2 = SecurityGroup.from_spec(job_id, spec2)
    p.update_security_group(src.id, sg2)
    assert p.security_group(src.id) == sg2
    r = probe(src.address, 9100, inside)
    assert reachable(r) and r.split()[2] == "9000" and peer_of(r) == str(inside.address)
    assert probe(src.address, 9100, outside) == "timeout"
    assert reachable(probe(src.address, 9100))
    before = count_of(probe(src.address, 9000))

    # The migration target is made like the control plane makes it: same group.
    store.update_job(job_id, spec=spec2)
    target = instances.create(store.get_job(job_id) or job, p.instance_types().get("lc.small"))
    assert p.security_group(target.id) == sg2
    with agent(target) as a:  # the page server uses the range the group lets in
        rx = a.prepare_receive(page_server=True)
        assert rx.page_server_port is not None
        assert PAGE_SERVER_PORTS[0] <= rx.page_server_port <= PAGE_SERVER_PORTS[1]
        a.drop_receive(rx.receive_id)

    # Checkpoint lock + SG on the source, page server + uploads through the target's SG.
    result = Migrator(p).migrate(src, target=target, reason="manual")
    assert result.target_instance == target.id and result.transfer == "page-server"
    assert not Path(f"/run/netns/{p.prefix}-{src.id}").exists()
    with agent(target) as a:
        st = a.job()
        assert st.phase == AgentPhase.RUNNING and st.restored

    # The same rules hold at the new address, served by the same (restored) process.
    wait_listening(target, timeout=20)
    r = probe(target.address, 9000)
    assert reachable(r) and peer_of(r) == gateway and count_of(r) > before
    assert probe(target.address, 9001) == "timeout"
    r = probe(target.address, 9000, inside)
    assert reachable(r) and peer_of(r) == str(inside.address)
    r = probe(target.address, 9100, inside)
    assert reachable(r) and r.split()[2] == "9000"
    assert probe(target.address, 9000, outside) == "timeout"
    assert probe(target.address, 9100, outside) == "timeout"

    # The agent's checkpoint lock is its own table beside the group: while checkpointed,
    # the agent API still answers (both tables let the gateway in), the job does not.
    netns = f"/run/netns/{p.prefix}-{target.id}"
    with agent(target) as a:
        a.checkpoint(CheckpointRequest(dest_dir=str(p.settings.data_dir / "ck")))
        assert tables(netns) == {"outgrow_sg", "outgrow_guard", f"og-move-{target.id}"}
        assert a.job().phase == AgentPhase.CHECKPOINTED
        assert probe(target.address, 9000, inside) == "timeout"
        a.abort()
        assert tables(netns) == {"outgrow_sg", "outgrow_guard"}
        assert a.job().phase == AgentPhase.RUNNING
    assert reachable(probe(target.address, 9000, inside))

    # Only 9100:9000: the host port is open to the CIDR, the job port itself is not
    # (rules match the original destination); the control plane still reaches both.
    p.update_security_group(target.id, SecurityGroup(job_id, ((9100, 9000),), (allowed,)))
    assert reachable(probe(target.address, 9100, inside))
    assert probe(target.address, 9000, inside) == "timeout"
    assert reachable(probe(target.address, 9000))
    assert reachable(probe(target.address, 9100))

    # No group: the instance is open again (the table is gone, not just emptied).
    p.update_security_group(target.id, None)
    assert firewall.current(f"/run/netns/{p.prefix}-{target.id}") is None
    assert reachable(probe(target.address, 9001, outside))

    p.delete_instance(target.id)
    assert not Path(f"/run/netns/{p.prefix}-{target.id}").exists()


def test_jupyter_default_is_the_control_plane_only(provider: LocalProvider) -> None:
    p = provider
    peer = p.net.create(new_instance_id())  # another machine on the pool, no allow_cidr
    spec = JobSpec(name="nb", image="jupyter-server")
    image = BUILTIN_IMAGES["jupyter-server"]
    p.prepare_image(image)
    instances, store = control(p)
    job = new_job(store, spec)
    job_id = job.id
    inst = instances.create(job, p.instance_types().get("lc.small"))
    assert p.security_group(inst.id) == SecurityGroup(job_id, ((8888, 8888),), ())
    with agent(inst) as a:
        a.start_job(start_request(job, image))
    wait_job(inst, timeout=300)  # running = the agent saw Jupyter answer on 127.0.0.1
    r = httpx.get(
        f"http://{inst.address}:8888/jobs/{job_id}/api/status",
        headers={"Authorization": f"token {job.jupyter_token}"},
        timeout=10,
    )
    assert r.status_code == 200  # the stable-URL proxy's path (from the gateway)
    assert probe(inst.address, 8888, peer) == "timeout"  # nobody else
    assert reachable(probe(inst.address, 7070, peer))  # other agents (migrations) only
    p.delete_instance(inst.id)
