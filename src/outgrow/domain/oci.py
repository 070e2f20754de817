"""OCI images as data: the reference an image spec carries, the parsed image config, an
image held in a host's cache, and what its root filesystem offers a job. Pure: the cache
itself (skopeo, umoci, files) is agent/oci.py.

An OCI image is known by the sha256 digest of its manifest as stored in outgrow's cache
(an OCI layout). Importing a Docker archive, or pulling a Docker-format manifest, converts
it to OCI, so that digest can differ from the source's; a pull by digest records the
source digest it was asked for as well.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from outgrow.errors import ValidationError

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DESCRIPTION_LABEL = "org.opencontainers.image.description"
JUPYTER_PORT = 8888
# Executables a job may need, looked up on the image's PATH (plus /bin/sh as such).
PROBED = ("python3", "python", "jupyter", "jupyter-lab", "jupyter-server")
JUPYTER_MODES = ("lab", "server")


_IMAGE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


def image_name(text: str) -> str:
    """A library name for an image: ``text`` itself when it is one (1-40 lowercase
    letters, digits, '-'), else a ValidationError (no '/', no '..': names never become
    paths, but they are refused all the same)."""
    if not isinstance(text, str) or not _IMAGE_NAME_RE.fullmatch(text):
        raise ValidationError(
            f"invalid image name {str(text)[:60]!r}: use 1-40 lowercase letters, digits or '-', "
            "starting with a letter or digit",
            field="name",
        )
    return text


def suggest_name(text: str) -> str:
    """A valid image name made from a file name or a registry reference
    (``./My_Image.tar`` → ``my-image``, ``ghcr.io/org/nb:1`` → ``nb``)."""
    base = text.rstrip("/").rsplit("/", 1)[-1].split("@")[0]
    for suffix in (".tar.gz", ".tgz", ".tar"):
        base = base.removesuffix(suffix)
    base = base.split(":")[0].lower()
    name = re.sub(r"[^a-z0-9]+", "-", base).strip("-")[:40].strip("-")
    return name or "image"


def check_digest(value: str, field_name: str = "digest") -> str:
    """``sha256:<64 hex>`` or a ValidationError."""
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        raise ValidationError(
            f"invalid image digest {str(value)[:80]!r}: expected sha256:<64 hex digits>",
            field=field_name,
        )
    return value


# A registry reference, as the distribution spec's grammar has it (never a leading "-": it
# is an argument to skopeo): an optional host[:port],
# a repository of lowercase path components, an optional tag and an optional digest.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
REFERENCE_RE = re.compile(
    rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@sha256:[0-9a-f]{64})?"
)


def check_reference(value: str, field_name: str = "reference") -> str:
    """``[docker://][host[:port]/]repository[:tag][@sha256:…]`` (returned without the
    ``docker://``) or a ValidationError saying what a reference looks like."""
    ref = value.removeprefix("docker://") if isinstance(value, str) else ""
    if len(ref) > 255 or not REFERENCE_RE.fullmatch(ref):
        raise ValidationError(
            f"invalid image reference {str(value)[:80]!r}: expected "
            "[host[:port]/]repository[:tag][@sha256:<64 hex>], the repository in lowercase",
            field=field_name,
        )
    return ref


def digest_hex(digest: str) -> str:
    return check_digest(digest).removeprefix("sha256:")


@dataclass(frozen=True)
class OciRef:
    """What an image spec says of its OCI image: the manifest digest in outgrow's cache and
    where it came from (an archive's name or a registry reference), for people."""

    digest: str
    reference: str = ""

    def __post_init__(self) -> None:
        check_digest(self.digest, "oci.digest")

    def to_dict(self) -> dict[str, str]:
        return {"digest": self.digest, "reference": self.reference}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OciRef:
        return cls(digest=str(d.get("digest", "")), reference=str(d.get("reference") or ""))


def _strings(doc: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"image config: {key} must be a list of strings", field="config")
    return tuple(value)


def _mapping(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"image config: {key} must be an object", field="config")
    return value


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"image config: {key} must be a string", field="config")
    return value


@dataclass(frozen=True)
class OciConfig:
    """The runtime part of an image's config (the OCI image spec's ``config`` object)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "8888/tcp"
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_image_config(cls, doc: Mapping[str, Any]) -> OciConfig:
        """Parse an image config document (``application/vnd.oci.image.config.v1+json``);
        a malformed field is a ValidationError naming it."""
        conf = _mapping(doc, "config")
        env: dict[str, str] = {}
        for item in _strings(conf, "Env"):
            key, sep, value = item.partition("=")
            if not key or not sep:
                raise ValidationError(
                    f"image config: Env entry {item!r} is not K=V", field="config"
                )
            env[key] = value
        labels = _mapping(conf, "Labels")
        if not all(isinstance(v, str) for v in labels.values()):
            raise ValidationError("image config: Labels must map to strings", field="config")
        ports = tuple(sorted(_mapping(conf, "ExposedPorts")))
        return cls(
            entrypoint=_strings(conf, "Entrypoint"),
            cmd=_strings(conf, "Cmd"),
            env=env,
            working_dir=_text(conf, "WorkingDir"),
            user=_text(conf, "User"),
            exposed_ports=ports,
            labels=dict(labels),
        )

    @property
    def description(self) -> str:
        return self.labels.get(DESCRIPTION_LABEL, "")

    @property
    def search_path(self) -> str:
        """The PATH the image's processes run with (its Env's, else the usual default)."""
        return self.env.get("PATH") or DEFAULT_PATH

    @property
    def command(self) -> tuple[str, ...]:
        """What the image runs by itself: Entrypoint + Cmd."""
        return self.entrypoint + self.cmd

    @property
    def port(self) -> int | None:
        """8888 when the image exposes it (Jupyter's port), else None."""
        return JUPYTER_PORT if f"{JUPYTER_PORT}/tcp" in self.exposed_ports else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "env": dict(self.env),
            "working_dir": self.working_dir,
            "user": self.user,
            "exposed_ports": list(self.exposed_ports),
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OciConfig:
        return cls(
            entrypoint=tuple(d.get("entrypoint") or ()),
            cmd=tuple(d.get("cmd") or ()),
            env=dict(d.get("env") or {}),
            working_dir=str(d.get("working_dir") or ""),
            user=str(d.get("user") or ""),
            exposed_ports=tuple(d.get("exposed_ports") or ()),
            labels=dict(d.get("labels") or {}),
        )


@dataclass(frozen=True)
class OciImage:
    """An image in a host's OCI cache."""

    digest: str  # manifest digest in the cache (sha256:…)
    reference: str  # the archive's name or the registry reference it came from
    size: int  # bytes of its blobs (manifest, config, compressed layers)
    config: OciConfig
    created: str | None = None  # the image config's "created" (RFC 3339), if any
    imported_at: str = ""
    architecture: str = ""
    os: str = ""
    source_digest: str | None = None  # a pull by digest: the digest asked for

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "reference": self.reference,
            "size": self.size,
            "config": self.config.to_dict(),
            "created": self.created,
            "imported_at": self.imported_at,
            "architecture": self.architecture,
            "os": self.os,
            "source_digest": self.source_digest,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OciImage:
        return cls(
            digest=check_digest(str(d.get("digest", ""))),
            reference=str(d.get("reference") or ""),
            size=int(d.get("size") or 0),
            config=OciConfig.from_dict(d.get("config") or {}),
            created=d.get("created"),
            imported_at=str(d.get("imported_at") or ""),
            architecture=str(d.get("architecture") or ""),
            os=str(d.get("os") or ""),
            source_digest=d.get("source_digest"),
        )


@dataclass(frozen=True)
class RootfsFacts:
    """What an unpacked rootfs offers a job: /bin/sh, and where the probed executables
    (PROBED) are on the image's PATH."""

    search_path: str
    has_sh: bool
    found: Mapping[str, str] = field(default_factory=dict)  # name → path in the image

    @property
    def python(self) -> str | None:
        return self.found.get("python3") or self.found.get("python")

    @property
    def runs_scripts(self) -> bool:
        return self.has_sh or self.python is not None

    @property
    def jupyter_modes(self) -> tuple[str, ...]:
        """The ``--jupyter`` modes the image can serve ("lab", "server")."""
        if "jupyter" not in self.found:
            return ()
        return tuple(m for m in JUPYTER_MODES if f"jupyter-{m}" in self.found)

    def to_dict(self) -> dict[str, Any]:
        return {"search_path": self.search_path, "has_sh": self.has_sh, "found": dict(self.found)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RootfsFacts:
        return cls(
            search_path=str(d.get("search_path") or DEFAULT_PATH),
            has_sh=bool(d.get("has_sh")),
            found=dict(d.get("found") or {}),
        )


def check_script_job(image: str, facts: RootfsFacts) -> None:
    """A ``--script`` job runs with /bin/sh or the image's python3: one must be there."""
    if not facts.runs_scripts:
        raise ValidationError(
            f"image {image!r} has neither /bin/sh nor python3 on its PATH "
            f"({facts.search_path}): a --script job needs one of them",
            field="script",
        )


def check_jupyter(image: str, mode: str, facts: RootfsFacts) -> None:
    """``--jupyter lab|server`` runs the image's own ``jupyter lab``/``jupyter server``."""
    if mode not in JUPYTER_MODES:
        raise ValidationError(f"--jupyter must be lab or server, not {mode!r}", field="jupyter")
    missing = [n for n in ("jupyter", f"jupyter-{mode}") if n not in facts.found]
    if missing:
        what = "JupyterLab (jupyterlab)" if mode == "lab" else "Jupyter Server (jupyter_server)"
        raise ValidationError(
            f"image {image!r} has no {' or '.join(missing)} on its PATH ({facts.search_path}): "
            f"--jupyter {mode} needs {what} installed in the image",
            field="jupyter",
        )


def check_runnable(image: str, config: OciConfig, script: str, jupyter: str | None) -> None:
    """Without a script or --jupyter a job runs the image's Entrypoint/Cmd: it needs one."""
    if not script.strip() and jupyter is None and not config.command:
        raise ValidationError(
            f"image {image!r} has no Entrypoint or Cmd: give a --script or --jupyter lab|server",
            field="script",
        )


def layer_media_types() -> Sequence[str]:
    """Layer media types umoci unpacks (Docker's are converted to these on import)."""
    return (
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    )
