"""A local Jupyter server driving remote kernels through the job's stable URL
(``--gateway-url``): the kernel moves, the local server never learns a new address."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cp_server import Server, control_plane, free_port
from jupyter_ws import KernelSession, create_kernel
from outgrow.agent.images import ImageCache
from outgrow.domain.images import BUILTIN_IMAGES
from waiting import wait_for_value

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with control_plane(tmp_path_factory.mktemp("gateway")) as server:
        yield server


def test_local_jupyter_server_keeps_its_remote_kernel_across_a_move(
    cp: Server, tmp_path: Path
) -> None:
    r = cp.post("/jobs", {"name": "remote", "image": "jupyter-server", "mem": "1"})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    j = cp.wait(job, {"Executing"})
    first = j["instance"]

    image = ImageCache(cp.plane.settings.image_cache_dir).get(BUILTIN_IMAGES["jupyter-server"])
    assert image is not None
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "IPYTHONDIR": str(tmp_path / "ipy"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
    }
    log = (tmp_path / "local-server.log").open("wb")
    # Exactly the command `outgrow show`/the console print for a jupyter-server job.
    local = subprocess.Popen(
        [
            str(image.bin_dir / "jupyter"),
            "server",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.token=local-token",
            f"--ServerApp.root_dir={tmp_path}",
            f"--gateway-url={j['url']}",
            f"--GatewayClient.auth_token={cp.token}",
            "--GatewayClient.request_timeout=120",
        ],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/"

        def local_status() -> int:
            assert local.poll() is None, (tmp_path / "local-server.log").read_text()[-2000:]
            return httpx.get(
                base + "api/status", headers={"Authorization": "token local-token"}, timeout=2
            ).status_code

        wait_for_value(
            local_status,
            lambda code: code == 200,
            timeout=60,
            interval=0.2,
            what=f"the local Jupyter server to answer at {base}",
            ignore=(httpx.HTTPError,),
            context=lambda: (tmp_path / "local-server.log").read_text()[-2000:],
        )
        kid = create_kernel(base, "local-token")
        ks = KernelSession(base, "local-token", kid)
        assert ks.run("import os; y = 5; os.getpid()", timeout=60).error is None

        r = cp.post(f"/jobs/{job}/migrate", {"instance_type": "lc.large"})
        assert r.status_code == 202, r.text
        j = wait_for_value(
            lambda: cp.job(job),
            lambda j: j["status"] == "Executing" and j["instance"]["id"] != first["id"],
            timeout=60,
            interval=0.2,
            what=f"job {job} Executing on a new instance",
        )
        assert j["instance"]["address"] != first["address"]

        out = ks.run("print(y * 2)", timeout=60)
        assert out.error is None and out.text.strip() == "10"
        # The remote kernel is the same one (its id is still known to the remote side).
        r = httpx.get(f"{j['url']}api/kernels", headers=cp.headers(), timeout=10)
        assert kid in [k["id"] for k in r.json()]
        ks.close()
    finally:
        local.terminate()
        try:
            local.wait(20)
        except subprocess.TimeoutExpired:
            local.kill()
        log.close()
    cp.post(f"/jobs/{job}/cancel")
    cp.wait(job, {"Cancelled"})


def test_open_link_logs_a_browser_in_once(cp: Server) -> None:
    r = cp.post("/jobs", {"name": "browse", "image": "jupyter-server", "mem": "1"})
    job = r.json()["id"]
    cp.wait(job, {"Executing"})
    link = cp.post(f"/jobs/{job}/open").json()
    assert "?token=otp_" in link["url"] and link["url"].startswith(link["stable_url"])
    browser = {"Accept": "text/html"}
    with httpx.Client(timeout=30) as b:
        first = b.get(link["url"], headers=browser)
        assert first.status_code == 303 and "otp_" not in first.headers["location"]
        assert "outgrow_session" in first.headers["set-cookie"]
        assert "HttpOnly" in first.headers["set-cookie"]
        # The session cookie carries on; the code itself is spent.
        assert b.get(link["stable_url"] + "api/status").status_code == 200
    again = httpx.get(link["url"], headers=browser, timeout=30)
    assert again.status_code == 401
    batch = cp.post(
        "/jobs",
        {
            "name": "b",
            "image": "python",
            "script": "import time\ntime.sleep(30)\n",
            "mem": "0.25",
            "cpu": "0.25",
        },
    ).json()["id"]
    assert cp.post(f"/jobs/{batch}/open").status_code == 409  # no web app
    for ref in (job, batch):
        cp.post(f"/jobs/{ref}/cancel")
        cp.wait(ref, {"Cancelled"})
