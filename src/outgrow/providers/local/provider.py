"""The local provider: instances on this host (network namespace + cgroup + agent).

Each instance behaves like a small cloud VM: its own address on a host bridge, its own
memory/CPU limits, its own agent listening on its address. Instance records live in
``<data_dir>/instances/<id>/`` so a restarted control plane finds them again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping
from importlib import resources
from pathlib import Path

from outgrow.agent.cgroups import detect
from outgrow.agent.images import ImageCache
from outgrow.agentapi.client import AgentClient
from outgrow.cancel import Cancel, check, pause
from outgrow.domain.images import ImageSpec
from outgrow.domain.instance_types import GIB, Catalog, parse_catalog
from outgrow.domain.security import PAGE_SERVER_PORTS, SecurityGroup
from outgrow.domain.storage import JobStorage, is_object_url
from outgrow.errors import (
    AgentError,
    CapacityError,
    ConfigError,
    NotFoundError,
    OutgrowError,
    ProviderError,
)
from outgrow.providers.base import Capability, InstanceInfo, Provider
from outgrow.providers.local import firewall
from outgrow.providers.local.network import HostNetwork, new_instance_id, run_in_netns_argv
from outgrow.providers.local.storage import LocalJobStorage
from outgrow.settings import Settings

log = logging.getLogger("outgrow.provider.local")


def packaged_catalog() -> Catalog:
    text = resources.files("outgrow.providers.local").joinpath("catalog.yaml").read_text()
    return parse_catalog(text, "packaged local catalog")


def load_catalog(path: Path | None) -> Catalog:
    """The user's catalog file when configured, else the packaged one."""
    if path is None:
        return packaged_catalog()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the instance-type catalog {path}: {exc.strerror}") from exc
    return parse_catalog(text, str(path))


def host_memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise ProviderError("cannot read /proc/meminfo")


class LocalProvider(Provider):
    name = "local"
    create_estimate_s = 4.0  # netns + cgroup + agent start: about a second

    def __init__(self, settings: Settings, catalog: Catalog | None = None):
        self.settings = settings
        self.prefix = settings.resource_prefix
        self.root = settings.data_dir / "instances"
        self.jobs_dir = settings.data_dir / "jobs"
        # Instances are owned by this data dir: another control plane on the same prefix
        # (another data dir) shares the bridge and the address table, never the instances.
        self.owner = str(settings.data_dir.resolve())
        self.net = HostNetwork(
            settings.resource_prefix, settings.address_pool, self.owner, settings.run_dir
        )
        self.cgroups = detect()
        if catalog is None:
            catalog = load_catalog(settings.catalog_path)
        self._catalog = catalog
        self.job_storage = LocalJobStorage(settings, lambda iid: self._record(iid) is not None)

    # A property, not the base class's ClassVar: what is shared depends on the settings.
    @property
    def capabilities(self) -> frozenset[Capability]:  # type: ignore[override]
        caps = {
            Capability.SPOT,
            Capability.RECLAIM_NOTICE,
            Capability.SECURITY_GROUPS,
            Capability.RESTART_AGENT,
        }
        if self.settings.local_job_storage == "shared":  # else the directory moves with the job
            caps.add(Capability.SHARED_JOB_STORAGE)
        return frozenset(caps)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalProvider:
        return cls(settings)

    def instance_types(self) -> Catalog:
        return self._catalog

    def prepare_image(
        self,
        spec: ImageSpec,
        progress: Callable[[str], None] | None = None,
        cancel: Cancel | None = None,
    ) -> None:
        # Instances have no route out (no NAT by design), so images are built (venv) or
        # unpacked (OCI) here, on the host, into the cache every agent of this host reads.
        if spec.oci is not None:
            self.oci_cache().ensure_rootfs(spec.oci.digest, progress)
            return
        ImageCache(self.settings.image_cache_dir).ensure(spec, progress=progress, cancel=cancel)

    # ---- records --------------------------------------------------------------------
    def _dir(self, iid: str) -> Path:
        return self.root / iid

    def _record(self, iid: str) -> dict[str, object] | None:
        try:
            data: dict[str, object] = json.loads((self._dir(iid) / "instance.json").read_text())
            return data
        except (OSError, ValueError):
            return None

    def cgroup_name(self, iid: str) -> str:
        return f"{self.prefix}-{iid}"

    def _info(self, iid: str, rec: dict[str, object], state: str) -> InstanceInfo:
        t = self._catalog.get(str(rec["type"]))
        return InstanceInfo(
            id=iid,
            provider=self.name,
            type=t,
            address=str(rec["address"]),
            agent_url=f"http://{rec['address']}:{self.settings.agent_port}",
            agent_token=str(rec["token"]),
            spot=bool(rec["spot"]),
            created_at=float(rec["created_at"]),  # type: ignore[arg-type]
            state=state,
            tags=dict(rec.get("tags") or {}),  # type: ignore[call-overload]
        )

    # ---- capacity ---------------------------------------------------------------------
    def committed_memory_bytes(self) -> int:
        total = 0
        for inst in self.list_instances():
            total += inst.type.memory_bytes
        return total

    def _check_capacity(self, memory_bytes: int) -> None:
        budget = host_memory_bytes() - int(self.settings.host_memory_reserve_gib * GIB)
        used = self.committed_memory_bytes()
        if used + memory_bytes > budget:
            raise CapacityError(
                f"host has {max(budget - used, 0) / GIB:.1f} GiB left for instances, "
                f"{memory_bytes / GIB:g} GiB needed"
            )

    # ---- create / delete --------------------------------------------------------------
    def create_instance(
        self,
        type_name: str,
        *,
        spot: bool = False,
        tags: Mapping[str, str] | None = None,
        security_group: SecurityGroup | None = None,
        cancel: Cancel | None = None,
    ) -> InstanceInfo:
        itype = self._catalog.get(type_name)
        if security_group is not None:
            security_group.check_reserved(self.settings.agent_port, PAGE_SERVER_PORTS)
        self._check_capacity(itype.memory_bytes)
        iid = new_instance_id()
        d = self._dir(iid)
        d.mkdir(parents=True)
        token = secrets.token_urlsafe(32)
        (d / "agent.token").write_text(token)
        os.chmod(d / "agent.token", 0o600)
        cg = self.cgroups.open(self.cgroup_name(iid))
        try:
            ns = self.net.create(iid)
            cg.create()
            cg.set_memory_limit(itype.memory_bytes)
            cg.set_cpu_quota(itype.vcpus)
            cg.set_pids_max(self.settings.job_pids_max)
            rec = {
                "id": iid,
                "type": itype.name,
                "address": str(ns.address),
                "token": token,
                "spot": spot,
                "created_at": time.time(),
                "tags": dict(tags or {}),
                "netns": ns.path,
                "cgroup": cg.name,
                "security_group": security_group.to_dict() if security_group else None,
            }
            if security_group is not None:  # before the agent listens: never open
                self._apply_sg(ns.path, security_group)
            (d / "instance.json").write_text(json.dumps(rec))
            self._start_agent(iid, ns.path, str(ns.address))
            info = self._info(iid, rec, "running")
            self._wait_agent(info, cancel=cancel)
            return info
        except BaseException as exc:  # incl. a cancel: nothing half-made stays
            log.error("creating instance %s failed: %s", iid, exc)
            self.delete_instance(iid)
            if isinstance(exc, OutgrowError):
                raise
            if isinstance(exc, Exception):
                raise ProviderError(f"creating a {type_name} instance failed: {exc}") from exc
            raise

    def _apply_sg(self, netns_path: str, sg: SecurityGroup) -> None:
        firewall.apply(
            netns_path,
            sg,
            gateway=str(self.net.gateway),
            pool=str(self.net.pool),
            agent_port=self.settings.agent_port,
            page_server_ports=PAGE_SERVER_PORTS,
        )

    def update_security_group(self, instance_id: str, sg: SecurityGroup | None) -> None:
        """Replace the instance's security group atomically (None: remove it, all open)."""
        rec = self._record(instance_id)
        if rec is None:
            raise ProviderError(f"no instance {instance_id}")
        netns = str(rec["netns"])
        if sg is None:
            firewall.remove(netns)
        else:
            sg.check_reserved(self.settings.agent_port, PAGE_SERVER_PORTS)
            self._apply_sg(netns, sg)
        rec["security_group"] = sg.to_dict() if sg else None
        path = self._dir(instance_id) / "instance.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(path)

    def security_group(self, instance_id: str) -> SecurityGroup | None:
        """The security group recorded for the instance (None: none applied)."""
        rec = self._record(instance_id)
        raw = rec.get("security_group") if rec else None
        return SecurityGroup.from_dict(raw) if isinstance(raw, dict) else None

    def _start_agent(self, iid: str, netns_path: str, address: str) -> None:
        d = self._dir(iid)
        argv = [
            *run_in_netns_argv(netns_path),
            sys.executable,
            "-m",
            "outgrow.agent",
            "--instance-id",
            iid,
            "--cgroup",
            self.cgroup_name(iid),
            "--netns-path",
            netns_path,
            "--address",
            address,
            "--port",
            str(self.settings.agent_port),
            "--jobs-dir",
            str(self.jobs_dir),
            "--work-dir",
            str(d / "agent"),
            "--image-cache-dir",
            str(self.settings.image_cache_dir),
            "--criu",
            str(self.settings.criu_path),
            "--token-file",
            str(d / "agent.token"),
            "--oom-headroom-mib",
            str(self.settings.oom_headroom_mib),
            "--job-nofile",
            str(self.settings.job_nofile),
        ]
        with open(d / "agent.log", "ab") as logf:
            # A session of its own: the agent outlives a control plane that is killed.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
                close_fds=True,
            )
        (d / "agent.pid").write_text(str(proc.pid))

    def _wait_agent(
        self, info: InstanceInfo, timeout: float = 30.0, cancel: Cancel | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        what = f"waiting for the agent of instance {info.id}"
        with AgentClient(info.agent_url, info.agent_token) as c:
            while time.monotonic() < deadline:
                check(cancel, what)
                try:
                    c.health(timeout=1.0)
                    return
                except AgentError as exc:
                    last = exc
                    if not self._agent_alive(info.id):
                        break
                    pause(cancel, 0.05, what)
        tail = ""
        with contextlib.suppress(OSError):
            tail = (self._dir(info.id) / "agent.log").read_text()[-2000:]
        raise ProviderError(
            f"agent of instance {info.id} did not become healthy in {timeout:g} s",
            detail=f"{last}\n{tail}",
        )

    def _agent_pid(self, iid: str) -> int | None:
        try:
            return int((self._dir(iid) / "agent.pid").read_text())
        except (OSError, ValueError):
            return None

    def _agent_alive(self, iid: str) -> bool:
        pid = self._agent_pid(iid)
        if pid is None:
            return False
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def restart_agent(self, iid: str, cancel: Cancel | None = None) -> None:
        """Start the agent of an existing instance again (it re-adopts its job)."""
        rec = self._record(iid)
        if rec is None:
            raise ProviderError(f"no instance {iid}")
        if not Path(str(rec["netns"])).exists():
            # The host restarted (network namespaces live on tmpfs): the instance is gone,
            # and asking for its agent would send packets down the default route.
            raise ProviderError(f"instance {iid} has no network namespace (host restarted?)")
        if not self._agent_alive(iid):
            self._start_agent(iid, str(rec["netns"]), str(rec["address"]))
        self._wait_agent(self._info(iid, rec, "running"), cancel=cancel)

    def reclaim(self, instance_id: str, in_s: float) -> float:
        """Simulate a spot reclaim the way a cloud does it: notice to the instance's agent
        now, the instance taken away at the deadline (``enforce_reclaims``)."""
        rec = self._record(instance_id)
        if rec is None:
            raise NotFoundError(f"no instance {instance_id}", field="instance")
        at = time.time() + in_s
        rec["reclaim_at"] = min(float(rec.get("reclaim_at") or at), at)  # type: ignore[arg-type]
        (self._dir(instance_id) / "instance.json").write_text(json.dumps(rec))
        info = self._info(instance_id, rec, "running")
        with AgentClient(info.agent_url, info.agent_token) as c:
            c.reclaim_notice(in_s, source="local reclaim")
        return float(rec["reclaim_at"])  # type: ignore[arg-type]

    def enforce_reclaims(self) -> list[str]:
        """Delete every instance whose reclaim deadline has passed; return their ids."""
        gone = []
        now = time.time()
        for inst in self.list_instances():
            rec = self._record(inst.id) or {}
            at = rec.get("reclaim_at")
            if at is not None and float(at) <= now:  # type: ignore[arg-type]
                log.warning("reclaiming instance %s (deadline passed)", inst.id)
                self.delete_instance(inst.id)
                gone.append(inst.id)
        return gone

    def delete_instance(self, instance_id: str) -> None:
        iid = instance_id
        pid = self._agent_pid(iid)
        if pid is not None and self._agent_alive(iid):
            _kill_wait(pid)
        cg = self.cgroups.open(self.cgroup_name(iid))
        if cg.exists():
            if cg.frozen():
                cg.thaw()
            cg.kill_all()
            cg.remove(timeout=10)
        self.net.delete(iid)
        d = self._dir(iid)
        if d.exists():
            import shutil

            shutil.rmtree(d, ignore_errors=True)

    def describe_instance(self, instance_id: str) -> InstanceInfo | None:
        rec = self._record(instance_id)
        if rec is None:
            return None
        state = "running" if self._agent_alive(instance_id) else "unhealthy"
        return self._info(instance_id, rec, state)

    def list_instances(self) -> list[InstanceInfo]:
        out = []
        if self.root.exists():
            for d in sorted(self.root.iterdir()):
                info = self.describe_instance(d.name)
                if info:
                    out.append(info)
        return out

    # ---- job storage (providers/local/storage.py) ---------------------------------------
    def attach_job_storage(self, job_id: str, instance: InstanceInfo) -> JobStorage:
        return self.job_storage.attach(job_id, instance.id)

    def detach_job_storage(self, job_id: str, instance: InstanceInfo) -> None:
        self.job_storage.detach(job_id, instance.id)

    def delete_job_storage(self, job_id: str) -> None:
        self.job_storage.delete(job_id)

    def checkpoint_location(self, job_id: str, checkpoint_id: str) -> str:
        # In S3 when job directories are (to exercise the cloud path), else a directory of
        # the data dir, which every agent of this host reads.
        url = self.job_storage.checkpoint_url(job_id, checkpoint_id)
        return url or str(self.settings.data_dir / "checkpoints" / job_id / checkpoint_id)

    def local_job_dir(self, job_id: str) -> Path | None:
        return self.jobs_dir / job_id if self.settings.local_job_storage == "shared" else None

    def ensure_network(self) -> None:
        self.net.ensure_bridge()  # the gateway address: the bridge's

    def network_ranges(self) -> tuple[str | None, str | None]:
        return str(self.net.gateway), str(self.net.pool)

    def transfer_url(self, job_id: str, checkpoint_id: str) -> str | None:
        return self.job_storage.transfer_url(job_id, checkpoint_id)

    def delete_checkpoint(self, location: str) -> None:
        if is_object_url(location):
            self.job_storage.delete_checkpoint(location)
        else:
            super().delete_checkpoint(location)

    def cleanup(self, keep: Collection[str] = ()) -> list[str]:
        """Remove this data dir's instances not in ``keep`` and leftovers nobody owns; never
        another control plane's (same prefix, other data dir)."""
        removed = super().cleanup(keep)
        removed += [i for i in self.net.cleanup(keep=set(keep)) if i not in removed]
        for name in self.cgroups.list(f"{self.prefix}-"):
            iid = name[len(self.prefix) + 1 :]
            # Another owner's cgroup always has its address entry (made before, released
            # after the cgroup), so an entry-less one is a leftover.
            if iid not in keep and self.net.owner_of(iid) in (None, self.owner):
                cg = self.cgroups.open(name)
                if cg.frozen():
                    cg.thaw()
                cg.kill_all()
                cg.remove(timeout=10)
                if iid not in removed:
                    removed.append(iid)
        # loop devices of volumes attached to the instances just removed
        removed += self.job_storage.release_loops(keep=set(keep))
        return removed

    def teardown(self) -> list[str]:
        """Remove every instance of this data dir and the host bridge unless another
        control plane's instances use it (tests and `outgrow cleanup --all`)."""
        removed = self.cleanup()
        removed += self.job_storage.release_loops(keep=None)  # the jobs' directories too
        self.net.teardown()
        return removed


def _kill_wait(pid: int, timeout: float = 5.0) -> None:
    # The agent leads its own process group (its helpers: pip, criu); jobs have their own.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
            if sig == signal.SIGTERM:  # a stopped agent handles its SIGTERM only once resumed
                os.killpg(pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not Path(f"/proc/{pid}").exists():
                return
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    return
            except OSError:
                return
            time.sleep(0.02)
