"""``outgrow run``: one job in the foreground, on a private control plane of its own.

The same JobActions, rules and scheduler as ``outgrow up`` (one orchestration path), with
an in-memory store that dies with the command: the job is submitted with the policy
``[evadeOOM=…, mem.step=100, disable=true]`` (grow memory ×2 when it stalls at its limit,
nothing else moves it) and an upper bound from ``--max-type``; what the store records
(state changes, migrations) becomes the run's events, and its logs are streamed.

No reconciler runs (this control plane owns no instances but its job's), so a run never
touches the instances of another control plane or run on the host. Output goes through
callbacks: no terminal, no click here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from outgrow.controlplane.service import ControlPlane
from outgrow.domain.images import ImageSpec
from outgrow.domain.instance_types import Catalog, InstanceType
from outgrow.domain.jobs import EventView, JobSpec, UserView
from outgrow.domain.states import TERMINAL_STATES
from outgrow.domain.states import JobState as S
from outgrow.errors import OutgrowError, ValidationError
from outgrow.providers.base import InstanceInfo, Provider
from outgrow.settings import Settings
from outgrow.store import Store

log = logging.getLogger("outgrow.runner")

EXIT_INTERRUPTED = 130
Event = dict[str, Any]


def fmt_mem(gib: float) -> str:
    return f"{gib:g} GiB" if gib >= 1 else f"{gib * 1024:g} MiB"


def within(t: InstanceType, top: InstanceType | None) -> bool:
    """Not above ``top``: neither more memory, more vCPUs nor a higher price."""
    keys = ("memory_gib", "vcpus", "price_per_hour")
    return top is None or all(getattr(t, k) <= getattr(top, k) + 1e-9 for k in keys)


def choose_type(
    catalog: Catalog, type_name: str | None, gib: float | None, top: InstanceType | None = None
) -> InstanceType:
    """``-t TYPE`` as given, else the cheapest type with at least ``gib`` (default 1 GiB)."""
    if type_name is not None and gib is not None:
        raise ValidationError("give either an instance type or a memory size, not both")
    if type_name is not None:
        t = catalog.get(type_name)
        if top is not None and not within(t, top):
            msg = f"instance type {t.name} ({t.describe()}) is above the maximum type "
            raise ValidationError(f"{msg}{top.name} ({top.describe()})", field="instance_type")
        return t
    gib = 1.0 if gib is None else gib
    if not gib > 0:
        raise ValidationError(f"memory must be > 0 GiB, not {gib:g}", field="memory")
    fit = [t for t in catalog.fitting(min_memory_gib=gib) if within(t, top)]
    if not fit:
        big = catalog.types[-1]
        msg = f"no instance type{f' up to {top.name}' if top else ''} has at least "
        msg += f"{fmt_mem(gib)} of memory (largest: {big.name}, {big.describe()})"
        raise ValidationError(msg, field="memory")
    return fit[0]


@dataclass(frozen=True)
class RunSpec:
    """What to run (``outgrow run``'s options, validated)."""

    image: ImageSpec
    itype: InstanceType
    script: str = ""
    evade_oom: bool = True
    max_type: InstanceType | None = None
    stream_logs: bool = True

    def job_spec(self, name: str = "run") -> JobSpec:
        """The job as the control plane runs it: starts on ``itype``; grows memory ×2
        (mem.step=100) when it stalls at its limit, up to ``max_type``; nothing else."""
        top = self.max_type
        cpu = f"{self.itype.vcpus:g}" + (f":{top.vcpus:g}" if top else "")
        mem = f"{self.itype.memory_gib:g}" + (f":{top.memory_gib:g}" if top else "")
        evade = "true" if self.evade_oom else "false"
        return JobSpec(
            name=name,
            image=self.image.name,
            script=self.script,
            cpu=cpu,
            mem=mem,
            instance_type=self.itype.name,
            migrate_policy=f"[evadeOOM={evade},mem.step=100,disable=true]",
            idle_timeout_s=0,
        )


def job_urls(kind: str, address: str, port: int, job_id: str, token: str) -> dict[str, str]:
    """Where to reach the job's Jupyter server (on its instance: no stable URL here)."""
    base = f"http://{address}:{port}/jobs/{job_id}/"
    if kind == "jupyter-lab":
        return {"base_url": base, "url": f"{base}lab?token={token}"}
    if kind == "jupyter-server":
        command = f"jupyter lab --gateway-url={base} --GatewayClient.auth_token={token}"
        return {"base_url": base, "gateway_command": command}
    return {}


def _no_output(*_: Any) -> None:
    return None


class JobRunner:
    """Runs one job in the foreground. ``run()`` returns the process exit code: the job's
    own on its end, 130 when interrupted. Every instance it created is deleted, always."""

    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        spec: RunSpec,
        *,
        on_event: Callable[[Event], None] = _no_output,
        on_progress: Callable[[str], None] = _no_output,
        on_output: Callable[[str, str], None] = _no_output,
        shield: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
        poll_s: float = 0.05,
    ):
        self.spec = spec
        self.emit, self.progress, self.output = on_event, on_progress, on_output
        self.shield = shield
        self.poll_s = poll_s
        self.store = Store.open("sqlite://")  # in memory: the run's, gone with it
        self.cp = ControlPlane(settings, self.store, provider)
        self.provider = provider
        self.user = self._user()
        self.job_id = ""
        self.offsets = {"stdout": 0, "stderr": 0}
        self.migrations = 0
        self._seen_event = 0

    def _user(self) -> UserView:
        self.cp.accounts.bootstrap(None)
        user = self.store.get_user("admin")
        assert user is not None
        return user

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> int:
        interrupted: KeyboardInterrupt | None = None
        self.cp.scheduler.start()  # no reconciler: nothing here is ours to sweep
        try:
            return self._run()
        except KeyboardInterrupt as exc:
            interrupted = exc
            return EXIT_INTERRUPTED
        finally:
            with self.shield():
                if interrupted is not None:
                    self._cancel()
                self.cp.stop()
                self.store.close()
                if interrupted is not None:
                    signum = getattr(interrupted, "signum", 2)  # see cli.main.Interrupted
                    self.emit({"event": "interrupted", "job_id": self.job_id, "signal": signum})

    def _run(self) -> int:
        self.progress(f"preparing image {self.spec.image.name}")
        self.provider.prepare_image(self.spec.image, progress=self.progress)
        t = self.spec.itype
        self.progress(f"creating an instance ({t.name}, {t.describe()})")
        view = self.cp.submit(self.user, self.spec.job_spec())
        self.job_id = view.id
        while True:
            job = self.cp.actions.job(self.job_id)
            self._pump_logs(job.current_instance_id)
            for ev in self.store.events(self.job_id, self._seen_event):
                self._seen_event = ev.id
                self._on_event(ev)
            if job.status in TERMINAL_STATES and not self.cp.workers.busy(self.job_id):
                self._pump_logs(None)
                return self._ended()
            time.sleep(self.poll_s)

    def _cancel(self) -> None:
        """Stop the job and delete its instances (a frozen source of a move too)."""
        if not self.job_id:
            return
        self.progress(f"stopping job {self.job_id}")
        with contextlib.suppress(OutgrowError):
            self.cp.cancel(self.user, self.job_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = self.cp.actions.job(self.job_id)
            if job.status in TERMINAL_STATES and not self.cp.workers.busy(self.job_id):
                return
            time.sleep(0.05)
        log.error("job %s did not stop within 60 s; `outgrow cleanup` removes it", self.job_id)

    # -- events -------------------------------------------------------------------------
    def _instance(self) -> InstanceInfo | None:
        job = self.cp.actions.job(self.job_id)
        return self.provider.describe_instance(job.current_instance_id or "")

    def _where(self, inst: InstanceInfo) -> Event:
        t = inst.type
        where: Event = {"instance": inst.id, "type": t.name, "vcpus": t.vcpus}
        where |= {"memory_gib": t.memory_gib, "describe": t.describe(), "address": inst.address}
        image = self.spec.image
        port, token = image.port, self.cp.actions.job(self.job_id).jupyter_token
        if port is None:
            return where
        return where | job_urls(image.kind, inst.address, port, self.job_id, token)

    def _on_event(self, ev: EventView) -> None:
        inst = self._instance()
        if ev.type == "state" and ev.to_state == S.EXECUTING and ev.from_state == S.STARTING:
            if inst is None:
                return  # ended already: the exit event says how
            out: Event = {"event": "started", "job_id": self.job_id, "image": self.spec.image.name}
            out |= {"kind": self.spec.image.kind, "evade_oom": self.spec.evade_oom}
            out |= {"phase": "running", **self._where(inst)}
            if self.spec.image.is_jupyter:
                out["token"] = self.cp.actions.job(self.job_id).jupyter_token
            self.emit(out)
        elif ev.type == "migration" and inst is not None:
            self.migrations += 1
            d = ev.data
            timings = d.get("timings") or {}
            out = {"event": "migrated", "job_id": self.job_id, "reason": ev.reason}
            out |= {"from_instance": d.get("source_instance"), "from_type": ev.from_type}
            out |= {**self._where(inst), "to_type": ev.to_type, "downtime_s": ev.downtime_s}
            out |= {"checkpoint_bytes": ev.checkpoint_bytes, "mode": d.get("mode", "plain")}
            out |= {"lazy_pages": d.get("lazy_pages", 0)}
            out |= {"create_target_s": timings.get("create_target_s")}
            self.emit(out | {"total_s": timings.get("total_s")})
        elif ev.type == "error" and ev.reason.startswith("migration failed"):
            self.emit({"event": "migration_failed", "job_id": self.job_id, "message": ev.reason})
        elif ev.type == "policy" and ev.reason.startswith("evadeOOM"):
            self.emit({"event": "stalled", "job_id": self.job_id, "message": ev.reason})

    def _pump_logs(self, instance_id: str | None) -> None:
        if not self.spec.stream_logs:
            return
        for stream in ("stdout", "stderr"):
            while True:
                chunk = self.cp.jobdirs.read_log(
                    self.job_id, instance_id, stream, self.offsets[stream]
                )
                self.offsets[stream] = max(chunk.offset, self.offsets[stream])
                if chunk.data:
                    self.output(stream, chunk.data)
                if not chunk.data or self.offsets[stream] >= chunk.size:
                    break

    def _ended(self) -> int:
        job = self.cp.actions.job(self.job_id)
        code = job.exit_code
        phase = "exited" if job.status == S.COMPLETED else "failed"
        if phase == "exited":
            rc = 0 if code is None else int(code)
        else:
            rc = int(code) if code not in (None, 0) else 1
        ev: Event = {"event": "exited", "job_id": self.job_id, "phase": phase, "exit_code": code}
        ev |= {"message": job.status_reason, "migrations": self.migrations}
        d: Path | None = self.provider.local_job_dir(self.job_id)
        if d is not None:
            ev |= {"stdout_log": str(d / "logs/stdout.log"), "workspace": str(d / "workspace")}
            ev["stderr_log"] = str(d / "logs/stderr.log")
        self.emit(ev)
        return rc
