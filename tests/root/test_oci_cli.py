"""OCI images through the `outgrow` command against a real `outgrow up`: import (an OCI
archive, a docker save archive, a layout directory), pull, ls, submit checks, rm, build;
every failure one line on stderr and exit 1."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_pool, leftovers, unique_prefix
from cp_server import free_port
from oci_image import docker_archive, oci_archive
from waiting import wait_for_value

pytestmark = [pytest.mark.root, pytest.mark.slow]

_CONSOLE = Path(sys.executable).parent / "outgrow"
OUTGROW = [str(_CONSOLE)] if _CONSOLE.exists() else [sys.executable, "-m", "outgrow.cli"]


class Up:
    """`outgrow up` in a child process, and the CLI pointed at it."""

    def __init__(self, tmp: Path, registry: str):
        self.tmp, self.prefix, self.port = tmp, unique_prefix(), free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OUTGROW_")},
            "OUTGROW_RESOURCE_PREFIX": self.prefix,
            "OUTGROW_ADDRESS_POOL": free_pool(self.prefix),
            "OUTGROW_ADMIN_PASSWORD": "pw-" + secrets.token_hex(8),
            "OUTGROW_IMAGE_CACHE_DIR": str(tmp / "images"),
            "OUTGROW_OCI_INSECURE_REGISTRIES": json.dumps([registry]),
            "XDG_CONFIG_HOME": str(tmp / "config"),
        }
        self.log = tmp / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [*OUTGROW, "up", "--port", str(self.port), "--data-dir", str(self.tmp / "data")]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        proc = self.proc

        def health() -> int:
            assert proc.poll() is None, self.log.read_text()
            return httpx.get(f"http://127.0.0.1:{self.port}/api/v1/health", timeout=2).status_code

        wait_for_value(
            health,
            lambda code: code == 200,
            timeout=90,
            interval=0.3,
            what="outgrow up to answer",
            ignore=(httpx.HTTPError,),
            context=lambda: self.log.read_text()[-3000:],
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*OUTGROW, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=600,
        )

    def json(self, *args: str) -> Any:
        r = self.run(*args, "--json")
        assert r.returncode == 0, (args, r.stdout, r.stderr, self.log.read_text()[-3000:])
        return json.loads(r.stdout)

    def fails(self, *args: str, env: dict[str, str] | None = None) -> str:
        r = self.run(*args, env=env)
        assert r.returncode == 1, (args, r.returncode, r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("outgrow: error: "), r.stderr
        return lines[0].removeprefix("outgrow: error: ")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, oci_registry: Any) -> Iterator[Up]:
    server = Up(tmp_path_factory.mktemp("up"), oci_registry.host)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert leftovers(server.prefix) == []


def test_import_ls_rm(up: Up, tiny_oci: Path, tmp_path: Path) -> None:
    archive = oci_archive(tiny_oci, tmp_path / "My_Tiny.tar")
    human = up.run("image", "import", str(archive))
    assert human.returncode == 0, human.stderr
    assert re.match(r"imported image my-tiny \(sha256:[0-9a-f]{12}, [\d.]+ MiB\)", human.stdout)
    from_dir = up.json("image", "import", str(tiny_oci), "--name", "tiny-dir")
    assert from_dir["format"] == "oci" and from_dir["seconds"] >= 0
    docker = up.json("image", "import", str(docker_archive(tiny_oci, tmp_path / "d.tar")))
    assert docker["name"] == "d" and docker["oci"]["digest"] != from_dir["oci"]["digest"]
    listed = {i["name"]: i for i in up.json("image", "ls")}
    assert listed["my-tiny"]["digest"] == from_dir["oci"]["digest"]  # the same image
    assert listed["my-tiny"]["cached"][0].startswith(f"host:{up.tmp / 'images' / 'oci'}")
    table = up.run("image", "ls").stdout
    row = next(ln for ln in table.splitlines() if ln.startswith("tiny-dir"))
    assert "oci" in row and "sha256:" in row and "/data/run" in row and "host:" in row
    # jobs on it are checked
    script = tmp_path / "job.sh"
    script.write_text("echo hi\n")
    msg = up.fails("submit", "-n", "s", "-i", "tiny-dir", "--script", str(script))
    assert msg.startswith("image 'tiny-dir' has neither /bin/sh nor python3 on its PATH")
    msg = up.fails("submit", "-n", "j", "-i", "tiny-dir", "--jupyter", "server")
    assert msg.startswith("image 'tiny-dir' has no jupyter or jupyter-server on its PATH")
    # removal
    assert up.json("image", "rm", "tiny-dir") == {"removed": "tiny-dir"}
    assert up.fails("image", "rm", "tiny-dir") == "no image 'tiny-dir'"
    for name in ("my-tiny", "d"):
        up.json("image", "rm", name)
    assert not [i for i in up.json("image", "ls") if i["format"] == "oci"]


def test_import_errors(up: Up, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0not a tar" * 100)
    msg = up.fails("image", "import", str(junk))
    assert msg == "corrupt archive 'junk': not a tar archive (plain, gzip, bzip2 or xz)"
    assert up.fails("image", "import", str(junk), "--name", "../x").startswith(
        "invalid image name '../x'"
    )
    r = up.run("image", "import", str(tmp_path / "missing.tar"))
    assert r.returncode == 2  # a usage error: click says the path does not exist


def test_pull(up: Up, tiny_oci: Path, oci_registry: Any) -> None:
    oci_registry.push(tiny_oci, "outgrow/cli-pull:1")
    view = up.json("image", "pull", f"{oci_registry.host}/outgrow/cli-pull:1")
    assert view["name"] == "cli-pull" and view["format"] == "oci"
    msg = up.fails("image", "pull", f"{oci_registry.host}/outgrow/none:1")
    assert msg.startswith(f"unknown reference {oci_registry.host}/outgrow/none:1")
    up.json("image", "rm", "cli-pull")


def test_build_needs_buildah_or_podman(up: Up, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text("FROM scratch\nCOPY hello /hello\n")
    (ctx / "hello").write_text("hi\n")
    if shutil.which("buildah") or shutil.which("podman"):
        view = up.json("image", "build", "-t", "built", str(ctx))
        assert view["name"] == "built" and view["format"] == "oci"
        up.json("image", "rm", "built")
        return
    msg = up.fails("image", "build", "-t", "built", str(ctx))
    assert msg == (
        "outgrow image build -t needs buildah or podman: install one (apt-get install buildah)"
    )
    assert up.fails("image", "build", "-t", "Bad/Name", str(ctx)).startswith("invalid image name")
