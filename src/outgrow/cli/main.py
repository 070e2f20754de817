"""The ``outgrow`` command: the group, error handling and output helpers.

Conventions of every command: human output is for the terminal (rich, on stdout for the
result and on stderr for progress); ``--json`` puts machine output, and nothing else, on
stdout. An error is one line on stderr, ``outgrow: error: <message>``, with exit code 1
(2 for usage errors); the global ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click
import pydantic
from rich.console import Console

from outgrow import __version__
from outgrow.errors import AuthError, ConfigError, OutgrowError
from outgrow.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

ROOT_MESSAGE = "this command needs root (namespaces, cgroups, CRIU)"


class State:
    """What the group passes down to its commands (``ctx.obj``)."""

    def __init__(self, debug: bool = False, verbose: int = 0):
        self.debug = debug
        self.verbose = verbose
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings


def load_settings() -> Settings:
    """Fresh settings from the environment; a bad value is a ConfigError naming the variable."""
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        name = "OUTGROW_" + str(err["loc"][0]).upper() if err.get("loc") else "settings"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {name}: {msg}", field=name) from exc


def one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def fail(message: str, *, debug: bool = False, exc: BaseException | None = None) -> NoReturn:
    """Print ``outgrow: error: <message>`` (or, with --debug, the traceback) and exit 1."""
    if debug and exc is not None:
        traceback.print_exception(exc, file=sys.stderr)
        detail = getattr(exc, "detail", None)
        if detail:
            click.echo(f"detail:\n{detail}", err=True)
    click.echo(f"outgrow: error: {one_line(message)}", err=True)
    raise click.exceptions.Exit(1)


class OutgrowGroup(click.Group):
    """Turns every non-click exception into the one-line error (or a traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OutgrowError as exc:
            fail(exc.message, debug=_debug(ctx), exc=exc)
        except KeyboardInterrupt as exc:
            if _debug(ctx):
                traceback.print_exception(exc, file=sys.stderr)
            click.echo("outgrow: interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except Exception as exc:
            fail(f"{type(exc).__name__}: {exc}", debug=_debug(ctx), exc=exc)


def _debug(ctx: click.Context) -> bool:
    obj = ctx.find_root().obj
    return bool(obj.debug) if isinstance(obj, State) else False


def setup_logging(verbose: int, debug: bool) -> None:
    """Quiet by default (errors reach the user as the one-line message); -v INFO, -vv DEBUG."""
    level = logging.CRITICAL + 1
    if verbose >= 2 or debug:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_outgrow", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("outgrow: %(levelname)s %(name)s: %(message)s"))
    handler._outgrow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@click.group(cls=OutgrowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="outgrow")
@click.option("--debug", is_flag=True, help="Show tracebacks (and debug logs) on errors.")
@click.option("-v", "--verbose", count=True, help="Log more: -v INFO, -vv DEBUG.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """outgrow: when your notebook outgrows its machine, outgrow moves it, live, to a
    bigger one."""
    ctx.obj = State(debug=debug, verbose=verbose)
    setup_logging(verbose, debug)


# ---- helpers for commands ----------------------------------------------------------------


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine output on stdout.")(f)


def state() -> State:
    obj = click.get_current_context().find_root().obj
    if not isinstance(obj, State):  # a command invoked without the group
        obj = State()
    return obj


def require_root() -> None:
    if os.geteuid() != 0:
        raise AuthError(ROOT_MESSAGE)


def emit_json(obj: Any) -> None:
    """One JSON document on one line of stdout, flushed (event streams are read live)."""
    click.echo(json.dumps(obj, default=str, ensure_ascii=False))
    sys.stdout.flush()


def out() -> Console:
    return Console(highlight=False, soft_wrap=False)


def say(line: str) -> None:
    """A human line on stderr (progress, notes), plain text, flushed."""
    click.echo(line, err=True)
    sys.stderr.flush()


# ---- `run`: events for humans, signals ------------------------------------------------------


def fmt_bytes(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


Event = dict[str, Any]  # what `outgrow run` reports (controlplane/foreground.py)


def human_event(ev: Event) -> list[str]:
    kind, jid = ev["event"], ev.get("job_id")
    if kind in ("started", "migrated"):
        where = f"{ev['instance']} ({ev['type']}, {ev['describe']}) at {ev['address']}"
        if kind == "started":
            lines = [f"job {jid} running on {where}"]
        else:
            lines = [
                f"job {jid} moved {ev['from_type']} → {ev['to_type']}: "
                f"downtime {ev['downtime_s']:.2f} s, checkpoint {fmt_bytes(ev['checkpoint_bytes'])}"
                f", now on {where}" + (f" — {ev['url']}" if "url" in ev else "")
            ]
            if "gateway_command" in ev:
                lines.append(f"  new gateway URL: {ev['base_url']}")
            return lines
        if "url" in ev:
            lines.append(f"  open: {ev['url']}")
        elif "gateway_command" in ev:
            lines.append(f"  base URL: {ev['base_url']}")
            lines.append(f"  from your JupyterLab: {ev['gateway_command']}")
        lines.append("  Ctrl-C stops the job and deletes its instance")
        return lines
    if kind == "stalled":
        return [f"job {jid}: {ev['message']}"]
    if kind == "migration_failed":
        return [f"job {jid}: {ev['message']}"]
    if kind == "exited":
        code = ev.get("exit_code")
        what = "finished" if ev["phase"] == "exited" else f"{ev['phase']}: {ev['message']}"
        lines = [f"job {jid} {what} (exit status {code if code is not None else '?'})"]
        if "stdout_log" in ev:
            lines.append(f"  logs: {ev['stdout_log']} {ev['stderr_log']}")
        return lines
    if kind == "interrupted":
        return [f"job {jid} stopped (signal {ev['signal']}); its instances are deleted"]
    return [str(ev)]


class Interrupted(KeyboardInterrupt):
    """Raised (by a signal handler) to stop a run; carries the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _note_busy(_signum: int, _frame: FrameType | None) -> None:
    say("outgrow: still cleaning up, please wait")


@contextlib.contextmanager
def _on_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``handler`` for a while (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def signals_to_interrupt() -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM raise Interrupted (the runner then stops the job and cleans up)."""
    return _on_signals(_raise_interrupt)


def shield() -> contextlib.AbstractContextManager[None]:
    """While instances are being deleted, a further Ctrl-C only prints a note."""
    return _on_signals(_note_busy)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: returns the exit code."""
    try:
        cli.main(args=argv, prog_name="outgrow", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
