"""Commands that work on this host without the control plane: instance-types, image,
cleanup and the foreground single-job ``run``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from outgrow.agent.images import ImageCache
from outgrow.cli.main import (
    Event,
    cli,
    emit_json,
    fmt_bytes,
    human_event,
    json_option,
    out,
    require_root,
    say,
    shield,
    signals_to_interrupt,
    state,
)
from outgrow.controlplane.foreground import JobRunner, RunSpec, choose_type
from outgrow.domain.images import BUILTIN_IMAGES, ImageSpec
from outgrow.domain.instance_types import Catalog
from outgrow.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    NotFoundError,
    ValidationError,
)
from outgrow.settings import Settings

if TYPE_CHECKING:
    from outgrow.providers.local.provider import LocalProvider


def load_catalog(settings: Settings) -> Catalog:
    """The configured provider's catalog (``settings.catalog_path`` for the local one)."""
    from outgrow.providers.base import get_provider

    return get_provider(settings.provider, settings).instance_types()


def local_provider(settings: Settings) -> LocalProvider:
    """The local provider: what the commands of this host (run, cleanup) act on."""
    from outgrow.providers.local.provider import LocalProvider

    if settings.provider != "local":
        raise ConfigError(
            f"this command acts on instances of this host (provider 'local'), not "
            f"{settings.provider!r}",
            field="provider",
        )
    return LocalProvider(settings)


# ---- instance-types -----------------------------------------------------------------------


@cli.command("instance-types")
@json_option
def instance_types(as_json: bool) -> None:
    """The instance types and their prices: the control plane's when you are logged in,
    else this host's local catalog."""
    source, rows = instance_type_rows()
    if as_json:
        emit_json(rows)
        return
    say(f"instance types from {source}")
    table = Table(title="instance types", title_justify="left")
    table.add_column("name")
    table.add_column("vCPU", justify="right")
    table.add_column("memory (GiB)", justify="right")
    table.add_column("$/h", justify="right")
    table.add_column("spot $/h", justify="right")
    for t in rows:
        spot = "-" if t["spot_price_per_hour"] is None else f"{t['spot_price_per_hour']:.4f}"
        table.add_row(
            t["name"],
            f"{t['vcpus']:g}",
            f"{t['memory_gib']:g}",
            f"{t['price_per_hour']:.4f}",
            spot,
        )
    out().print(table)


def instance_type_rows() -> tuple[str, list[dict[str, Any]]]:
    """(where from, rows): through the API when credentials exist, else the local catalog."""
    from outgrow import credentials
    from outgrow.client import Client

    try:
        creds = credentials.load()
    except AuthError:
        creds = None
    if creds is not None:
        with Client(creds.url, creds.token) as c:
            return f"the control plane at {creds.url}", c.instance_types()
    settings = state().settings
    catalog = load_catalog(settings)
    rows = [
        {
            "name": t.name,
            "vcpus": t.vcpus,
            "memory_gib": t.memory_gib,
            "price_per_hour": t.price_per_hour,
            "spot_price_per_hour": t.spot_price_per_hour,
        }
        for t in catalog.types
    ]
    return f"the local catalog ({settings.provider}; not logged in)", rows


# ---- image ----------------------------------------------------------------------------------


@cli.group("image")
def image() -> None:
    """Images: the control plane's library (ls, add, rm) and this host's cache (cache,
    build)."""


@image.command("cache")
@json_option
def image_cache(as_json: bool) -> None:
    """This host's image cache: the builtin images and whether they are built."""
    settings = state().settings
    cache = ImageCache(settings.image_cache_dir)
    built = {b.spec_hash: (b, meta) for b, meta in cache.list()}
    rows: list[dict[str, Any]] = []
    for spec in BUILTIN_IMAGES.values():
        h = cache.hash_of(spec)
        b, meta = built.get(h, (None, {}))
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "description": spec.description,
                "pip": list(spec.pip),
                "hash": h,
                "built": b is not None,
                "path": str(b.path) if b else None,
                "size_bytes": meta.get("size_bytes"),
                "built_at": meta.get("built_at"),
                "build_seconds": meta.get("build_seconds"),
            }
        )
    if as_json:
        emit_json(rows)
        return
    console = out()
    console.print(f"images (cache {cache.root})", highlight=False)
    for r in rows:
        if r["built"]:
            size = fmt_bytes(r["size_bytes"]) if isinstance(r["size_bytes"], int) else "? MiB"
            when = str(r["built_at"] or "?").replace("T", " ")[:16]
            cached = f"built {when} ({size}, {r['build_seconds']} s)"
        else:
            cached = "[yellow]not built[/yellow]"
        console.print(f"\n[bold]{r['name']}[/bold] ({r['kind']})  {r['hash']}  {cached}")
        console.print(f"  {r['description']}", markup=False, highlight=False)
        console.print(f"  pip: {' '.join(r['pip'])}", markup=False, highlight=False)


def _check_writable(root: Path) -> None:
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise AuthError(
            f"cannot write the image cache {root}: run as root or set OUTGROW_IMAGE_CACHE_DIR"
        )


def build_builtin(name: str, as_json: bool) -> None:
    """``outgrow image build NAME``: build a builtin image into the host's cache (pip
    output on stderr). The command itself is in cli/oci.py (it also builds Containerfiles)."""
    spec = builtin_image(name)
    cache = ImageCache(state().settings.image_cache_dir)
    h = cache.hash_of(spec)
    found = cache.get(spec)
    already = found is not None
    t0 = time.monotonic()
    if found is None:
        _check_writable(cache.root)
        found = cache.ensure(spec, progress=say)
    seconds = time.monotonic() - t0
    result = {
        "name": spec.name,
        "hash": h,
        "path": str(found.path),
        "size_bytes": found.size_bytes,
        "already_built": already,
        "seconds": round(seconds, 1),
    }
    if as_json:
        emit_json(result)
    elif already:
        click.echo(f"{spec.name} ({h}) is already built at {found.path}")
    else:
        click.echo(f"built {spec.name} ({h}) in {seconds:.1f} s")


# ---- cleanup --------------------------------------------------------------------------------


@cli.command("cleanup")
@click.option("--all", "everything", is_flag=True, help="Also remove the host bridge.")
@json_option
def cleanup(everything: bool, as_json: bool) -> None:
    """Remove the local instances of the data dir (netns, veth, cgroup) and leftovers no
    control plane owns; another data dir's instances on the same prefix are kept."""
    from outgrow.controlplane.datadir import DataDirLock

    require_root()
    settings = state().settings
    pid = DataDirLock(settings.data_dir).holder()
    if pid is not None:  # its instances are not leftovers (it sweeps its orphans at start)
        raise ConflictError(
            f"a control plane (pid {pid}) runs on data dir {settings.data_dir}: stop it "
            "before `outgrow cleanup`"
        )
    provider = local_provider(settings)
    removed: list[str] = provider.cleanup()
    bridge = None
    if everything:
        name = provider.net.bridge_name
        existed = Path("/sys/class/net", name).exists()
        provider.teardown()
        bridge = name if existed else None
    if as_json:
        emit_json({"prefix": provider.prefix, "removed_instances": removed, "bridge": bridge})
        return
    for iid in removed:
        click.echo(f"removed instance {iid}")
    if bridge:
        click.echo(f"removed bridge {bridge}")
    if not removed and not bridge:
        click.echo(f"nothing to remove (prefix {provider.prefix})")


# ---- run ------------------------------------------------------------------------------------


def builtin_image(name: str) -> ImageSpec:
    try:
        return BUILTIN_IMAGES[name]
    except KeyError:
        raise NotFoundError(
            f"unknown image {name!r} (available: {', '.join(BUILTIN_IMAGES)})", field="image"
        ) from None


def resolve_run(
    catalog: Catalog,
    *,
    image: str,
    type_name: str | None = None,
    memory_gib: float | None = None,
    script: str | None = None,
    evade_oom: bool = True,
    max_type: str | None = None,
    stream_logs: bool = True,
) -> RunSpec:
    """Validate the options of ``outgrow run`` (no side effects)."""
    spec = builtin_image(image)
    if spec.kind == "python":
        if script is None:
            raise ValidationError(
                f"image {spec.name!r} runs a batch script: give it with --script FILE",
                field="script",
            )
        if not script.strip():
            raise ValidationError("the job script is empty", field="script")
    elif script is not None:
        raise ValidationError(
            f"--script is only for the python image, not {spec.name!r}", field="script"
        )
    top = catalog.get(max_type) if max_type is not None else None
    itype = choose_type(catalog, type_name, memory_gib, top)
    return RunSpec(spec, itype, script or "", evade_oom, top, stream_logs)


@cli.command("run")
@click.option(
    "-i", "--image", "image_name", required=True, help="Image: " + ", ".join(BUILTIN_IMAGES)
)
@click.option("-t", "--type", "type_name", metavar="TYPE", help="Instance type to start on.")
@click.option(
    "-m",
    "--memory",
    "memory_gib",
    type=click.FloatRange(min=0, min_open=True),
    metavar="GIB",
    help="Start on the cheapest type with at least this memory (default 1).",
)
@click.option(
    "--script",
    "script_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The job script (python image).",
)
@click.option(
    "--evade-oom/--no-evade-oom",
    default=True,
    show_default=True,
    help="Move the job to a larger type when it reaches its memory limit.",
)
@click.option("--max-type", metavar="TYPE", help="Never move the job above this type.")
@click.option("-q", "--quiet", is_flag=True, help="Do not stream the job's output.")
@json_option
@click.pass_context
def run(
    ctx: click.Context,
    image_name: str,
    type_name: str | None,
    memory_gib: float | None,
    script_path: Path | None,
    evade_oom: bool,
    max_type: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run one job in the foreground on a local instance, moving it to a larger type when
    it outgrows its memory; Ctrl-C stops it. Exits with the job's exit code."""
    settings = state().settings
    script = None
    if script_path is not None:
        try:
            script = script_path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ValidationError(f"cannot read the script {script_path}: {why}") from exc
    spec = resolve_run(
        load_catalog(settings),
        image=image_name,
        type_name=type_name,
        memory_gib=memory_gib,
        script=script,
        evade_oom=evade_oom,
        max_type=max_type,
        stream_logs=not quiet,
    )
    require_root()
    provider = local_provider(settings)

    def on_event(ev: Event) -> None:
        if as_json:
            emit_json(ev)
        else:
            for line in human_event(ev):
                say(line)

    def on_output(stream: str, data: str) -> None:
        f = sys.stdout if stream == "stdout" and not as_json else sys.stderr
        f.write(data)
        f.flush()

    runner = JobRunner(
        settings,
        provider,
        spec,
        on_event=on_event,
        on_progress=say,
        on_output=on_output,
        shield=shield,
    )
    with signals_to_interrupt():
        code = runner.run()
    ctx.exit(code)
