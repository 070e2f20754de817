"""The host's OCI image cache: images imported from archives or pulled from registries,
verified by digest and unpacked once into a flattened rootfs a job's overlay can use.

Layout under ``<root>/oci`` (``root`` is ``Settings.image_cache_dir``)::

    oci-layout, index.json, blobs/sha256/…   one OCI layout shared by every image; each
                                             image is tagged ``sha256-<hex>`` in it
    images/<hex>.json                        an image's metadata (OciImage): written last,
                                             so an image without it does not exist
    rootfs/<hex>/rootfs                      the unpacked, flattened rootfs (umoci applies
                                             the layers and their whiteouts); usable only
                                             once rootfs/<hex>/.complete exists
    tmp/<pid>-<random>/                      staging layouts of imports under way

No registry or tar-layer code of our own: skopeo copies (``oci-archive:``,
``docker-archive:``, ``oci:`` layouts, ``docker://``) and checks every blob against its
digest while it copies; umoci unpacks, checking the blobs it reads. We add the checks the
tools leave to us: the manifest digest we were asked for, the media types umoci can
unpack, the platform.

An import is staged in its own layout under ``tmp/`` and checked there; only then is it
copied into the shared layout, under an exclusive flock on ``.layout.lock`` (unpacks hold
it shared, so a removal's garbage collection never runs under them). Whoever next takes
the lock exclusively first repairs what a crash left: tags without metadata, orphan blobs,
staging dirs of dead processes. Unpacks of one digest are serialised by a flock on
``rootfs/<hex>.lock`` (concurrent callers unpack once; a directory without ``.complete``
is a crashed unpack and is redone). Lock files stay (removing them races with waiters).

Directory names use the hex part only: a ':' would split an overlay's lowerdir option.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from outgrow.agent.oci_probe import probe_rootfs
from outgrow.domain.oci import (
    DIGEST_RE,
    OciConfig,
    OciImage,
    RootfsFacts,
    check_digest,
    check_reference,
    digest_hex,
    layer_media_types,
)
from outgrow.errors import ImageBuildError, NotFoundError, OutgrowError, ValidationError

__all__ = ["OciCache", "OciConfig", "OciImage", "Progress", "RootfsFacts"]

Progress = Callable[[str], None]

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
_TOOL_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
_HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _tool_error(text: str) -> str:
    """The one line that says what went wrong in skopeo's or umoci's stderr."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return "no output"
    last = lines[-1]
    m = _TOOL_MSG.search(last)
    msg = m.group(1).replace('\\"', '"') if m else last
    return " ".join(msg.split())[:400]


_UNKNOWN = ("manifest unknown", "name unknown", "not found", "unauthorized", "denied")


def _raise_unknown_reference(ref: str, exc: ImageBuildError) -> None:
    """A registry's "no such image" (or "not for you") is NotFoundError; being unable to
    reach the registry stays an ImageBuildError (the caller re-raises it)."""
    if any(word in str(exc).lower() for word in _UNKNOWN):
        raise NotFoundError(f"unknown reference {ref}: {exc}", field="reference") from exc


def _host_arch() -> str:
    machine = os.uname().machine
    return _HOST_ARCH.get(machine, machine)


class OciCache:
    """Host-wide cache of OCI images at ``<root>/oci`` (see the module docstring).

    ``insecure_registries``: registry hosts (``host:port``) reached over plain HTTP or
    unverified TLS (a test registry on loopback); everything else is verified.
    """

    def __init__(
        self, root: Path, *, insecure_registries: Sequence[str] = (), timeout: float = 3600
    ):
        self.root = Path(root).absolute()
        self.layout = self.root / "oci"
        self.insecure = frozenset(insecure_registries)
        self.timeout = timeout

    # -- paths -------------------------------------------------------------------------------
    def _meta_path(self, digest: str) -> Path:
        return self.layout / "images" / f"{digest_hex(digest)}.json"

    def _bundle(self, digest: str) -> Path:
        return self.layout / "rootfs" / digest_hex(digest)

    @staticmethod
    def _tag(digest: str) -> str:
        return f"sha256-{digest_hex(digest)}"

    def rootfs_path(self, digest: str) -> Path:
        """Where the rootfs of ``digest`` is (or will be) unpacked."""
        return self._bundle(digest) / "rootfs"

    # -- reading -----------------------------------------------------------------------------
    def get(self, digest: str) -> OciImage | None:
        """The image ``digest`` if it is in the cache, else None."""
        try:
            data = json.loads(self._meta_path(digest).read_text())
            return OciImage.from_dict(data)
        except (OSError, ValueError, TypeError, OutgrowError):
            return None

    def image(self, digest: str) -> OciImage:
        found = self.get(check_digest(digest))
        if found is None:
            raise NotFoundError(f"image {digest} is not in the cache", field="digest")
        return found

    def config(self, digest: str) -> OciConfig:
        return self.image(digest).config

    def list(self) -> list[OciImage]:
        """Every image in the cache, oldest import first."""
        found = []
        meta = self.layout / "images"
        for p in sorted(meta.glob("*.json")) if meta.is_dir() else []:
            img = self.get(f"sha256:{p.stem}") if DIGEST_RE.fullmatch(f"sha256:{p.stem}") else None
            if img is not None:
                found.append(img)
        return sorted(found, key=lambda i: (i.imported_at, i.digest))

    def unpacked(self, digest: str) -> bool:
        return (self._bundle(digest) / ".complete").is_file()

    def facts(self, digest: str) -> RootfsFacts | None:
        """What the unpacked rootfs offers (None until it is unpacked)."""
        if not self.unpacked(digest):
            return None
        return probe_rootfs(self.rootfs_path(digest), self.config(digest))

    # -- locking -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(
        self, path: Path, exclusive: bool, on_wait: Callable[[], None] | None = None
    ) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        try:
            waited = False
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited and on_wait is not None:
                        on_wait()
                    waited = True
                    if time.monotonic() >= deadline:
                        raise ImageBuildError(f"timed out waiting for {path.name}") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The shared layout, exclusively; crash leftovers are repaired first."""
        with self._flock(self.layout / ".layout.lock", exclusive=True):
            if not (self.layout / "oci-layout").is_file():
                # What `umoci init` writes; it refuses a directory that exists already.
                (self.layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
                (self.layout / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
                (self.layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
            self._repair()
            yield

    def _repair(self) -> None:
        """Drop tags whose import never finished, their blobs and dead staging dirs."""
        dirty = False
        for tag in self._tags(self.layout):
            hexpart = tag.removeprefix("sha256-")
            if tag == hexpart or not (self.layout / "images" / f"{hexpart}.json").is_file():
                self._run(["umoci", "rm", "--image", f"{self.layout}:{tag}"], "repairing")
                dirty = True
        if dirty:
            self._run(["umoci", "gc", "--layout", str(self.layout)], "repairing the cache")
        tmp = self.layout / "tmp"
        for d in tmp.iterdir() if tmp.is_dir() else []:
            pid = d.name.partition("-")[0]
            if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
                shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def _tags(layout: Path) -> builtins.list[str]:
        try:
            index = json.loads((layout / "index.json").read_text())
        except (OSError, ValueError):
            return []
        return [
            str(m.get("annotations", {}).get("org.opencontainers.image.ref.name", ""))
            for m in (index.get("manifests") or [])
        ]

    # -- tools -------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TMPDIR"] = str(self.layout / "tmp")  # big blobs stay on the cache's disk
        return env

    def _run(
        self, cmd: Sequence[str], what: str, error: type[OutgrowError] = ImageBuildError
    ) -> str:
        (self.layout / "tmp").mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(
                list(cmd),
                capture_output=True,
                text=True,
                errors="replace",
                stdin=subprocess.DEVNULL,
                env=self._env(),
                timeout=self.timeout,
            )
        except FileNotFoundError as exc:
            raise ImageBuildError(f"{cmd[0]} is not installed (run `make setup`)") from exc
        except subprocess.TimeoutExpired as exc:
            raise ImageBuildError(f"{what} timed out after {self.timeout:g} s") from exc
        if proc.returncode != 0:
            raise error(f"{what}: {_tool_error(proc.stderr)}", detail=proc.stderr[-4000:])
        return proc.stdout

    def _skopeo(self) -> builtins.list[str]:
        cmd = ["skopeo"]
        if not Path("/etc/containers/policy.json").is_file():
            # No trust policy on this machine (an instance): we check digests ourselves.
            cmd.append("--insecure-policy")
        return cmd

    # -- importing ---------------------------------------------------------------------------
    def import_archive(
        self,
        path: Path,
        name: str,
        *,
        expect_digest: str | None = None,
        label: str | None = None,
    ) -> OciImage:
        """Import an OCI archive, a ``docker save``/``podman save`` archive or an OCI layout
        directory as ``name``. ``expect_digest``: the manifest digest it must have (an
        archive shipped to an instance). ``label``: how errors name the archive (default
        its file name; an upload's temporary file means nothing to its sender)."""
        path = Path(path)
        label = label or path.name
        source = self._source_of(path, label)
        return self._import(source, name or path.name, expect_digest, label)

    def pull(self, reference: str) -> OciImage:
        """Pull ``reference`` (``[docker://]host/name[:tag][@sha256:…]``) from its registry;
        with a digest, the registry's manifest must have that digest."""
        ref = check_reference(reference)
        asked = ref.partition("@")[2] or None
        if asked is not None:
            check_digest(asked, "reference")
        host = ref.split("/")[0] if "/" in ref else ""
        insecure = host in self.insecure
        tls = ["--src-tls-verify=false"] if insecure else []
        src = f"docker://{ref}"
        if asked is not None:
            inspect = [*self._skopeo(), "inspect", "--raw"]
            inspect += ["--tls-verify=false"] if insecure else []
            try:
                raw = self._run([*inspect, src], f"pulling {ref}")
            except ImageBuildError as exc:
                _raise_unknown_reference(ref, exc)
                raise
            got = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
            if got != asked:
                raise ValidationError(
                    f"digest mismatch: {ref} has manifest {got}, asked for {asked}",
                    field="reference",
                )
        return self._import(src, ref, None, ref, tls=tls, source_digest=asked)

    def _source_of(self, path: Path, label: str) -> str:
        if path.is_dir():
            if not (path / "oci-layout").is_file():
                raise ValidationError(f"{path} is a directory but not an OCI layout", field="path")
            return f"oci:{path}"
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    base = member.name.removeprefix("./")
                    if base in ("oci-layout", "index.json"):
                        return f"oci-archive:{path}"
                    if base == "manifest.json":
                        return f"docker-archive:{path}"
        except FileNotFoundError:
            raise NotFoundError(f"no such archive {path}", field="path") from None
        except (tarfile.TarError, EOFError, OSError) as exc:
            why = "not a tar archive (plain, gzip, bzip2 or xz)"
            if not isinstance(exc, tarfile.ReadError) or "opened successfully" not in str(exc):
                why = " ".join(str(exc).split()) or type(exc).__name__
            raise ValidationError(f"corrupt archive {label}: {why}", field="path") from exc
        raise ValidationError(
            f"corrupt archive {label}: neither an OCI archive nor a docker save archive",
            field="path",
        )

    def _import(
        self,
        source: str,
        reference: str,
        expect: str | None,
        label: str,
        *,
        tls: Sequence[str] = (),
        source_digest: str | None = None,
    ) -> OciImage:
        tmp = self.layout / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        stage = tmp / f"{os.getpid()}-{secrets.token_hex(6)}"
        try:
            pulling = source.startswith("docker://")
            what = f"pulling {label}" if pulling else f"corrupt archive {label}"
            try:
                self._run(
                    [*self._skopeo(), "copy", "--quiet", *tls, source, f"oci:{stage}:staged"],
                    what,
                    ImageBuildError if pulling else ValidationError,
                )
            except ImageBuildError as exc:
                _raise_unknown_reference(label, exc)
                raise
            except ValidationError as exc:
                if "digest" in str(exc).lower():  # skopeo checks every blob it copies
                    msg = str(exc).removeprefix(f"{what}: ")
                    raise ValidationError(
                        f"digest mismatch in {label}: {msg}", field="digest", detail=exc.detail
                    ) from exc
                raise
            digest, manifest, config_doc = self._check_staged(stage, label)
            if expect is not None and digest != expect:
                raise ValidationError(
                    f"digest mismatch: {label} holds {digest}, expected {expect}", field="digest"
                )
            with self._writing():
                found = self.get(digest)
                if found is not None:
                    return found
                self._run(
                    [*self._skopeo(), "copy", "--quiet", f"oci:{stage}:staged",
                     f"oci:{self.layout}:{self._tag(digest)}"],
                    f"adding {label} to the cache",
                )  # fmt: skip
                if self._tagged(digest) != digest:  # the copy must not rewrite the manifest
                    raise ImageBuildError(f"adding {label} to the cache changed its digest")
                image = self._image(digest, reference, manifest, config_doc, source_digest)
                meta = self._meta_path(digest)
                meta.parent.mkdir(parents=True, exist_ok=True)
                part = meta.with_suffix(".part")
                part.write_text(json.dumps(image.to_dict(), indent=2) + "\n")
                os.replace(part, meta)
                return image
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _tagged(self, digest: str) -> str | None:
        index = json.loads((self.layout / "index.json").read_text())
        for m in index.get("manifests") or []:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == self._tag(
                digest
            ):
                return str(m.get("digest"))
        return None

    @staticmethod
    def _blob(layout: Path, digest: str, label: str) -> bytes:
        data = (layout / "blobs" / "sha256" / digest_hex(digest)).read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ValidationError(f"digest mismatch in {label}: blob {digest}", field="digest")
        return data

    def _check_staged(self, stage: Path, label: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(manifest digest, manifest, config) of the staged image, after the checks skopeo
        leaves to us: digests of the manifest and config, media types, platform."""
        index = json.loads((stage / "index.json").read_text())
        desc = index["manifests"][0]
        digest = check_digest(str(desc["digest"]))
        manifest = json.loads(self._blob(stage, digest, label))
        mtype = manifest.get("mediaType") or desc.get("mediaType")
        if mtype != MANIFEST_TYPE:
            raise ValidationError(f"unsupported media type {mtype} in {label}", field="media_type")
        config_desc = manifest.get("config") or {}
        if config_desc.get("mediaType") != CONFIG_TYPE:
            raise ValidationError(
                f"unsupported media type {config_desc.get('mediaType')} in {label} "
                "(not a container image config)",
                field="media_type",
            )
        supported = layer_media_types()
        for i, layer in enumerate(manifest.get("layers") or []):
            if layer.get("mediaType") not in supported:
                raise ValidationError(
                    f"unsupported media type {layer.get('mediaType')} (layer {i + 1}) in "
                    f"{label}: outgrow unpacks tar and tar+gzip layers",
                    field="media_type",
                )
        config_doc = json.loads(self._blob(stage, str(config_desc.get("digest")), label))
        OciConfig.from_image_config(config_doc)  # a malformed config fails here
        arch, want = str(config_doc.get("architecture") or ""), _host_arch()
        if arch and arch != want:
            raise ValidationError(
                f"{label} is an {arch} image; this host runs {want}", field="image"
            )
        return digest, manifest, config_doc

    @staticmethod
    def _image(
        digest: str,
        reference: str,
        manifest: dict[str, Any],
        config_doc: dict[str, Any],
        source_digest: str | None,
    ) -> OciImage:
        size = len(json.dumps(manifest)) + int(manifest["config"].get("size") or 0)
        size += sum(int(layer.get("size") or 0) for layer in manifest.get("layers") or [])
        created = config_doc.get("created")
        return OciImage(
            digest=digest,
            reference=reference,
            size=size,
            config=OciConfig.from_image_config(config_doc),
            created=created if isinstance(created, str) else None,
            imported_at=_now(),
            architecture=str(config_doc.get("architecture") or ""),
            os=str(config_doc.get("os") or ""),
            source_digest=source_digest,
        )

    # -- unpacking ---------------------------------------------------------------------------
    def ensure_rootfs(self, digest: str, progress: Progress | None = None) -> Path:
        """The flattened rootfs of ``digest``, unpacked first if needed (once per host)."""
        image = self.image(digest)
        bundle = self._bundle(digest)
        if (bundle / ".complete").is_file():
            return bundle / "rootfs"

        def say(line: str) -> None:
            if progress is not None:
                with contextlib.suppress(Exception):  # a broken sink must not break it
                    progress(line)

        waiting = f"waiting for another unpack of image {digest[:19]}"
        with self._flock(bundle.with_suffix(".lock"), True, lambda: say(waiting)):
            if (bundle / ".complete").is_file():
                return bundle / "rootfs"
            if bundle.exists():
                say(f"removing an incomplete unpack of image {digest[:19]}")
                shutil.rmtree(bundle)
            t0 = time.monotonic()
            say(f"unpacking image {image.reference} ({digest[:19]}, {image.size >> 20} MiB)")
            try:
                with self._flock(self.layout / ".layout.lock", exclusive=False):
                    if self.get(digest) is None:  # removed while we waited
                        raise NotFoundError(f"image {digest} is not in the cache", field="digest")
                    bundle.mkdir(parents=True)
                    # raw: the rootfs only; a runtime bundle's config.json and mtree (a
                    # hash of every file, for repacking) would cost time for nothing.
                    self._run(
                        ["umoci", "raw", "unpack", "--image",
                         f"{self.layout}:{self._tag(digest)}", str(bundle / "rootfs")],
                        f"unpacking image {digest[:19]}",
                    )  # fmt: skip
                with open(bundle / ".complete", "w") as f:
                    f.write(_now() + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException as exc:  # incl. KeyboardInterrupt: nothing half-made stays
                shutil.rmtree(bundle, ignore_errors=True)
                if "digest" in str(exc).lower() and isinstance(exc, ImageBuildError):
                    raise ImageBuildError(
                        f"digest mismatch while unpacking image {digest[:19]}: the cache is "
                        "damaged; remove the image and import it again",
                        detail=exc.detail,
                    ) from exc
                raise
            say(f"unpacked in {time.monotonic() - t0:.1f} s")
        return bundle / "rootfs"

    # -- removing and shipping ---------------------------------------------------------------
    def remove(self, digest: str) -> None:
        """Delete an image, its rootfs and the blobs no other image uses. The caller knows
        no job uses it (a running job's overlay would lose its lower layer)."""
        self.image(digest)
        bundle = self._bundle(digest)
        with self._writing(), self._flock(bundle.with_suffix(".lock"), exclusive=True):
            self._meta_path(digest).unlink(missing_ok=True)  # readers stop seeing it first
            (bundle / ".complete").unlink(missing_ok=True)
            shutil.rmtree(bundle, ignore_errors=True)
            if self._tag(digest) in self._tags(self.layout):
                self._run(["umoci", "rm", "--image", f"{self.layout}:{self._tag(digest)}"], "rm")
            self._run(["umoci", "gc", "--layout", str(self.layout)], "collecting blobs")

    def export_archive(self, digest: str, dest: Path) -> Path:
        """Write image ``digest`` as an OCI archive at ``dest`` (to ship it elsewhere)."""
        self.image(digest)
        part = dest.with_name(dest.name + ".part")
        part.unlink(missing_ok=True)
        try:
            with self._flock(self.layout / ".layout.lock", exclusive=False):
                self._run(
                    [*self._skopeo(), "copy", "--quiet",
                     f"oci:{self.layout}:{self._tag(digest)}",
                     f"oci-archive:{part}:image"],
                    f"exporting image {digest[:19]}",
                )  # fmt: skip
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        return dest
