"""What the control-plane commands share: the SDK client from the credentials, and waiting
for a job with a spinner on stderr that prints each status change."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

import click
from rich.console import Console
from rich.markup import escape

from outgrow.cli.main import F
from outgrow.cli.render import STATUS_STYLE
from outgrow.client import Client
from outgrow.domain.jobs import EventView, JobView

DEFAULT_WAIT_S = 900.0


def connect() -> Client:
    """The SDK client of the logged-in control plane (AuthError: run `outgrow login`)."""
    return Client()


def job_argument(f: F) -> F:
    """The job a command acts on: the positional JOB, or ``-j/--job JOB`` as MemVerge's
    ``float`` spells it; exactly one of them (a usage error otherwise). The command gets
    it as ``job``."""

    @functools.wraps(f)
    def command(*args: Any, job: str | None, job_option: str | None, **kwargs: Any) -> Any:
        if job is not None and job_option is not None:
            raise click.UsageError(
                f"give the job once: JOB ({job}) or -j ({job_option}), not both",
                ctx=click.get_current_context(),
            )
        if job is None and job_option is None:
            raise click.UsageError(
                "which job? give JOB (an id or name) or -j JOB", ctx=click.get_current_context()
            )
        return f(*args, job=job if job is not None else job_option, **kwargs)

    command = click.option(
        "-j", "--job", "job_option", metavar="JOB", help="The job (id or name), instead of JOB."
    )(command)
    return cast(F, click.argument("job", required=False)(command))


def wait_option(f: F) -> F:
    f = click.option(
        "--timeout",
        "wait_timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_WAIT_S,
        show_default=True,
        metavar="SECONDS",
        help="With --wait: give up (exit 1) after this long.",
    )(f)
    return click.option("--wait", is_flag=True, help="Wait until the action is done.")(f)


def wait_for(
    c: Client,
    job: JobView,
    statuses: Iterable[str],
    *,
    after_event: int | None,
    timeout: float,
    fail_on: Iterable[str] | None = None,
) -> JobView:
    """``Client.wait`` with a rich spinner on stderr; every status change is printed."""
    want = sorted(set(statuses))
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    label = f"job {escape(job.name)}: waiting for {' or '.join(want)}"
    with console.status(f"{label} (now {job.status})") as spinner:

        def on_change(status: str, ev: EventView | None) -> None:
            style = STATUS_STYLE.get(status, "")
            when = (ev.time.astimezone() if ev else datetime.now().astimezone()).strftime(
                "%H:%M:%S"
            )
            why = f" — {escape(ev.reason)}" if ev is not None and ev.reason else ""
            shown = f"[{style}]{status}[/]" if style else status
            console.print(f"  {when} {shown}{why}")
            spinner.update(f"{label} (now {status})")

        return c.wait(
            job.id,
            statuses,
            timeout=timeout,
            on_change=on_change,
            fail_on=fail_on,
            after_event=after_event,
        )
