"""Real OCI test images, built without any registry, cached per machine.

``jupyter_archive()`` builds (once per recipe, then reuses) an OCI archive of a minimal
Debian bookworm (``mmdebstrap --variant=minbase`` from Debian's packages) with python3,
python3-venv and a virtualenv at ``/opt/jupyter`` holding jupyter_server and ipykernel
from PyPI. The wheels are downloaded on the host (its pip configuration; the host's
Python 3.11 is bookworm's, so they fit) and installed in the chroot with ``--no-index``,
so the chroot needs no network. umoci turns the rootfs into a one-layer OCI image with a
config (Env, WorkingDir, ExposedPorts 8888/tcp, a description label, Cmd); skopeo writes
the archive. The result lives at ``/var/cache/outgrow/test-images/<recipe hash>.tar``
(``OUTGROW_TEST_IMAGE_CACHE`` overrides the directory): later runs take no time.

``tiny_layout()`` makes, in seconds, an image with no shell, no python and no jupyter:
two layers, the second whiting out a file of the first (umoci's flattening must drop it).

Run ``python tests/oci_image.py`` to build the Jupyter image and print its path, size
and build time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CACHE = Path(os.environ.get("OUTGROW_TEST_IMAGE_CACHE", "/var/cache/outgrow/test-images"))
JUPYTER_PORT = 8888
DESCRIPTION = "Test image: Debian bookworm (minbase), Python 3.11 and Jupyter Server"
VENV = "/opt/jupyter"

# Everything that changes the image is in here: a change builds a new archive.
RECIPE: dict[str, object] = {
    "version": 1,
    "suite": "bookworm",
    "variant": "minbase",
    "packages": ["python3", "python3-venv"],
    "python": "3.11.2",  # bookworm's: wheels are chosen for it, not for the host's
    "pip": ["jupyter_server==2.21.1", "ipykernel==7.4.0"],
    "venv": VENV,
    "tag": "outgrow-test/jupyter:1",
    "config": {
        "env": [
            f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8",
            "OUTGROW_TEST_IMAGE=1",
        ],
        "workingdir": "/root",
        "ports": [f"{JUPYTER_PORT}/tcp"],
        "labels": {
            "org.opencontainers.image.description": DESCRIPTION,
            "org.opencontainers.image.title": "outgrow test jupyter",
        },
        "cmd": ["jupyter", "server", "--ip=0.0.0.0", f"--port={JUPYTER_PORT}", "--no-browser"],
    },
}


def recipe_hash() -> str:
    blob = json.dumps(RECIPE, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): " + "\n".join(tail))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per machine at a time (parallel test runs wait for the first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks; released on close
        yield


def _clean_env() -> dict[str, str]:
    # The chroot has none of the host's pip configuration (certificates, indexes).
    return {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}


def _configure(layout: Path, tag: str, config: dict[str, object]) -> None:
    cmd = ["umoci", "config", "--image", f"{layout}:{tag}", "--author", "outgrow tests"]
    for e in config["env"]:  # type: ignore[attr-defined]
        cmd += ["--config.env", e]
    cmd += ["--config.workingdir", str(config["workingdir"])]
    for p in config["ports"]:  # type: ignore[attr-defined]
        cmd += ["--config.exposedports", p]
    for k, v in config["labels"].items():  # type: ignore[attr-defined]
        cmd += ["--config.label", f"{k}={v}"]
    for c in config["cmd"]:  # type: ignore[attr-defined]
        cmd += ["--config.cmd", c]
    cmd += ["--architecture", "amd64", "--os", "linux"]
    _run(cmd)


def build_jupyter_archive(out: Path) -> None:
    """Build the archive at ``out`` (written under a temporary name, renamed at the end)."""
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
    try:
        wheels = work / "wheels"
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
        pip += ["--python-version", str(RECIPE["python"])]
        _run([*pip, "--dest", str(wheels), *RECIPE["pip"]])  # type: ignore[misc]
        rootfs = work / "rootfs"
        pkgs = ",".join(RECIPE["packages"])  # type: ignore[arg-type]
        install = f"{VENV}/bin/python -m pip install --no-index --find-links /tmp/wheels"
        _run(
            [
                "mmdebstrap",
                "--quiet",
                f"--variant={RECIPE['variant']}",
                f"--include={pkgs}",
                "--customize-hook=mkdir -p $1/tmp/wheels",
                f"--customize-hook=copy-in {wheels}/. /tmp/wheels",
                f'--customize-hook=chroot "$1" python3 -m venv {VENV}',
                f'--customize-hook=chroot "$1" {install} {" ".join(RECIPE["pip"])}',  # type: ignore[arg-type]
                '--customize-hook=rm -rf "$1"/tmp/wheels "$1"/root/.cache',
                # apt's lists are only needed to install more: not in the image
                '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
                str(RECIPE["suite"]),
                str(rootfs),
            ],
            env=_clean_env(),
        )
        layout, tag = work / "layout", "jupyter"
        _run(["umoci", "init", "--layout", str(layout)])
        _run(["umoci", "new", "--image", f"{layout}:{tag}"])
        _run(["umoci", "insert", "--image", f"{layout}:{tag}", str(rootfs), "/"])
        _configure(layout, tag, RECIPE["config"])  # type: ignore[arg-type]
        tmp = work / "image.tar"
        _run(
            [
                "skopeo",
                "copy",
                "--quiet",
                f"oci:{layout}:{tag}",
                f"oci-archive:{tmp}:{RECIPE['tag']}",
            ]
        )
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def jupyter_archive() -> tuple[Path, float | None]:
    """(the archive, seconds it took to build now, or None when it was cached)."""
    out = CACHE / f"jupyter-{recipe_hash()}.tar"
    if out.is_file():
        return out, None
    with _locked(CACHE / ".lock"):
        if out.is_file():
            return out, None
        t0 = time.monotonic()
        build_jupyter_archive(out)
        return out, time.monotonic() - t0


def tiny_layout(dest: Path, *, tag: str = "tiny") -> Path:
    """An OCI layout at ``dest`` with a two-layer image: /data/keep.txt and
    /data/gone.txt, then a whiteout of gone.txt. No shell, no python, no jupyter."""
    src = dest.parent / f"{dest.name}-src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "keep.txt").write_text("kept\n")
    (src / "data" / "gone.txt").write_text("whited out by layer 2\n")
    _run(["umoci", "init", "--layout", str(dest)])
    _run(["umoci", "new", "--image", f"{dest}:{tag}"])
    _run(["umoci", "insert", "--image", f"{dest}:{tag}", str(src / "data"), "/data"])
    _run(["umoci", "insert", "--image", f"{dest}:{tag}", "--whiteout", "/data/gone.txt"])
    _run(
        [
            "umoci", "config", "--image", f"{dest}:{tag}", "--config.cmd", "/data/run",
            "--config.label", "org.opencontainers.image.description=tiny: no shell",
            "--architecture", "amd64", "--os", "linux",
        ]
    )  # fmt: skip
    shutil.rmtree(src)
    return dest


def missing_tools() -> list[str]:
    return [t for t in ("skopeo", "umoci", "mmdebstrap") if shutil.which(t) is None]


def oci_archive(layout: Path, dest: Path, tag: str = "tiny") -> Path:
    """An OCI layout's image as an OCI archive (what `podman save` writes)."""
    _run(["skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"oci-archive:{dest}:{tag}"])
    return dest


def docker_archive(layout: Path, dest: Path, tag: str = "tiny") -> Path:
    """An OCI layout's image as a `docker save` archive."""
    ref = f"docker-archive:{dest}:outgrow-test/{tag}:1"
    _run(["skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", ref])
    return dest


class Registry:
    """Debian's docker-registry (the CNCF distribution registry) on loopback, plain HTTP:
    a real registry for pulls, with its storage in a test's tmp dir."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.host = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.root / "config.yml"
        conf.write_text(
            "version: 0.1\n"
            "log: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}}}\n"
            f"http: {{addr: '{self.host}'}}\n"
        )
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(conf)], stdout=log, stderr=log
        )

    def push(self, layout: Path, name: str, tag: str = "tiny") -> str:
        """Push a layout's image as ``name`` (``repo:tag``); returns its manifest digest."""
        dest = f"docker://{self.host}/{name}"
        _run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}", dest])
        out = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", dest],
            capture_output=True,
            check=True,
        ).stdout
        return "sha256:" + hashlib.sha256(out).hexdigest()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


if __name__ == "__main__":
    path, seconds = jupyter_archive()
    size = path.stat().st_size
    took = "cached" if seconds is None else f"built in {seconds:.1f} s"
    print(f"{path} ({size / 1024**2:.1f} MiB, {took})")
