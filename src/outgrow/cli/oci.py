"""OCI images through the control plane: ``image import``, ``image pull`` and ``image
build`` (a Containerfile built with buildah or podman, whichever is installed, into an
OCI archive that is then imported; or, with a builtin image's name, that venv image on
this host)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import click

from outgrow.cli.local import build_builtin, image
from outgrow.cli.main import emit_json, json_option, say
from outgrow.cli.remote import connect
from outgrow.cli.render import fmt_bytes
from outgrow.domain.jobs import ImageView
from outgrow.domain.oci import image_name, suggest_name
from outgrow.errors import ImageBuildError, ValidationError


def _report(view: ImageView, seconds: float, as_json: bool, verb: str) -> None:
    if as_json:
        emit_json({**view.model_dump(mode="json"), "seconds": round(seconds, 1)})
        return
    digest = view.digest or "?"
    click.echo(
        f"{verb} image {view.name} ({digest[:19]}, {fmt_bytes(view.size_bytes)}) in {seconds:.1f} s"
    )
    if view.description:
        click.echo(f"  {view.description}")
    if view.jupyter:
        mode = view.jupyter[0]
        click.echo(f"  start its Jupyter: outgrow submit -n NAME -i {view.name} --jupyter {mode}")


@image.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="Library name (default: from the file name).")
@json_option
def image_import(path: Path, name: str | None, as_json: bool) -> None:
    """Import an image: an OCI archive, a `docker save`/`podman save` archive or an OCI
    layout directory (sent as a tar). The control plane verifies and unpacks it."""
    name = image_name(name or suggest_name(path.name))
    t0 = time.monotonic()
    with connect() as c:
        view = c.import_image(path, name)
    _report(view, time.monotonic() - t0, as_json, "imported")


@image.command("pull")
@click.argument("reference")
@click.option("--name", help="Library name (default: from the reference).")
@json_option
def image_pull(reference: str, name: str | None, as_json: bool) -> None:
    """Have the control plane pull an image from its registry (e.g. ghcr.io/org/nb:1 or
    …@sha256:…, which is checked)."""
    t0 = time.monotonic()
    with connect() as c:
        view = c.pull_image(reference, image_name(name) if name else None)
    _report(view, time.monotonic() - t0, as_json, "pulled")


def builder() -> str:
    """buildah or podman, whichever is installed (buildah first: no daemon, no socket)."""
    for tool in ("buildah", "podman"):
        if shutil.which(tool):
            return tool
    raise ImageBuildError(
        "outgrow image build -t needs buildah or podman: install one (apt-get install buildah)"
    )


def build_archive(tool: str, containerfile: Path, tag: str, context: Path, dest: Path) -> None:
    """Build the Containerfile, then write the image as an OCI archive at ``dest``."""
    build = [tool, "build", "-f", str(containerfile), "-t", tag, str(context)]
    if tool == "buildah":
        save = [tool, "push", tag, f"oci-archive:{dest}:{tag}"]
    else:
        save = [tool, "save", "--format", "oci-archive", "-o", str(dest), tag]
    for cmd in (build, save):
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stdout.splitlines() if ln.strip()] or ["no output"]
            raise ImageBuildError(f"{' '.join(cmd[:2])} failed: {lines[-1].strip()[:300]}")


@image.command("build")
@click.argument("target", metavar="CONTEXT|NAME")
@click.option(
    "-f",
    "--file",
    "containerfile",
    type=click.Path(path_type=Path),
    help="The Containerfile (default CONTEXT/Containerfile, else Dockerfile).",
)
@click.option("-t", "--tag", metavar="NAME", help="Build CONTEXT into the library image NAME.")
@json_option
def image_build(target: str, containerfile: Path | None, tag: str | None, as_json: bool) -> None:
    """Build an image. With -t: a Containerfile in CONTEXT, by buildah or podman, into an
    OCI archive imported as NAME. Without: the builtin venv image NAME, on this host."""
    if tag is None:
        if containerfile is not None:
            raise click.UsageError("-f needs -t NAME (the library name to import the build as)")
        build_builtin(target, as_json)
        return
    name = image_name(tag)
    context = Path(target)
    if not context.is_dir():
        raise ValidationError(f"the build context {context} is not a directory", field="context")
    if containerfile is None:
        found = [context / n for n in ("Containerfile", "Dockerfile") if (context / n).is_file()]
        if not found:
            raise ValidationError(f"no Containerfile or Dockerfile in {context}", field="file")
        containerfile = found[0]
    tool = builder()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="outgrow-build-") as tmp:
        archive = Path(tmp) / f"{name}.tar"
        if not as_json:
            say(f"building {containerfile} with {tool}")
        build_archive(tool, containerfile, f"localhost/{name}:latest", context, archive)
        with connect() as c:
            view = c.import_image(archive, name)
    _report(view, time.monotonic() - t0, as_json, "built and imported")
