"""Human views of the control plane's answers (rich tables and lines); pure functions of the
pydantic views, so they are testable without a server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from outgrow.client import TERMINAL
from outgrow.domain.jobs import EventView, InstanceView, JobView, TemplateView
from outgrow.domain.policy import describe_size

STATUS_STYLE: dict[str, str] = {
    "Submitted": "cyan",
    "Initializing": "cyan",
    "Starting": "cyan",
    "Executing": "green",
    "Floating": "magenta",
    "Suspending": "yellow",
    "Suspended": "blue",
    "Resuming": "yellow",
    "Completed": "green",
    "Cancelling": "yellow",
    "Cancelled": "dim",
    "FailToComplete": "red",
    "FailToExecute": "red",
    "NoAvailableHost": "red",
}


def print_wide(renderable: RenderableType) -> None:
    """Print on stdout; when it is not a terminal, as wide as the renderable wants (so a
    piped table is not cut at 80 columns)."""
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        wanted = Console(width=1000).measure(renderable).maximum
        width = max(console.width, wanted)
        console = Console(highlight=False, soft_wrap=False, width=width)
    console.print(renderable)


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    return f"{n / 1024**2:.1f} MiB"


def fmt_duration(seconds: float | None) -> str:
    """``45s``, ``12m05s``, ``3h07m``, ``2d04h``."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_time(t: datetime | None) -> str:
    if t is None:
        return "-"
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def uptime(job: JobView, now: datetime | None = None) -> float:
    """Seconds since submission (until the last update for a finished job)."""
    end = job.updated_at if job.status in TERMINAL else (now or datetime.now(UTC))
    start = job.submitted_at
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return max((end - start).total_seconds(), 0.0)


def size(job: JobView) -> str:
    """The current instance's size (``1c 0.5GiB``), else what was asked for."""
    if job.instance is not None:
        return f"{job.instance.vcpus:g}c {job.instance.memory_gib:g}GiB"
    if job.spec.instance_type:
        return job.spec.instance_type
    return f"-c {job.spec.cpu} -m {job.spec.mem}"


def inst_size(inst: InstanceView) -> str:
    return f"{inst.vcpus:g} vCPU / {describe_size('mem', inst.memory_gib)}"


def jobs_table(jobs: list[JobView], now: datetime | None = None) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("name", overflow="fold")
    for col in ("id", "image", "status", "type", "size", "uptime"):
        table.add_column(col, no_wrap=col in ("id", "status", "uptime"))
    table.add_column("cost", justify="right", no_wrap=True)
    for j in jobs:
        table.add_row(
            escape(j.name),
            j.id,
            escape(j.image),
            status_text(j.status),
            j.instance.type if j.instance else "-",
            size(j),
            fmt_duration(uptime(j, now)),
            f"${j.cost_usd:.4f}",
        )
    return table


def event_change(ev: EventView) -> str:
    """What an event changed, in a few words."""
    if ev.type == "state" and ev.to_state:
        return f"{ev.from_state} → {ev.to_state}" if ev.from_state else ev.to_state
    if ev.from_type and ev.to_type:
        out = f"{ev.from_type} → {ev.to_type}"
        if ev.downtime_s is not None:
            out += f", {ev.downtime_s:.2f} s down"
        if ev.data.get("mode") == "postcopy":
            out += " (post-copy)"
        if ev.checkpoint_bytes is not None:
            out += f", {fmt_bytes(ev.checkpoint_bytes)}"
        return out
    if ev.checkpoint_bytes is not None:
        return f"checkpoint {fmt_bytes(ev.checkpoint_bytes)}"
    return ""


def migration_line(job: JobView, ev: EventView) -> str:
    how = "post-copy" if ev.data.get("mode") == "postcopy" else "plain"
    return (
        f"job {job.name} moved {ev.from_type} → {ev.to_type}: downtime "
        f"{ev.downtime_s or 0:.2f} s ({how}), checkpoint {fmt_bytes(ev.checkpoint_bytes)} "
        f"({ev.reason})"
    )


def where(job: JobView) -> str:
    """``Executing on lc.small (1 vCPU / 1 GiB) at 198.18.0.2``."""
    out = job.status
    if job.instance is not None:
        i = job.instance
        out += f" on {i.type} ({inst_size(i)})" + (f" at {i.address}" if i.address else "")
    return out


def gateway_command(job: JobView, token: str) -> str:
    """How to use a jupyter-server job from a local JupyterLab (kernels run remotely)."""
    return f"jupyter lab --gateway-url={job.url} --GatewayClient.auth_token={token}"


def job_details(job: JobView, token: str | None = None) -> RenderableType:
    """Everything ``outgrow show`` prints: the job, its instances and its events."""
    s = job.spec
    head = Text.assemble(
        (job.name, "bold"), f" ({job.id}) ", status_text(job.status), f"  run {job.run}"
    )
    lines: list[RenderableType] = [head]

    def kv(key: str, value: Any) -> None:
        lines.append(Text.assemble((f"  {key:<15} ", "dim"), str(value)))

    if job.status_reason:
        kv("reason", job.status_reason)
    kv("owner", job.owner)
    kv("image", job.image + (f" (--jupyter {job.spec.jupyter})" if job.spec.jupyter else ""))
    if job.url:
        kv("url", job.url)
        if job.image == "jupyter-server" or s.image == "jupyter-server":
            kv("local Jupyter", gateway_command(job, token or "<your API token>"))
    if job.instance is not None:
        i = job.instance
        kv("instance", f"{i.id} {i.type} ({inst_size(i)}){' spot' if i.spot else ''}")
        if i.address:
            kv("address", i.address)
    kv("request", s.instance_type or f"-c {s.cpu} -m {s.mem}")
    kv("migrate policy", s.migrate_policy)
    kv("vm policy", s.vm_policy)
    idle = s.idle_timeout_s
    kv("idle timeout", "off" if not idle else fmt_duration(idle))
    every = job.checkpoint_interval_s
    kv("snapshots", f"every {fmt_duration(every)}" if every else "off")
    if s.env:
        kv("env", " ".join(f"{k}={v}" for k, v in s.env.items()))
    if s.publish:
        kv("publish", " ".join(s.publish))
    if s.allow_cidr:
        kv("allow", " ".join(s.allow_cidr))
    if s.script:
        first = s.script.strip().splitlines()[0]
        kv("script", f"{len(s.script.splitlines())} lines: {first[:60]}")
    kv("submitted", fmt_time(job.submitted_at))
    kv("uptime", fmt_duration(uptime(job)))
    kv("cost", f"${job.cost_usd:.4f}")
    if job.exit_code is not None:
        kv("exit code", job.exit_code)
    if job.instances:
        lines += [Text(""), instances_table(job.instances)]
    if job.security_group:
        lines += [Text(""), security_table(job.security_group)]
    if job.events:
        lines += [Text(""), events_table(job.events)]
    return Group(*lines)


def instances_table(insts: list[InstanceView]) -> Table:
    table = Table(title="instances", title_justify="left", box=None, header_style="bold")
    for col in ("id", "type", "size", "spot", "address", "status", "started", "ended"):
        table.add_column(col)
    table.add_column("cost", justify="right")
    for i in insts:
        table.add_row(
            i.id,
            i.type,
            inst_size(i),
            "yes" if i.spot else "no",
            i.address or "-",
            i.status,
            fmt_time(i.started_at),
            fmt_time(i.ended_at),
            f"${i.cost_usd:.4f}",
        )
    return table


def security_table(rules: list[dict[str, Any]]) -> Table:
    table = Table(
        title="security group (inbound first)", title_justify="left", box=None, header_style="bold"
    )
    for col in ("action", "direction", "proto", "port", "from", "why"):
        table.add_column(col)
    for r in rules:
        port = r.get("port")
        if r.get("to_port") not in (None, port):
            port = f"{port}→{r['to_port']}"
        table.add_row(
            str(r.get("action", "")),
            str(r.get("direction", "")),
            str(r.get("proto") or "any"),
            str(port if port is not None else "any"),
            str(r.get("from") or "any"),
            str(r.get("why", "")),
        )
    return table


def events_table(events: list[EventView]) -> Table:
    table = Table(title="events", title_justify="left", box=None, header_style="bold")
    for col in ("time", "type", "change", "reason"):
        table.add_column(col)
    for ev in events:
        table.add_row(
            fmt_time(ev.time),
            ev.type,
            event_change(ev),
            Text(ev.reason, style="red" if ev.type == "error" else ""),
        )
    return table


def template_details(t: TemplateView) -> RenderableType:
    s = t.spec
    rows = [
        ("image", s.image),
        ("request", s.instance_type or f"-c {s.cpu} -m {s.mem}"),
        ("migrate policy", s.migrate_policy),
        ("vm policy", s.vm_policy),
        ("idle timeout", "off" if not s.idle_timeout_s else fmt_duration(s.idle_timeout_s)),
    ]
    if s.env:
        rows.append(("env", " ".join(f"{k}={v}" for k, v in s.env.items())))
    if s.publish:
        rows.append(("publish", " ".join(s.publish)))
    if s.allow_cidr:
        rows.append(("allow", " ".join(s.allow_cidr)))
    if s.script:
        rows.append(("script", f"{len(s.script.splitlines())} lines"))
    lines: list[RenderableType] = [
        Text.assemble((t.name, "bold"), f" (template of {t.owner}, job name {s.name})")
    ]
    lines += [Text.assemble((f"  {k:<15}", "dim"), str(v)) for k, v in rows]
    return Group(*lines)
