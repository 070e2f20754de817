"""What the control-plane commands share: the SDK client from the credentials, and waiting
for a job with a spinner on stderr that prints each status change."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

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
