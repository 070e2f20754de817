"""The control plane itself (``up``), accounts (``login``, ``token``), and the API's images
and templates (``image ls|add|rm``, ``template save|ls|show|rm``)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from outgrow import credentials
from outgrow.cli.local import image
from outgrow.cli.main import cli, emit_json, json_option, require_root, say, state
from outgrow.cli.remote import connect
from outgrow.cli.render import fmt_bytes, fmt_time, print_wide, template_details
from outgrow.client import Client
from outgrow.errors import ValidationError


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: the API is reachable from this host only."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---- up ---------------------------------------------------------------------------------------


@cli.command("up")
@click.option("--host", metavar="ADDRESS", help="Listen address (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen port (default 8610).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Database, job directories, checkpoints (default /var/lib/outgrow).",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --host other than loopback (the API then listens on the network).",
)
@json_option
def up(
    host: str | None, port: int | None, data_dir: Path | None, allow_remote: bool, as_json: bool
) -> None:
    """Run the control plane: REST API (/api/v1), scheduler, store. The first start creates
    the admin user and writes the CLI's credentials; Ctrl-C stops it (jobs keep running)."""
    from outgrow.server import serve

    update: dict[str, Any] = {}
    if host is not None:
        update["host"] = host
    if port is not None:
        update["port"] = port
    if data_dir is not None:
        update["data_dir"] = data_dir.absolute()
    settings = state().settings.model_copy(update=update)
    if not is_loopback(settings.host) and not allow_remote:
        raise ValidationError(
            f"--host {settings.host} is not a loopback address: the API would be reachable "
            "from the network; add --allow-remote if that is what you want",
            field="host",
        )
    if settings.provider == "local":
        require_root()
    if as_json:
        emit_json(
            {
                "url": f"http://{settings.host}:{settings.port}",
                "data_dir": str(settings.data_dir),
                "credentials": str(credentials.credentials_path()),
            }
        )
    serve(settings)


# ---- login and tokens -------------------------------------------------------------------------


@cli.command("login")
@click.argument("url")
@click.option("--user", default="admin", show_default=True, help="User name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@json_option
def login(url: str, user: str, password_stdin: bool, as_json: bool) -> None:
    """Log in to a control plane: a new API token, saved (mode 0600) for the CLI."""
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(
            f"{url!r} is not an http(s) URL (e.g. http://127.0.0.1:8610)", param_hint="URL"
        )
    url = url.rstrip("/")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(f"password for {user}", hide_input=True, err=True)
    if not password:
        raise ValidationError("empty password", field="password")
    token = Client.login(user, password, url=url)
    path = credentials.save(credentials.Credentials(url, token))
    if as_json:
        emit_json({"url": url, "user": user, "credentials": str(path)})
    else:
        click.echo(f"logged in to {url} as {user}; credentials in {path}")


@cli.group("token")
def token() -> None:
    """Your API tokens."""


@token.command("create")
@click.argument("name")
@json_option
def token_create(name: str, as_json: bool) -> None:
    """Create a token (its secret is shown only now)."""
    with connect() as c:
        view, secret = c.create_token(name)
    if as_json:
        emit_json({"token": secret, **view.model_dump(mode="json")})
        return
    click.echo(secret)
    say(f"token {view.id} ({view.name}); keep it: it is not shown again")


@token.command("ls")
@json_option
def token_ls(as_json: bool) -> None:
    """List your tokens (never their secrets)."""
    with connect() as c:
        tokens = c.tokens()
    if as_json:
        emit_json([t.model_dump(mode="json") for t in tokens])
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("id", "name", "prefix", "created", "last used", "revoked"):
        table.add_column(col)
    for t in tokens:
        table.add_row(
            str(t.id),
            escape(t.name),
            t.prefix,
            fmt_time(t.created_at),
            fmt_time(t.last_used_at),
            "yes" if t.revoked else "",
        )
    print_wide(table)


@token.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@json_option
def token_revoke(token_id: int, as_json: bool) -> None:
    """Revoke one of your tokens."""
    with connect() as c:
        c.revoke_token(token_id)
    if as_json:
        emit_json({"revoked": token_id})
    else:
        click.echo(f"revoked token {token_id}")


@cli.group("instance")
def instance() -> None:
    """Instances (admin)."""


@instance.command("reclaim")
@click.argument("instance_id", metavar="ID")
@click.option(
    "--in",
    "in_",
    default="30s",
    show_default=True,
    help="Time until the instance is taken away (e.g. 30s, 2m).",
)
@json_option
def instance_reclaim(instance_id: str, in_: str, as_json: bool) -> None:
    """Send a spot-reclaim notice to an instance, as a cloud would: its job is moved to
    another instance before the deadline, then the instance is taken away. A notice
    shorter than an instance takes to create (local: 4 s) checkpoints the job at once and
    restores it on a new instance. Admins only."""
    from outgrow.domain.policy_parse import parse_duration

    seconds = parse_duration(in_, "in")
    with connect() as c:
        out = c.reclaim_instance(instance_id, seconds)
    if as_json:
        emit_json(out)
    else:
        click.echo(
            f"instance {instance_id} will be reclaimed in {seconds:g} s; its job is being moved"
        )


# ---- images (the control plane's library) -----------------------------------------------------


@image.command("ls")
@json_option
def image_ls(as_json: bool) -> None:
    """The control plane's images: built in, added with `image add` (venv) and imported,
    pulled or built (OCI: digest, size, entrypoint, where cached)."""
    with connect() as c:
        images = c.images()
    if as_json:
        emit_json([{**i.model_dump(mode="json"), "digest": i.digest} for i in images])
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    cols = ("name", "kind", "origin", "digest", "size", "entrypoint", "port", "cached")
    for col in (*cols, "description"):
        table.add_column(col)
    for i in images:
        if i.format == "oci":
            kind = "oci" + (f" (jupyter {'/'.join(i.jupyter)})" if i.jupyter else "")
            origin = f"{(i.oci or {}).get('reference', '')}, by {i.owner}"
            conf = i.config or {}
            entry = " ".join([*conf.get("entrypoint", []), *conf.get("cmd", [])]) or "-"
            size, digest = fmt_bytes(i.size_bytes), (i.digest or "")[:19]
            cached = ", ".join(i.cached) or "-"
        else:
            kind = i.kind
            origin = "built in" if i.builtin else f"{i.base} + pip, by {i.owner}"
            entry, size, digest, cached = "-", "-", "-", "-"
        table.add_row(
            escape(i.name),
            kind,
            escape(origin),
            digest,
            size,
            escape(entry),
            str(i.default_port or "-"),
            escape(cached),
            escape(i.description),
        )
    print_wide(table)


@image.command("add")
@click.argument("name")
@click.option("--pip", required=True, metavar="'PKG ...'", help="pip requirements to add.")
@click.option("--base", metavar="IMAGE", help="Image to extend (default python).")
@click.option("--description", default="", help="One line for the library.")
@json_option
def image_add(name: str, pip: str, base: str | None, description: str, as_json: bool) -> None:
    """Add an image: a base image plus pip packages (built on first use)."""
    with connect() as c:
        view = c.add_image(name, pip, base, description)
    if as_json:
        emit_json(view.model_dump(mode="json"))
    else:
        click.echo(f"added image {view.name} ({view.base} + {' '.join(view.pip)})")


@image.command("rm")
@click.argument("name")
@json_option
def image_rm(name: str, as_json: bool) -> None:
    """Remove an image you added."""
    with connect() as c:
        c.remove_image(name)
    if as_json:
        emit_json({"removed": name})
    else:
        click.echo(f"removed image {name}")


# ---- templates --------------------------------------------------------------------------------


@cli.group("template")
def template() -> None:
    """Saved job configurations (`submit --template NAME`)."""


@template.command("save")
@click.argument("job")
@click.argument("name")
@json_option
def template_save(job: str, name: str, as_json: bool) -> None:
    """Save a job's configuration as a template."""
    with connect() as c:
        t = c.save_template(job, name)
    if as_json:
        emit_json(t.model_dump(mode="json"))
    else:
        click.echo(f"saved template {t.name} from job {job}")


@template.command("ls")
@json_option
def template_ls(as_json: bool) -> None:
    """List your templates."""
    with connect() as c:
        ts = c.templates()
    if as_json:
        emit_json([t.model_dump(mode="json") for t in ts])
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("name", "owner", "image", "request", "migrate policy", "created"):
        table.add_column(col)
    for t in ts:
        s = t.spec
        table.add_row(
            escape(t.name),
            t.owner,
            escape(s.image),
            s.instance_type or f"-c {s.cpu} -m {s.mem}",
            escape(s.migrate_policy),
            fmt_time(t.created_at),
        )
    print_wide(table)


@template.command("show")
@click.argument("name")
@json_option
def template_show(name: str, as_json: bool) -> None:
    """A template's configuration."""
    with connect() as c:
        t = c.template(name)
    if as_json:
        emit_json(t.model_dump(mode="json"))
    else:
        print_wide(template_details(t))


@template.command("rm")
@click.argument("name")
@json_option
def template_rm(name: str, as_json: bool) -> None:
    """Delete a template."""
    with connect() as c:
        c.delete_template(name)
    if as_json:
        emit_json({"removed": name})
    else:
        click.echo(f"removed template {name}")
