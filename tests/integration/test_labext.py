"""outgrow's Jupyter server extension (outgrow/data/labext), for real: the jupyter-lab image
built with it (the host's image cache, as jobs use it), a real Jupyter server from that
image on loopback, ``GET /outgrow/status`` authenticated like every Jupyter handler, and
the prebuilt lab extension installed and enabled in the image."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ROOT
from cp_server import free_port
from outgrow.agent.images import LABEXT_DIR, ImageCache
from outgrow.domain.images import BUILTIN_IMAGES, LABEXT_VERSION
from outgrow.settings import Settings
from waiting import wait_until

pytestmark = pytest.mark.slow
TOKEN = "labext-test-token"


@pytest.fixture(scope="module")
def venv_bin() -> Path:
    if not ROOT:
        pytest.skip("builds into the host's image cache (root)")
    built = ImageCache(Settings().image_cache_dir).ensure(BUILTIN_IMAGES["jupyter-lab"])
    return built.bin_dir


@pytest.fixture
def server(venv_bin: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    status = tmp_path / "job" / "outgrow" / "status.json"
    port = free_port()
    env = {
        "PATH": f"{venv_bin}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "OUTGROW_STATUS_FILE": str(status),
    }
    argv = [
        str(venv_bin / "jupyter"),
        "server",
        "--allow-root",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.token={TOKEN}",
        "--ServerApp.base_url=/jobs/j1/",
        f"--ServerApp.root_dir={tmp_path}",
    ]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/jobs/j1/"
    try:
        wait_until(
            lambda: httpx.get(url + "api/status", params={"token": TOKEN}, timeout=2).is_success,
            timeout=60,
            what="the Jupyter server to answer",
            ignore=(httpx.HTTPError,),
            context=lambda: (tmp_path / "server.log").read_text()[-2000:],
        )
        yield url, status
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def get(url: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return httpx.get(url + "outgrow/status", headers=headers, timeout=10)


def test_status_handler(server: tuple[str, Path]) -> None:
    url, status = server
    assert get(url, token=None).status_code == 403
    assert get(url, token="wrong").status_code == 403
    r = get(url)
    assert r.status_code == 200 and r.json() == {"available": False, "why": "no status yet"}
    move: dict[str, Any] = {
        "at": time.time(),
        "reason": "mem 93% ≥ 90% for 30 s",
        "from_type": "lc.small",
        "to_type": "lc.large",
        "downtime_s": 1.1,
        "to_mem_bytes": 4 * 1024**3,
    }
    body = {
        "job_id": "j1",
        "instance_type": "lc.large",
        "mem_limit_bytes": 4 * 1024**3,
        "mem_used_bytes": 300 * 1024**2,
        "last_move": move,
        "updated_at": time.time(),
    }
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps(body))
    got = get(url).json()
    assert got == {**body, "available": True, "stale": False}
    status.write_text(json.dumps({**body, "updated_at": time.time() - 60}))
    assert get(url).json()["stale"] is True
    status.write_text("{half")
    assert get(url).json()["available"] is False


def test_lab_extension_enabled(venv_bin: Path, tmp_path: Path) -> None:
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path), "JUPYTER_DATA_DIR": str(tmp_path)}
    r = subprocess.run(
        [str(venv_bin / "jupyter"), "labextension", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = plain(r.stdout + r.stderr)
    assert re.search(rf"outgrow-lab v{re.escape(LABEXT_VERSION)} enabled\s+OK", out), out
    r = subprocess.run(
        [str(venv_bin / "jupyter"), "server", "extension", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = plain(r.stdout + r.stderr)
    assert re.search(r"outgrow_lab\s+enabled", out), out


def plain(text: str) -> str:
    """Without the colours ``jupyter ... list`` prints."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_versions_agree() -> None:
    """The version in the image hash is the package's: bump both, images are rebuilt."""
    pyproject = (LABEXT_DIR / "pyproject.toml").read_text()
    assert f'version = "{LABEXT_VERSION}"' in pyproject
    package = json.loads((LABEXT_DIR / "js" / "package.json").read_text())
    built = json.loads((LABEXT_DIR / "outgrow_lab" / "labextension" / "package.json").read_text())
    assert package["version"] == built["version"] == LABEXT_VERSION
    assert (
        f'__version__ = "{LABEXT_VERSION}"' in (LABEXT_DIR / "outgrow_lab/__init__.py").read_text()
    )
