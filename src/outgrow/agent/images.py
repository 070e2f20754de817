"""Images: the software environment of a job, a Python virtualenv built from a pip spec.

Images are cached per host under ``<cache>/<content hash>/`` and built once, in place, at
their final absolute path (virtualenvs are not relocatable and CRIU restores a job against the
same paths). A build is serialised by ``fcntl.flock`` on ``<cache>/<hash>.lock`` so concurrent
callers, threads or processes, build once and the others reuse the result. A build is complete
only once ``.complete`` exists; a directory without it is a crashed build and is rebuilt.
Lock files are left in place (removing them would race with waiters).

pip runs with the host's own configuration (pip.conf, ``PIP_*``); nothing is overridden.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from outgrow.errors import ImageBuildError, NotFoundError, ValidationError

try:  # only if installed in this environment; never pip's vendored copy
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # pragma: no cover - packaging is in requirements.lock
    _HAVE_PACKAGING = False
else:
    _HAVE_PACKAGING = True

log = logging.getLogger(__name__)

ImageKind = Literal["jupyter-lab", "jupyter-server", "python"]
IMAGE_KINDS: tuple[str, ...] = get_args(ImageKind)
Progress = Callable[[str], None]

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_HASH_RE = re.compile(r"[0-9a-f]{16}")
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

    def content_hash(self, python_version: str | None = None, machine: str | None = None) -> str:
        """First 16 hex of sha256 over kind, the sorted normalized pip list and the interpreter
        (major.minor, default: this one) and machine. Name, description and docs do not count."""
        py, mach = _host_tag()
        payload = {
            "kind": self.kind,
            "pip": sorted({_requirement_key(p) for p in self.pip}),
            "python": python_version or py,
            "machine": machine or mach,
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def derive(self, name: str, extra_pip: Sequence[str] | str, description: str = "") -> ImageSpec:
        """Same kind and port; pip = base pip + extra. An extra with a version specifier replaces
        the base's entry for that package (``--pip 'pandas==2.2.3'``); a bare name the base
        already has keeps the base's pin; anything else is added (pip merges the two)."""
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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pip": list(self.pip)}


_JUPYTER_LAB_DOCS = """\
# JupyterLab

The full JupyterLab web IDE with an IPython kernel, NumPy and pandas.

* **Opening it**: the job's stable URL opens JupyterLab; the URL carries a random access
  token generated for the job (keep it private, anyone with the URL can run code).
  The URL stays the same when the job is migrated to another instance.
* **Your files**: notebooks and data live in the job workspace, the server's root
  directory. It moves with the job, together with running kernels and their memory.
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

_PINS = "ipykernel==7.4.0 numpy==2.4.6 pandas==3.1.1"
_BUILTINS: tuple[tuple[ImageKind, str, str, str, int | None], ...] = (
    ("jupyter-lab", f"jupyterlab==4.6.6 jupyter_server==2.21.1 {_PINS}",
     "JupyterLab with IPython, NumPy and pandas", _JUPYTER_LAB_DOCS, 8888),
    ("jupyter-server", f"jupyter_server==2.21.1 {_PINS}",
     "Headless Jupyter Server for a local JupyterLab (gateway)", _JUPYTER_SERVER_DOCS, 8888),
    ("python", "numpy==2.4.6 pandas==3.1.1",
     "Python with NumPy and pandas for batch scripts", _PYTHON_DOCS, None),
)  # fmt: skip
BUILTIN_IMAGES: dict[str, ImageSpec] = {
    kind: ImageSpec(kind, kind, tuple(pins.split()), description, docs, port)
    for kind, pins, description, docs, port in _BUILTINS
}


@dataclass(frozen=True)
class BuiltImage:
    spec_hash: str
    path: Path
    python: Path
    bin_dir: Path
    size_bytes: int | None = None


def _meaningful_error(lines: Sequence[str]) -> str:
    for line in reversed(lines):
        if line.startswith("ERROR:"):
            return line.removeprefix("ERROR:").strip()[:300]
    noise = ("note:", "hint:", "[notice]", "WARNING:", "╰─>", "See above")
    for line in reversed(lines):
        s = line.strip()
        if s and not s.startswith(noise):
            return s[:300]
    return "unknown error (no output)"


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


@dataclass
class _Build:
    spec: ImageSpec
    progress: Progress | None
    deadline: float
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=50))

    def say(self, line: str) -> None:
        self.tail.append(line)
        if self.progress is not None:
            try:
                self.progress(line)
            except Exception:  # a broken progress sink must not break the build
                log.exception("image progress callback failed")


class ImageCache:
    """Host-wide cache of built images at ``root`` (``Settings.image_cache_dir``).

    ``remove()`` does not check whether a job (or a checkpoint) still uses the image: the
    caller must know it is unused, otherwise that job breaks on restore.
    """

    def __init__(self, root: Path, python: str | None = None):
        self.root = Path(root).absolute()
        self.python = python or getattr(sys, "_base_executable", None) or sys.executable
        self._tag: tuple[str, str] | None = None

    # -- paths and lookup -------------------------------------------------------------------

    def _python_tag(self) -> tuple[str, str]:
        """(major.minor, machine) of the interpreter that builds the venvs."""
        if self._tag is None:
            code = "import sys, platform; print('%d.%d' % sys.version_info[:2], platform.machine())"
            try:
                cmd = [self.python, "-c", code]
                out = subprocess.run(
                    cmd, capture_output=True, text=True, check=True, env=self._env(), timeout=60
                ).stdout.split()
                self._tag = (out[0], out[1])
            except (OSError, subprocess.SubprocessError, IndexError) as exc:
                raise ImageBuildError(
                    f"the image interpreter {self.python} is not usable", detail=str(exc)
                ) from exc
        return self._tag

    def hash_of(self, spec: ImageSpec) -> str:
        return spec.content_hash(*self._python_tag())

    def _built(self, spec_hash: str, meta: dict[str, Any] | None = None) -> BuiltImage:
        path = self.root / spec_hash
        size = (meta or {}).get("size_bytes")
        return BuiltImage(
            spec_hash=spec_hash,
            path=path,
            python=path / "venv" / "bin" / "python",
            bin_dir=path / "venv" / "bin",
            size_bytes=size if isinstance(size, int) else None,
        )

    def _read_meta(self, spec_hash: str) -> dict[str, Any]:
        try:
            data = json.loads((self.root / spec_hash / "image.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _complete(self, spec_hash: str) -> bool:
        return (self.root / spec_hash / ".complete").is_file()

    def get(self, spec: ImageSpec) -> BuiltImage | None:
        """The built image for ``spec``, or None if it is not (completely) built."""
        h = self.hash_of(spec)
        return self._built(h, self._read_meta(h)) if self._complete(h) else None

    def list(self) -> list[tuple[BuiltImage, dict[str, Any]]]:
        """Complete images with their image.json, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            if d.is_dir() and _HASH_RE.fullmatch(d.name) and self._complete(d.name):
                meta = self._read_meta(d.name)
                out.append((self._built(d.name, meta), meta))
        out.sort(key=lambda item: (str(item[1].get("built_at", "")), item[0].spec_hash))
        return out

    # -- locking ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(
        self, spec_hash: str, deadline: float, on_wait: Callable[[], None]
    ) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{spec_hash}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited:
                        on_wait()
                        waited = True
                    if time.monotonic() >= deadline:
                        msg = f"timed out waiting for the lock of image {spec_hash}"
                        raise ImageBuildError(msg) from None
                    time.sleep(0.2)
            yield
        finally:
            os.close(fd)  # releases the lock

    def remove(self, spec_hash: str, timeout: float = 60) -> None:
        """Delete a built (or half-built) image. Waits for a running build of it to finish."""
        if not _HASH_RE.fullmatch(spec_hash):
            raise ValidationError(f"invalid image hash {spec_hash!r}", field="spec_hash")
        path = self.root / spec_hash
        if not path.exists():
            raise NotFoundError(f"image {spec_hash} is not in the cache", field="spec_hash")
        with self._locked(spec_hash, time.monotonic() + timeout, lambda: None):
            (path / ".complete").unlink(missing_ok=True)  # readers stop seeing it first
            shutil.rmtree(path, ignore_errors=True)
        log.info("removed image %s", spec_hash)

    # -- building ---------------------------------------------------------------------------

    def ensure(
        self, spec: ImageSpec, progress: Progress | None = None, timeout: float = 1800
    ) -> BuiltImage:
        """Return the built image for ``spec``, building it first if needed (once per host)."""
        found = self.get(spec)
        if found is not None:
            return found
        h = self.hash_of(spec)
        b = _Build(spec, progress, time.monotonic() + timeout)
        waiting = f"waiting for another build of image '{spec.name}' ({h}) to finish"
        with self._locked(h, b.deadline, lambda: b.say(waiting)):
            found = self.get(spec)
            if found is not None:
                b.say(f"image '{spec.name}' ({h}) is ready")
                return found
            path = self.root / h
            if path.exists():
                b.say(f"removing incomplete build of image '{spec.name}' at {path}")
                shutil.rmtree(path)
            try:
                return self._build(b, h, path)
            except BaseException as exc:  # incl. KeyboardInterrupt: never leave a half-built dir
                shutil.rmtree(path, ignore_errors=True)
                if isinstance(exc, Exception) and not isinstance(exc, ImageBuildError):
                    msg = f"building image '{spec.name}' failed: {exc}"
                    raise ImageBuildError(msg, detail="\n".join(b.tail)) from exc
                raise

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
            env.pop(var, None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _run(self, b: _Build, cmd: Sequence[str], what: str) -> None:
        """Run ``cmd`` streaming each output line to progress; raise ImageBuildError on failure."""
        remaining = b.deadline - time.monotonic()
        if remaining <= 0:
            raise ImageBuildError(f"building image '{b.spec.name}' timed out before {what}")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=self._env(),
        )
        timer = threading.Timer(remaining, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    b.say(line)
            rc = proc.wait()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if rc != 0:
            reason = f"{what} timed out" if timed_out else _meaningful_error(list(b.tail))
            raise ImageBuildError(
                f"building image '{b.spec.name}' failed: {reason}", detail="\n".join(b.tail)
            )

    def _build(self, b: _Build, h: str, path: Path) -> BuiltImage:
        spec, started = b.spec, time.monotonic()
        log.info("building image %s (%s) at %s", spec.name, h, path)
        path.mkdir(parents=True)
        venv = path / "venv"
        py = str(venv / "bin" / "python")
        b.say(f"creating virtualenv for image '{spec.name}' at {venv}")
        self._run(b, [self.python, "-m", "venv", str(venv)], "creating the virtualenv")
        if spec.pip:
            n = len(spec.pip)
            b.say(f"installing {n} package{'s' if n != 1 else ''}: {' '.join(spec.pip)}")
            # `python -m pip` rather than venv/bin/pip: deep cache paths can exceed the
            # kernel's shebang length limit.
            cmd = [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
            self._run(b, [*cmd, "--progress-bar", "off", *spec.pip], "pip install")
        code = "import json, platform, importlib.metadata as m; print(json.dumps(["
        code += "platform.python_version(), "
        code += "sorted(f'{d.name}=={d.version}' for d in m.distributions())]))"
        version, packages = json.loads(
            subprocess.run([py, "-c", code], capture_output=True, check=True, timeout=120).stdout
        )
        seconds = time.monotonic() - started
        built_at = datetime.now(UTC).isoformat(timespec="seconds")
        meta: dict[str, Any] = {
            **spec.to_dict(),
            "hash": h,
            "built_at": built_at,
            "build_seconds": round(seconds, 1),
            "python_version": version,
            "machine": self._python_tag()[1],
            "packages": packages,
            "size_bytes": _tree_size(path),
        }
        tmp = path / "image.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, path / "image.json")
        with open(path / ".complete", "w") as f:
            f.write(built_at + "\n")
            f.flush()
            os.fsync(f.fileno())
        b.say(f"done in {seconds:.1f} s")
        log.info("built image %s (%s) in %.1f s", spec.name, h, seconds)
        return self._built(h, meta)
