"""Job commands, through the control plane's API: submit, ls, show, log, migrate, modify,
suspend, resume, cancel, restart (snapshots: cli/snapshots.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from outgrow.cli.jobspec import (
    build_spec,
    click_callback,
    load_job_file,
    merge_fields,
    parse_checkpoint_interval,
    parse_cidrs,
    parse_env,
    parse_idle,
    parse_publish,
    read_script,
    template_overrides,
)
from outgrow.cli.main import cli, emit_json, json_option, say
from outgrow.cli.remote import connect, job_argument, wait_for, wait_option
from outgrow.cli.render import (
    fmt_duration,
    job_details,
    jobs_table,
    migration_line,
    print_wide,
    where,
)
from outgrow.client import TERMINAL
from outgrow.domain.jobs import JobView
from outgrow.domain.states import JobState
from outgrow.errors import MigrationError, ValidationError

RUNNING = "Executing"


def policy_options(f: Any) -> Any:
    f = click.option(
        "--idle-timeout",
        callback=click_callback(parse_idle),
        metavar="DURATION",
        help="Jupyter jobs: suspend after this long idle (2h, 30m, 90s; 0 = never).",
    )(f)
    f = click.option(
        "--vm-policy",
        "--vmPolicy",
        "vm_policy",
        metavar="'[...]'",
        help="e.g. '[spotFirst=true,retryLimit=3,retryInterval=600s]'.",
    )(f)
    return click.option(
        "--migrate-policy",
        "--migratePolicy",
        "migrate_policy",
        metavar="'[...]'",
        help="e.g. '[mem.upperBoundRatio=90,mem.upperBoundDuration=30s,evadeOOM=true]'.",
    )(f)


checkpoint_option = click.option(
    "--checkpoint-interval",
    callback=click_callback(parse_checkpoint_interval),
    metavar="DURATION",
    help="Snapshot the running job this often (15m, 1h, 900; 0 or off: never). Default: "
    "every 15 min for Jupyter jobs, off for batch jobs.",
)


# ---- submit ---------------------------------------------------------------------------------


@cli.command("submit")
@click.argument(
    "job_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("-n", "--name", help="Job name (unique among your jobs).")
@click.option("-i", "--image", help="Image (see `outgrow image ls`).")
@click.option("-c", "--cpu", metavar="N|MIN:MAX", help="vCPUs, e.g. 2 or 2:8 (default 1).")
@click.option("-m", "--mem", metavar="GIB|MIN:MAX", help="Memory GiB, e.g. 4 or 4:64 (default 1).")
@click.option("--instance-type", metavar="TYPE", help="Start on this type (instead of -c/-m).")
@policy_options
@click.option(
    "-e",
    "--env",
    multiple=True,
    metavar="K=V",
    callback=click_callback(parse_env),
    help="Environment variable (repeatable).",
)
@click.option(
    "--publish",
    multiple=True,
    metavar="HOST:JOB",
    callback=click_callback(parse_publish),
    help="Publish a job port (repeatable), e.g. 8888:8888.",
)
@click.option(
    "--allow-cidr",
    multiple=True,
    metavar="CIDR",
    callback=click_callback(parse_cidrs),
    help="Let this network reach the published ports (repeatable).",
)
@click.option(
    "-j",
    "--script",
    "script_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The job script (python and OCI images).",
)
@click.option(
    "--jupyter",
    type=click.Choice(["lab", "server"]),
    help="OCI images: run the image's own JupyterLab or Jupyter Server (outgrow's token "
    "and stable URL) instead of its command.",
)
@checkpoint_option
@click.option("--template", metavar="NAME", help="Start from a saved template.")
@wait_option
@json_option
def submit(
    job_file: Path | None,
    name: str | None,
    image: str | None,
    cpu: str | None,
    mem: str | None,
    instance_type: str | None,
    migrate_policy: str | None,
    vm_policy: str | None,
    idle_timeout: float | None,
    env: dict[str, str] | None,
    publish: list[str] | None,
    allow_cidr: list[str] | None,
    script_path: Path | None,
    jupyter: str | None,
    checkpoint_interval: float | None,
    template: str | None,
    wait: bool,
    wait_timeout: float,
    as_json: bool,
) -> None:
    """Submit a job: flags, a YAML job file with the same fields (the seed's spellings such
    as migratePolicy/vmPolicy too), or a template; flags override the file."""
    flags = {
        "name": name,
        "image": image,
        "cpu": cpu,
        "mem": mem,
        "instance_type": instance_type,
        "migrate_policy": migrate_policy,
        "vm_policy": vm_policy,
        "idle_timeout_s": idle_timeout,
        "env": env,
        "publish": publish,
        "allow_cidr": allow_cidr,
        "script": read_script(script_path) if script_path is not None else None,
        "jupyter": jupyter,
        "checkpoint_interval": checkpoint_interval,
    }
    data = merge_fields(load_job_file(job_file) if job_file else {}, flags)
    with connect() as c:
        if template:
            job = c.submit_template(template, template_overrides(data))
        else:
            job = c.submit(build_spec(data))
        if not as_json:
            source = f"template {template}" if template else str(job_file or "flags")
            say(f"submitted job {job.name} ({job.id}) from {source}: {job.status}")
        if wait:
            job = wait_for(
                c,
                job,
                {RUNNING, "Completed"},
                after_event=0,
                timeout=wait_timeout,
                fail_on=TERMINAL | {"NoAvailableHost"},
            )
    if as_json:
        emit_json(job.model_dump(mode="json") if wait else {"id": job.id})
        return
    if wait:
        click.echo(f"job {job.name} ({job.id}) is {where(job)}")
        if job.url:
            click.echo(f"  open: {job.url}  (in a browser, once: {job.url}?token=<API token>)")
    else:
        click.echo(job.id)


# ---- ls, show, log --------------------------------------------------------------------------


@cli.command("ls")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in JobState], case_sensitive=False),
    help="Only jobs in this status (repeatable).",
)
@json_option
def ls(statuses: tuple[str, ...], as_json: bool) -> None:
    """List your jobs (every job for admins)."""
    with connect() as c:
        jobs = c.jobs(list(statuses) or None)
    if as_json:
        emit_json([j.model_dump(mode="json") for j in jobs])
    elif not jobs:
        say("no jobs" + (f" in {', '.join(statuses)}" if statuses else ""))
    else:
        print_wide(jobs_table(jobs))


cli.add_command(ls, "list")  # float's spelling


@cli.command("show")
@job_argument
@json_option
def show(job: str, as_json: bool) -> None:
    """Everything about a job: spec, instances (history), events with their reasons, URL."""
    with connect() as c:
        view = c.job(job)
        token = c.token
    if as_json:
        emit_json(view.model_dump(mode="json"))
    else:
        print_wide(job_details(view, token))


@cli.command("open")
@job_argument
@click.option("--print", "print_only", is_flag=True, help="Print the link instead of opening it.")
@json_option
def open_(job: str, print_only: bool, as_json: bool) -> None:
    """Open the job's stable URL in a browser, logged in by a one-time link."""
    with connect() as c:
        link = c.open_link(job)
    if as_json:
        emit_json(link)
        return
    if not print_only:
        import webbrowser

        try:
            opened = webbrowser.open(link["url"])
        except webbrowser.Error:
            opened = False
        if opened:
            say(f"opened {link['stable_url']} (one-time link, valid {link['expires_in_s']:g} s)")
            return
    click.echo(link["url"])


@cli.command("log")
@job_argument
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends (Ctrl-C).")
@click.option("--stderr", "use_stderr", is_flag=True, help="The job's stderr, not its stdout.")
@json_option
def log(job: str, follow: bool, use_stderr: bool, as_json: bool) -> None:
    """The job's output (kept after the job ends, moves and suspends). With --json: one
    document {stream, data, offset, size}; with -f, one per chunk as it comes."""
    stream = "stderr" if use_stderr else "stdout"
    with connect() as c:
        ref = c.job(job).id
        offset, size, data = 0, 0, []
        try:
            while True:
                chunk = c.logs(ref, stream, offset)
                size = chunk["size"]
                if chunk["data"]:
                    if as_json and not follow:
                        data.append(chunk["data"])
                    elif as_json:
                        emit_json({"stream": stream, **chunk})
                    else:
                        sys.stdout.write(chunk["data"])
                        sys.stdout.flush()
                done = chunk["offset"] == offset or chunk["offset"] >= size
                offset = chunk["offset"]
                if not done:
                    continue
                if not follow:
                    break
                if c.job(ref).status in TERMINAL:
                    follow = False  # one last read: output written just before the end
                    continue
                time.sleep(1.0)
        except KeyboardInterrupt:
            return
    if as_json and not follow:
        emit_json({"stream": stream, "data": "".join(data), "offset": offset, "size": size})


# ---- actions --------------------------------------------------------------------------------


@cli.command("migrate")
@job_argument
@click.option(
    "-m",
    "--mem",
    type=click.FloatRange(min=0, min_open=True),
    metavar="GIB",
    help="Target memory.",
)
@click.option(
    "-c", "--cpu", type=click.FloatRange(min=0, min_open=True), metavar="N", help="Target vCPUs."
)
@click.option("--instance-type", metavar="TYPE", help="Target instance type.")
@click.option(
    "--mode",
    type=click.Choice(["auto", "plain", "postcopy"]),
    default=None,
    help="How the memory moves: plain (all before the restore), postcopy (after it: short "
    "downtime, but the job is lost if the transfer breaks), auto (by size). Default: the "
    "job's moveMode policy (auto).",
)
@wait_option
@json_option
def migrate(
    job: str,
    mem: float | None,
    cpu: float | None,
    instance_type: str | None,
    mode: str | None,
    wait: bool,
    wait_timeout: float,
    as_json: bool,
) -> None:
    """Move a running job, live, to another instance type (the cheapest with --cpu/--mem)."""
    if mem is None and cpu is None and instance_type is None:
        raise ValidationError("give --mem, --cpu or --instance-type", field="instance_type")
    with connect() as c:
        ref = c.job(job).id
        before = c.last_event_id(ref)
        view = c.migrate(ref, instance_type, cpu, mem, mode)
        if not wait:
            _done(view, as_json, f"job {view.name}: migration queued")
            return
        view = wait_for(c, view, {RUNNING}, after_event=before, timeout=wait_timeout)
        evs = c.events(ref, since=before)
    moved = [e for e in evs if e.type == "migration"]
    if not moved:
        errors = [e.reason for e in evs if e.type == "error"]
        raise MigrationError(errors[-1] if errors else f"job {view.name} did not move")
    ev = moved[-1]
    if as_json:
        mig = ev.model_dump(mode="json")
        emit_json({**view.model_dump(mode="json"), "migration": mig, "mode": ev.data.get("mode")})
        return
    click.echo(migration_line(view, ev))
    click.echo(f"job {view.name} is {where(view)}")


@cli.command("modify")
@job_argument
@policy_options
@checkpoint_option
@json_option
def modify(
    job: str,
    migrate_policy: str | None,
    vm_policy: str | None,
    idle_timeout: float | None,
    checkpoint_interval: float | None,
    as_json: bool,
) -> None:
    """Change a job's policies and snapshot interval (they apply from the next decision
    on)."""
    given = (migrate_policy, vm_policy, idle_timeout, checkpoint_interval)
    if all(v is None for v in given):
        raise ValidationError(
            "give --migrate-policy, --vm-policy, --idle-timeout or --checkpoint-interval",
            field="migrate_policy",
        )
    with connect() as c:
        view = c.modify(job, migrate_policy, vm_policy, idle_timeout, checkpoint_interval)
    if as_json:
        emit_json(view.model_dump(mode="json"))
        return
    s = view.spec
    click.echo(f"job {view.name}: migrate policy {s.migrate_policy}, vm policy {s.vm_policy}")
    idle = "off" if not s.idle_timeout_s else f"{s.idle_timeout_s:g} s"
    click.echo(f"  idle timeout {idle}")
    every = view.checkpoint_interval_s
    click.echo(f"  snapshots {'every ' + fmt_duration(every) if every else 'off'}")


# action → (what to wait for, what means it failed besides the terminal statuses)
ACTIONS: dict[str, tuple[set[str], set[str]]] = {
    "suspend": ({"Suspended"}, {RUNNING}),
    "resume": ({RUNNING}, {"Suspended"}),
    "cancel": ({"Cancelled"}, set()),
    "restart": ({RUNNING, "Completed"}, {"NoAvailableHost"}),
}

HELP = {
    "suspend": "Checkpoint a running job and release its instance.",
    "resume": "Restore a suspended job on a new instance.",
    "cancel": "Stop a job and release its instance (and checkpoint).",
    "restart": "Start a finished, failed or cancelled job again (a new run).",
}


def _make_action(action: str) -> None:
    @cli.command(action, help=HELP[action])
    @job_argument
    @wait_option
    @json_option
    def command(job: str, wait: bool, wait_timeout: float, as_json: bool) -> None:
        want, failing = ACTIONS[action]
        with connect() as c:
            ref = c.job(job).id
            before = c.last_event_id(ref)
            view: JobView = getattr(c, action)(ref)
            if wait:
                fail = (set(TERMINAL) | failing) - want
                view = wait_for(
                    c, view, want, after_event=before, timeout=wait_timeout, fail_on=fail
                )
        _done(view, as_json, f"job {view.name} is {where(view)}" if wait else None, action)


def _done(view: JobView, as_json: bool, line: str | None, action: str = "") -> None:
    if as_json:
        emit_json(view.model_dump(mode="json"))
    else:
        click.echo(line or f"job {view.name}: {action} queued (now {view.status})")


for _action in ACTIONS:
    _make_action(_action)
