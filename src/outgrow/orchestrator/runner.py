"""The foreground single-job runner behind ``outgrow run`` (until the control plane exists).

Prepare the image, create the instance, start the job, stream its logs, move it to a larger
type when it stalls at its memory limit (evadeOOM); on the job's end or an interrupt, delete
every instance it created. Output goes through callbacks: no terminal, no click here.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from outgrow.agent.client import AgentClient
from outgrow.agent.images import ImageSpec
from outgrow.domain.instance_types import Catalog, InstanceType
from outgrow.errors import (
    AgentError,
    MigrationError,
    OutgrowError,
    RuntimeFailure,
    ValidationError,
)
from outgrow.orchestrator.migrate import Migrator, agent
from outgrow.providers.base import InstanceInfo, Provider

log = logging.getLogger("outgrow.runner")

JUPYTER_KINDS = ("jupyter-lab", "jupyter-server")
ENDED = ("exited", "failed", "stopped")
RUNNER_TAG = "outgrow:runner"
EXIT_INTERRUPTED = 130

Event = dict[str, Any]


# ---- choosing types -----------------------------------------------------------------------


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


def next_larger(
    catalog: Catalog, current: InstanceType, max_type: InstanceType | None = None
) -> InstanceType | None:
    """Where an OOM-stalled job goes: the cheapest type with at least twice the memory,
    else the largest type with more memory (never above ``max_type``); None if none."""
    larger = [
        t for t in catalog.types if t.memory_gib > current.memory_gib + 1e-9 and within(t, max_type)
    ]
    if not larger:
        return None
    doubled = [t for t in larger if t.memory_gib >= 2 * current.memory_gib - 1e-9]
    if doubled:
        return min(doubled, key=lambda t: (t.price_per_hour, t.memory_gib, t.vcpus, t.name))
    top = max(t.memory_gib for t in larger)
    return min(
        (t for t in larger if t.memory_gib >= top - 1e-9),
        key=lambda t: (t.price_per_hour, t.vcpus, t.name),
    )


@dataclass(frozen=True)
class RunSpec:
    """What to run (``outgrow run``'s options, validated)."""

    image: ImageSpec
    itype: InstanceType
    script: str = ""
    evade_oom: bool = True
    max_type: InstanceType | None = None
    stream_logs: bool = True


def job_body(spec: RunSpec, job_id: str, token: str) -> dict[str, Any]:
    """The agent's start-job body (``POST /v1/job``)."""
    image = spec.image
    body: dict[str, Any] = {"job_id": job_id, "kind": image.kind, "image": image.to_dict()}
    body |= {"script": spec.script, "port": image.default_port or 8888, "jupyter_token": token}
    return body | {"base_url": f"/jobs/{job_id}/", "evade_oom": spec.evade_oom}


def job_urls(kind: str, address: str, port: int, job_id: str, token: str) -> dict[str, str]:
    base = f"http://{address}:{port}/jobs/{job_id}/"
    if kind == "jupyter-lab":
        return {"base_url": base, "url": f"{base}lab?token={token}"}
    if kind == "jupyter-server":
        command = f"jupyter lab --gateway-url={base} --GatewayClient.auth_token={token}"
        return {"base_url": base, "gateway_command": command}
    return {}


# ---- the runner ---------------------------------------------------------------------------


def _no_output(*_: Any) -> None:
    return None


class JobRunner:
    """Runs one job in the foreground. ``run()`` returns the process exit code: the job's
    own on its end, 130 when interrupted. Every instance it created is deleted, always."""

    def __init__(
        self,
        provider: Provider,
        spec: RunSpec,
        *,
        on_event: Callable[[Event], None] = _no_output,
        on_progress: Callable[[str], None] = _no_output,
        on_output: Callable[[str, str], None] = _no_output,
        jobs_dir: Path | None = None,
        shield: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
        poll_s: float = 0.05,
        start_timeout_s: float = 300.0,
        retry_s: float = 10.0,
    ):
        self.provider = provider
        self.spec = spec
        self.emit, self.progress, self.output = on_event, on_progress, on_output
        self.jobs_dir = jobs_dir
        self.shield = shield
        self.poll_s, self.start_timeout_s, self.retry_s = poll_s, start_timeout_s, retry_s
        self.run_id = secrets.token_hex(4)
        self.job_id = "j" + secrets.token_hex(4)
        self.token = secrets.token_hex(16) if spec.image.kind in JUPYTER_KINDS else ""
        self.port = spec.image.default_port or 8888
        self.created: list[str] = []  # ids of instances this run created and not yet deleted
        self.current: InstanceInfo | None = None
        self.offsets = {"stdout": 0, "stderr": 0}
        self.migrations = 0
        self._migrating = False
        self._stall_reported = False
        self._retry_at = 0.0

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> int:
        interrupted: KeyboardInterrupt | None = None
        try:
            return self._run()
        except KeyboardInterrupt as exc:
            interrupted = exc
            return EXIT_INTERRUPTED
        finally:
            with self.shield():
                if interrupted is not None:
                    self._stop_job()
                self._delete_all()
                if interrupted is not None:
                    signum = getattr(interrupted, "signum", 2)  # see cli.main.Interrupted
                    self.emit({"event": "interrupted", "job_id": self.job_id, "signal": signum})

    def _run(self) -> int:
        spec = self.spec
        self.progress(f"preparing image {spec.image.name}")
        self.provider.prepare_image(spec.image, progress=self.progress)
        self.progress(f"creating an instance ({spec.itype.name}, {spec.itype.describe()})")
        inst = self._create(spec.itype.name)
        self.current = inst
        with agent(inst) as a:
            a.start_job(job_body(spec, self.job_id, self.token))
            st = self._wait_started(a)
        self.emit(self._started_event(inst, st))
        return self._watch()

    def _create(self, type_name: str) -> InstanceInfo:
        tags = {RUNNER_TAG: self.run_id, "outgrow:job": self.job_id}
        inst = self.provider.create_instance(type_name, tags=tags)
        self.created.append(inst.id)
        return inst

    def _delete(self, iid: str) -> None:
        try:
            self.provider.delete_instance(iid)
        except OutgrowError as exc:
            log.error("could not delete instance %s: %s", iid, exc)
            self.progress(f"could not delete instance {iid}: {exc} (`outgrow cleanup` removes it)")
        else:
            with contextlib.suppress(ValueError):
                self.created.remove(iid)

    def _delete_all(self) -> None:
        ids = list(self.created)
        # An interrupt between create_instance() returning and our bookkeeping: find by tag.
        with contextlib.suppress(OutgrowError):
            for inst in self.provider.list_instances():
                if inst.tags.get(RUNNER_TAG) == self.run_id and inst.id not in ids:
                    ids.append(inst.id)
        for iid in ids:
            self.progress(f"deleting instance {iid}")
            self._delete(iid)

    def _stop_job(self) -> None:
        inst = self.current
        if inst is None or self._migrating:  # a frozen/dumping source: deleting is enough
            return
        self.progress(f"stopping job {self.job_id}")
        try:
            with AgentClient(inst.agent_url, inst.agent_token, timeout=10) as a:
                a.stop_job(grace_s=3.0)
        except OutgrowError as exc:
            log.info("stopping job %s: %s", self.job_id, exc)

    # -- starting -------------------------------------------------------------------------
    def _wait_started(self, a: AgentClient) -> dict[str, Any]:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            st = a.job()
            phase = st.get("phase")
            if phase == "running":
                return st
            if phase in ENDED:
                if st.get("pid") is None:  # it never ran: a start failure, not an exit
                    why = st.get("message") or phase
                    raise RuntimeFailure(f"job {self.job_id} failed to start: {why}")
                return st  # a batch script that already ended; _watch reports it
            if time.monotonic() > deadline:
                wait = f"{self.start_timeout_s:g} s (still {phase})"
                raise RuntimeFailure(f"job {self.job_id} did not start within {wait}")
            time.sleep(self.poll_s)

    def _where(self, inst: InstanceInfo) -> dict[str, Any]:
        t = inst.type
        where = {"instance": inst.id, "type": t.name, "vcpus": t.vcpus, "memory_gib": t.memory_gib}
        where |= {"describe": t.describe(), "address": inst.address}
        kind, addr = self.spec.image.kind, inst.address
        return where | job_urls(kind, addr, self.port, self.job_id, self.token)

    def _started_event(self, inst: InstanceInfo, st: dict[str, Any]) -> Event:
        image = self.spec.image
        ev: Event = {"event": "started", "job_id": self.job_id, "image": image.name}
        ev |= {"kind": image.kind, "evade_oom": self.spec.evade_oom, **self._where(inst)}
        return ev | {"phase": st.get("phase")} | ({"token": self.token} if self.token else {})

    # -- watching -------------------------------------------------------------------------
    def _watch(self) -> int:
        errors_since: float | None = None
        while True:
            inst = self.current
            assert inst is not None
            with agent(inst, timeout=10) as a:
                while self.current is inst:
                    try:
                        self._pump_logs(a)
                        st = a.job()
                    except AgentError as exc:
                        now = time.monotonic()
                        errors_since = errors_since or now
                        if now - errors_since > 15:
                            raise AgentError(
                                f"lost the agent of instance {inst.id}: {exc}", detail=exc.detail
                            ) from exc
                        time.sleep(0.5)
                        continue
                    errors_since = None
                    if st.get("phase") in ENDED:
                        self._pump_logs(a)
                        return self._ended(st)
                    if st.get("oom_stalled") and self.spec.evade_oom:
                        self._on_stall(inst)
                    else:
                        self._stall_reported = False
                    if self.current is inst:
                        time.sleep(self.poll_s)

    def _pump_logs(self, a: AgentClient) -> None:
        if not self.spec.stream_logs:
            return
        for stream in ("stdout", "stderr"):
            while True:
                r = a.logs(stream, self.offsets[stream])
                data = str(r.get("data") or "")
                self.offsets[stream] = int(r.get("offset") or self.offsets[stream])
                if data:
                    self.output(stream, data)
                if not data or self.offsets[stream] >= int(r.get("size") or 0):
                    break

    def _ended(self, st: dict[str, Any]) -> int:
        phase = str(st.get("phase"))
        code = st.get("exit_code")
        if phase == "exited":
            rc = 0 if code is None else int(code)
        else:
            rc = int(code) if code not in (None, 0) else 1
        ev: Event = {"event": "exited", "job_id": self.job_id, "phase": phase, "exit_code": code}
        ev |= {"message": st.get("message") or "", "migrations": self.migrations}
        if self.jobs_dir is not None:
            d = self.jobs_dir / self.job_id
            ev |= {"stdout_log": str(d / "logs/stdout.log"), "workspace": str(d / "workspace")}
            ev["stderr_log"] = str(d / "logs/stderr.log")
        self.emit(ev)
        return rc

    # -- evadeOOM -------------------------------------------------------------------------
    def _on_stall(self, inst: InstanceInfo) -> None:
        catalog = self.provider.instance_types()
        to = next_larger(catalog, inst.type, self.spec.max_type)
        if to is None:
            if not self._stall_reported:
                self._stall_reported = True
                limit = f" (max type {self.spec.max_type.name})" if self.spec.max_type else ""
                msg = f"no larger instance type fits{limit}; the job stays stalled at its "
                msg += f"memory limit ({fmt_mem(inst.type.memory_gib)})"
                ev: Event = {"event": "stalled", "job_id": self.job_id, "message": msg}
                self.emit(ev | {"type": inst.type.name})
            return
        if time.monotonic() < self._retry_at:
            return
        reason = (
            f"evadeOOM: memory limit reached ({fmt_mem(inst.type.memory_gib)}) "
            f"→ {to.name} ({to.describe()})"
        )
        self.progress(f"job {self.job_id} stalled at its memory limit; moving it to {to.name}")
        # Left set if an interrupt lands mid-move: the frozen source is then only deleted.
        self._migrating = True
        t0 = time.monotonic()
        try:
            target = self._create(to.name)
        except OutgrowError as exc:
            self._migrating = False
            return self._migration_failed(inst, to, f"could not create the target: {exc}")
        create_s = round(time.monotonic() - t0, 3)
        try:
            r = Migrator(self.provider).migrate(
                inst, target=target, reason=reason, on_step=lambda s: log.info("%s", s)
            )
        except MigrationError as exc:
            self._delete(target.id)
            self._migrating = False
            return self._migration_failed(inst, to, str(exc))
        self._migrating = False
        if self.provider.describe_instance(inst.id) is None:
            with contextlib.suppress(ValueError):
                self.created.remove(inst.id)
        self.current = target
        self.migrations += 1
        self._stall_reported = False
        ev = {"event": "migrated", "job_id": self.job_id, "reason": reason}
        ev |= {"from_instance": inst.id, "from_type": r.from_type, **self._where(target)}
        ev |= {"to_type": r.to_type, "downtime_s": r.downtime_s, "create_target_s": create_s}
        ev |= {"total_s": round(time.monotonic() - t0, 3), "rss_bytes": r.rss_bytes}
        self.emit(ev | {"checkpoint_bytes": r.checkpoint_bytes})
        return None

    def _migration_failed(self, inst: InstanceInfo, to: InstanceType, message: str) -> None:
        self._retry_at = time.monotonic() + self.retry_s
        ev: Event = {"event": "migration_failed", "job_id": self.job_id, "message": message}
        ev |= {"from_type": inst.type.name, "to_type": to.name}
        self.emit(ev | {"retry_in_s": self.retry_s})
