"""Snapshot commands, through the control plane's API: ``snapshot`` (take one now),
``snapshots`` (list a job's), ``restore`` (roll a running job back to one)."""

from __future__ import annotations

import click

from outgrow.cli.main import cli, emit_json, json_option, say
from outgrow.cli.remote import connect, job_argument
from outgrow.cli.render import fmt_bytes, where


@cli.command("snapshot")
@job_argument
@json_option
def snapshot(job: str, as_json: bool) -> None:
    """Take a snapshot of a running job now (it is frozen for the dump only, then runs
    on); waits until it is stored and prints its id, size and the time the job was frozen."""
    with connect() as c:
        r = c.snapshot(job)
    if as_json:
        emit_json(r.model_dump(mode="json"))
        return
    s = r.snapshot
    click.echo(
        f"snapshot {s.id}: {fmt_bytes(s.size_bytes)}, job frozen {s.frozen_s:.2f} s "
        f"({s.duration_s:.2f} s in all)"
    )
    if r.deleted:
        say(f"deleted older snapshots (retention): {', '.join(r.deleted)}")


@cli.command("snapshots")
@job_argument
@json_option
def snapshots(job: str, as_json: bool) -> None:
    """List a job's snapshots, oldest first: id, time (UTC), size, frozen seconds."""
    with connect() as c:
        snaps = c.snapshots(job)
    if as_json:
        emit_json([s.model_dump(mode="json") for s in snaps])
        return
    if not snaps:
        say("no snapshots")
        return
    click.echo(f"{'ID':<12} {'TIME (UTC)':<20} {'SIZE':>10} {'FROZEN':>8}  REASON")
    for s in snaps:
        t = s.time.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{s.id:<12} {t:<20} {fmt_bytes(s.size_bytes):>10} {s.frozen_s:>7.2f}s  {s.reason}"
        )


@cli.command("restore")
@job_argument
@click.option("--from", "snapshot_id", required=True, metavar="SNAPSHOT", help="The snapshot's id.")
@json_option
def restore(job: str, snapshot_id: str, as_json: bool) -> None:
    """Roll a running job back to one of its snapshots: it is restored on a fresh
    instance and replaces the running job (whose work since the snapshot is lost; files
    in the job directory are not rolled back). If that fails, the job runs on as it was."""
    with connect() as c:
        view = c.restore(job, snapshot_id)
    if as_json:
        emit_json(view.model_dump(mode="json"))
        return
    click.echo(f"job {view.name} restored from snapshot {snapshot_id}: {where(view)}")
