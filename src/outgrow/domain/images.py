"""Images: what a job's software environment is (pure data; building them is agent/images.py).

An image spec names a kind (what the job runs: JupyterLab, a headless Jupyter server, a
Python batch script) and either the pip requirements of its virtualenv or, for an OCI
image, the digest of that image in the host cache (``oci``; agent/oci.py). An OCI image's
kind is ``python`` (a script, or the image's own Entrypoint/Cmd) until a job asks for the
image's own Jupyter (``JobSpec.jupyter``, :meth:`ImageSpec.for_job`). Kinds, the port a
Jupyter image serves on, and the built-in images are defined here and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

from outgrow.domain.oci import OciRef
from outgrow.errors import ValidationError

try:  # only if installed in this environment; never pip's vendored copy
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # pragma: no cover - packaging is in requirements.lock
    _HAVE_PACKAGING = False
else:
    _HAVE_PACKAGING = True

ImageKind = Literal["jupyter-lab", "jupyter-server", "python", "jupyterhub-singleuser"]
IMAGE_KINDS: tuple[str, ...] = get_args(ImageKind)
# A JupyterHub user's server (``jupyterhub-singleuser``), started by OutgrowSpawner and
# served under the hub's prefix (/user/<name>/) rather than /jobs/<id>/: docs/jupyterhub.md.
HUB_KIND = "jupyterhub-singleuser"
# Kinds that run a Jupyter server (reached through the stable URL, idle-checked).
JUPYTER_KINDS: frozenset[str] = frozenset({"jupyter-lab", "jupyter-server", HUB_KIND})
# The port a Jupyter image serves on when its spec does not say otherwise.
DEFAULT_JUPYTER_PORT = 8888
# Venv images of these kinds get outgrow's JupyterLab extension (outgrow-jupyterlab, shipped
# in outgrow/data/labext/, docs/jupyterlab.md) at build time; its version is part of their
# content hash, so bump it with the package's and the images are built again.
LABEXT_KINDS: frozenset[str] = frozenset({"jupyter-lab"})
LABEXT_VERSION = "0.1.0"

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_PKG = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_OP = r"(?:===|==|!=|<=|>=|~=|<|>)"
_VER = r"[A-Za-z0-9_.*+!-]+"
_SPEC = rf"{_OP}\s*{_VER}"
# Fallback when `packaging` is not importable: a strict PEP 508 subset (no URLs).
_REQ_RE = re.compile(
    rf"\s*(?P<name>{_PKG})\s*(?:\[\s*{_PKG}(?:\s*,\s*{_PKG})*\s*\])?\s*"
    rf"(?:\(?\s*{_SPEC}(?:\s*,\s*{_SPEC})*\s*\)?)?\s*"
    r"(?:;\s*[A-Za-z0-9_.<>=!~'\"() -]+)?\s*"
)
_OPERATOR_CHARS = "<>=!~@"


def _validation(message: str) -> ValidationError:
    return ValidationError(message, field="pip")


def validate_requirement(entry: str) -> str:
    """Check one requirement string and return it in canonical spelling."""
    text = entry.strip()
    if not text:
        raise _validation("empty requirement")
    if text.startswith("-"):
        raise _validation(f"pip option {text!r} is not allowed; give package requirements only")
    if "://" in text or "@" in text or "/" in text or "\\" in text or text[0] in ".~":
        raise _validation(f"{text!r}: paths and URLs are not allowed; give package requirements")
    if _HAVE_PACKAGING:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            why = str(exc).splitlines()[0]
            raise ValidationError(f"invalid requirement {text!r}: {why}", field="pip") from exc
        if req.url:  # pragma: no cover - '@' and '://' are rejected above
            raise _validation(f"{text!r}: URLs are not allowed")
        return str(req)
    if not _REQ_RE.fullmatch(text):
        raise _validation(f"invalid requirement {text!r}")
    head, sep, marker = text.partition(";")
    return "".join(head.split()) + (f"; {' '.join(marker.split())}" if sep else "")


def _split_entries(text: str) -> list[str]:
    """Split on whitespace, commas and newlines, keeping ``pandas >= 2, <3`` together."""
    entries: list[str] = []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw)
        cur, depth, sep, comma = "", 0, False, False
        for ch in line:
            if ";" in cur:  # an environment marker runs to the end of the line
                cur += ch
                continue
            if depth == 0 and (ch.isspace() or ch == ","):
                sep, comma = True, comma or ch == ","
                continue
            if sep and cur:
                new = (ch.isalnum() or ch == "-") and (comma or cur[-1] not in _OPERATOR_CHARS)
                if new:
                    entries.append(cur)
                    cur = ""
                else:
                    cur += "," if comma else " "
            sep = comma = False
            depth += {"[": 1, "]": -1}.get(ch, 0)
            cur += ch
        if cur:
            entries.append(cur)
    return entries


def parse_pip_spec(text: str) -> tuple[str, ...]:
    """``"pandas pyarrow>=15"`` (or newline/comma separated) → validated requirement strings.

    Raises ValidationError naming the first bad entry. Duplicates are dropped.
    """
    out: list[str] = []
    for entry in _split_entries(text):
        req = validate_requirement(entry)
        if req not in out:
            out.append(req)
    return tuple(out)


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_key(req: str) -> str:
    """Normalized form used for hashing; independent of whether `packaging` is installed."""
    head, sep, marker = req.partition(";")
    head = "".join(head.split())
    m = re.match(_PKG, head)
    name = canonical_name(m.group(0)) if m else head.lower()
    rest = head[m.end() :] if m else ""
    extras: list[str] = []
    if rest.startswith("["):
        inner, _, rest = rest[1:].partition("]")
        extras = sorted({canonical_name(e) for e in inner.split(",") if e})
    rest = rest.strip("()")
    specs = sorted(s for s in rest.split(",") if s)
    key = name + (f"[{','.join(extras)}]" if extras else "") + ",".join(specs)
    return key + (";" + "".join(marker.split()).replace("'", '"') if sep else "")


def _requirement_name(req: str) -> str:
    m = re.match(r"\s*" + _PKG, req)
    return canonical_name(m.group(0).strip()) if m else req


def _host_tag() -> tuple[str, str]:
    return f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine()


@dataclass(frozen=True)
class ImageSpec:
    name: str
    kind: ImageKind
    pip: tuple[str, ...]
    description: str = ""
    docs: str = ""
    default_port: int | None = None
    oci: OciRef | None = None  # an OCI image (pip is then empty)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValidationError(
                f"invalid image name {self.name!r}: use 1-40 lowercase letters, digits or '-', "
                "starting with a letter or digit",
                field="name",
            )
        if self.kind not in IMAGE_KINDS:
            raise ValidationError(
                f"invalid image kind {self.kind!r}: expected one of {', '.join(IMAGE_KINDS)}",
                field="kind",
            )
        if isinstance(self.pip, str):
            raise ValidationError("pip must be a sequence of requirements", field="pip")
        object.__setattr__(self, "pip", tuple(validate_requirement(p) for p in self.pip))
        if self.default_port is not None and not 1 <= self.default_port <= 65535:
            raise ValidationError(f"invalid port {self.default_port}", field="default_port")
        if isinstance(self.oci, Mapping):
            object.__setattr__(self, "oci", OciRef.from_dict(self.oci))
        if self.oci is not None and self.pip:
            raise ValidationError("an OCI image has no pip packages", field="pip")

    @property
    def is_oci(self) -> bool:
        return self.oci is not None

    def for_job(self, jupyter: str | None) -> ImageSpec:
        """The image as a job runs it: ``jupyter`` ("lab", "server") runs an OCI image's
        own Jupyter (kind jupyter-lab/jupyter-server, port 8888 unless the image says)."""
        if jupyter is None:
            return self
        if not self.is_oci:
            raise ValidationError(
                f"--jupyter is for OCI images; image {self.name!r} is a {self.kind} image",
                field="jupyter",
            )
        if jupyter not in ("lab", "server"):
            raise ValidationError(
                f"--jupyter must be lab or server, not {jupyter!r}", field="jupyter"
            )
        kind: ImageKind = "jupyter-lab" if jupyter == "lab" else "jupyter-server"
        return replace(self, kind=kind, default_port=self.default_port or DEFAULT_JUPYTER_PORT)

    def content_hash(self, python_version: str | None = None, machine: str | None = None) -> str:
        """First 16 hex of sha256 over kind, the sorted normalized pip list and the interpreter
        (major.minor, default: this one) and machine. Name, description and docs do not count."""
        py, mach = _host_tag()
        payload: dict[str, Any] = {
            "kind": self.kind,
            "pip": sorted({_requirement_key(p) for p in self.pip}),
            "python": python_version or py,
            "machine": machine or mach,
        }
        if self.oci is not None:
            payload["oci"] = self.oci.digest
        if self.has_labext:
            payload["labext"] = LABEXT_VERSION
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def derive(self, name: str, extra_pip: Sequence[str] | str, description: str = "") -> ImageSpec:
        """Same kind and port; pip = base pip + extra. An extra with a version specifier replaces
        the base's entry for that package (``--pip 'pandas==2.2.3'``); a bare name the base
        already has keeps the base's pin; anything else is added (pip merges the two)."""
        if self.is_oci:
            raise ValidationError(
                f"image {self.name!r} is an OCI image: pip packages cannot be added to it; "
                "build a new image (outgrow image build) instead",
                field="base",
            )
        extra = parse_pip_spec(extra_pip) if isinstance(extra_pip, str) else tuple(extra_pip)
        pip = list(self.pip)
        for entry in (validate_requirement(e) for e in extra):
            pkg = _requirement_name(entry)
            if re.search(_OP, entry.partition(";")[0]):  # a version pin replaces the base's
                pip = [p for p in pip if _requirement_name(p) != pkg]
            elif canonical_name(entry) == pkg and any(_requirement_name(p) == pkg for p in pip):
                continue  # bare name the base already has: keep the base's pin
            if entry not in pip:
                pip.append(entry)
        added = ", ".join(extra) or "nothing"
        docs = f"Derived from the `{self.name}` image, adding: `{added}`.\n\n{self.docs}".rstrip()
        return ImageSpec(
            name=name,
            kind=self.kind,
            pip=tuple(pip),
            description=description or f"{self.name} + {added}",
            docs=docs,
            default_port=self.default_port,
        )

    @property
    def has_labext(self) -> bool:
        """Built with outgrow's JupyterLab extension (a venv image running JupyterLab)."""
        return self.oci is None and self.kind in LABEXT_KINDS

    @property
    def is_jupyter(self) -> bool:
        return self.kind in JUPYTER_KINDS

    @property
    def port(self) -> int | None:
        """The port the job serves on: the spec's own, else Jupyter's default; None for
        kinds that serve nothing (batch)."""
        if self.default_port is not None:
            return self.default_port
        return DEFAULT_JUPYTER_PORT if self.is_jupyter else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pip": list(self.pip)}  # oci: {"digest", "reference"} | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageSpec:
        """The spec from its ``to_dict`` form (an API body, a stored checkpoint). A built-in
        image named without extra packages is the built-in itself."""
        if d.get("name") in BUILTIN_IMAGES and not d.get("pip"):
            return BUILTIN_IMAGES[str(d["name"])]
        return cls(
            name=d["name"],
            kind=d["kind"],
            pip=tuple(d.get("pip") or ()),
            description=d.get("description", ""),
            docs=d.get("docs", ""),
            default_port=d.get("default_port"),
            oci=OciRef.from_dict(d["oci"]) if d.get("oci") else None,
        )


_JUPYTER_LAB_DOCS = """\
# JupyterLab

The full JupyterLab web IDE with an IPython kernel, NumPy and pandas.

* **Opening it**: the job's stable URL opens JupyterLab; the URL carries a random access
  token generated for the job (keep it private, anyone with the URL can run code).
  The URL stays the same when the job is migrated to another instance.
* **Your files**: notebooks and data live in the job workspace, the server's root
  directory. It moves with the job, together with running kernels and their memory.
* **Memory and moves**: the status bar shows the job's memory against the limit of the
  instance it runs on now; a notification says when the notebook was moved, why, and
  how long it was frozen (docs/jupyterlab.md).
* **More packages**: the image is shared read-only by every job on the host, so
  `%pip install` does not stick. Create a derived image instead, e.g.
  `--base jupyter-lab --pip 'pyarrow scikit-learn'`, and start the job from it.
"""

_JUPYTER_SERVER_DOCS = """\
# Jupyter Server (headless)

A Jupyter Server with an IPython kernel, NumPy and pandas, but no web UI: use it as a remote
kernel gateway from the JupyterLab on your own machine:

```
jupyter lab --gateway-url=<stable URL> --GatewayClient.auth_token=<token>
```

`<stable URL>` and `<token>` are shown on the job's page. Kernels you start run on the job's
instance and keep running (with their memory) when the job is migrated; the URL stays the
same. Notebooks stay on your machine; the kernel's working directory is the job workspace.
Add packages with a derived image: `--base jupyter-server --pip 'pyarrow'`.
"""

_PYTHON_DOCS = """\
# Python (batch)

A plain Python virtualenv with NumPy and pandas for batch jobs. The job script runs with this
venv's `python`, in the job workspace; its stdout and stderr are the job log. Add packages
with a derived image: `--base python --pip 'pyarrow requests'`.
"""

_JUPYTERHUB_SINGLEUSER_DOCS = """\
# JupyterHub single-user server

JupyterLab run by `jupyterhub-singleuser`, for a JupyterHub whose spawner is outgrow's
(`c.JupyterHub.spawner_class = "outgrow"`, see docs/jupyterhub.md): each user's server is
a job that grows, shrinks, suspends when idle and moves while the user keeps working at
the hub's URL; the hub's login decides who gets in. Jobs of this image are created by the
spawner only. `jupyterhub` is pinned to the version outgrow is tested with; a hub of
another version needs a derived image, e.g. `--base jupyterhub-singleuser
--pip 'jupyterhub==5.4.0'`.
"""

_PINS = "ipykernel==7.4.0 numpy==2.4.6 pandas==3.1.1"
_BUILTINS: tuple[tuple[ImageKind, str, str, str, int | None], ...] = (
    ("jupyter-lab", f"jupyterlab==4.6.6 jupyter_server==2.21.1 {_PINS}",
     "JupyterLab with IPython, NumPy and pandas", _JUPYTER_LAB_DOCS, 8888),
    ("jupyter-server", f"jupyter_server==2.21.1 {_PINS}",
     "Headless Jupyter Server for a local JupyterLab (gateway)", _JUPYTER_SERVER_DOCS, 8888),
    ("python", "numpy==2.4.6 pandas==3.1.1",
     "Python with NumPy and pandas for batch scripts", _PYTHON_DOCS, None),
    ("jupyterhub-singleuser",
     f"jupyterhub==6.1.1 jupyterlab==4.6.6 jupyter_server==2.21.1 {_PINS}",
     "A JupyterHub user's JupyterLab (started by the hub's OutgrowSpawner)",
     _JUPYTERHUB_SINGLEUSER_DOCS, 8888),
)  # fmt: skip
BUILTIN_IMAGES: dict[str, ImageSpec] = {
    kind: ImageSpec(kind, kind, tuple(pins.split()), description, docs, port)
    for kind, pins, description, docs, port in _BUILTINS
}
