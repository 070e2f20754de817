"""Building images: a job's virtualenv, built from its spec (domain/images.py) into a cache.

Images are cached per host under ``<cache>/<content hash>/`` and built once, in place, at
their final absolute path (virtualenvs are not relocatable and CRIU restores a job against the
same paths). A build is serialised by ``fcntl.flock`` on ``<cache>/<hash>.lock`` so concurrent
callers, threads or processes, build once and the others reuse the result. A build is complete
only once ``.complete`` exists; a directory without it is a crashed build and is rebuilt.
Lock files are left in place (removing them would race with waiters).

pip runs with the host's own configuration (pip.conf, ``PIP_*``); nothing is overridden.
A JupyterLab image also gets outgrow's extension (``outgrow/data/labext``, a local package
whose lab half is prebuilt: docs/jupyterlab.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from outgrow.cancel import Cancel, check
from outgrow.domain.images import ImageSpec
from outgrow.errors import CancelledError, ImageBuildError, NotFoundError, ValidationError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
LABEXT_DIR = Path(__file__).resolve().parent.parent / "data" / "labext"
_HASH_RE = re.compile(r"[0-9a-f]{16}")


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


def _kill_on_cancel(proc: subprocess.Popen[str], cancel: Cancel) -> None:
    while proc.poll() is None:
        if cancel.wait(0.2):
            proc.kill()
            return


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
    cancel: Cancel | None = None  # set: kill the running step, CancelledError

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
        self,
        spec_hash: str,
        deadline: float,
        on_wait: Callable[[], None],
        cancel: Cancel | None = None,
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
                    check(cancel, f"waiting for another build of image {spec_hash}")
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
        self,
        spec: ImageSpec,
        progress: Progress | None = None,
        timeout: float = 1800,
        cancel: Cancel | None = None,
    ) -> BuiltImage:
        """Return the built image for ``spec``, building it first if needed (once per host).
        A set ``cancel`` stops the build (its step is killed, the half-built directory
        removed) with CancelledError."""
        found = self.get(spec)
        if found is not None:
            return found
        h = self.hash_of(spec)
        b = _Build(spec, progress, time.monotonic() + timeout, cancel=cancel)
        waiting = f"waiting for another build of image '{spec.name}' ({h}) to finish"
        with self._locked(h, b.deadline, lambda: b.say(waiting), cancel):
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
                if isinstance(exc, Exception) and not isinstance(
                    exc, ImageBuildError | CancelledError
                ):
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
        check(b.cancel, f"building image '{b.spec.name}'")
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
        if b.cancel is not None:  # a cancel kills the step at once
            threading.Thread(target=_kill_on_cancel, args=(proc, b.cancel), daemon=True).start()
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
        check(b.cancel, f"building image '{b.spec.name}' ({what})")
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
        if spec.has_labext:
            b.say(f"installing outgrow's JupyterLab extension from {LABEXT_DIR}")
            cmd = [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
            self._run(b, [*cmd, "--progress-bar", "off", str(LABEXT_DIR)], "pip install labext")
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
