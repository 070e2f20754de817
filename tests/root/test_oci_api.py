"""OCI images through a real in-process control plane (tests/cp_server.py): an archive
streamed to POST /images/import, pulls from a real registry, the listing, the checks a
job gets against the image's rootfs, refusals (size, names, corrupt archives) that leave
nothing behind, and removal refused while a job uses the image."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cp_server import Server, control_plane
from oci_image import oci_archive
from outgrow.agent.oci import OciCache
from outgrow.domain.jobs import JobSpec
from outgrow.domain.states import JobState

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_tar(tiny_oci: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return oci_archive(tiny_oci, tmp_path_factory.mktemp("tiny-tar") / "tiny.tar")


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory, oci_registry: Any) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("cp")
    with control_plane(
        tmp,
        image_cache_dir=tmp / "images",
        image_upload_max_bytes=200 * 2**20,
        oci_insecure_registries=[oci_registry.host],
    ) as server:
        yield server
    shutil.rmtree(tmp / "images", ignore_errors=True)  # hundreds of MiB of rootfs


def cache_of(cp: Server) -> OciCache:
    return OciCache(cp.plane.settings.image_cache_dir)


def upload(cp: Server, path: Path | bytes, name: str, timeout: float = 600) -> httpx.Response:
    def chunks() -> Iterator[bytes]:
        if isinstance(path, bytes):
            yield path
            return
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    return httpx.post(
        cp.api + "/images/import",
        params={"name": name},
        content=chunks(),
        headers=cp.headers(),
        timeout=timeout,
    )


def error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) >= {"error", "message"} and "\n" not in body["message"], body
    return str(body["message"])


def nothing_left(cp: Server, before: list[str]) -> None:
    uploads = cp.plane.settings.data_dir / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
    assert [i.digest for i in cache_of(cp).list()] == before


def remove(cp: Server, name: str) -> httpx.Response:
    # deleting a rootfs of hundreds of MiB and collecting blobs takes a while under load
    return httpx.delete(f"{cp.api}/images/{name}", headers=cp.headers(), timeout=300)


def submit(cp: Server, **spec: Any) -> httpx.Response:
    return cp.post("/jobs", {"name": f"j{time.monotonic_ns()}", **spec})


def test_import_list_and_check_jobs(cp: Server, tiny_tar: Path) -> None:
    r = upload(cp, tiny_tar, "tiny")
    assert r.status_code == 201, r.text
    view = r.json()
    assert view["format"] == "oci" and view["kind"] == "python" and view["pip"] == []
    assert view["oci"]["digest"].startswith("sha256:") and view["oci"]["reference"] == "tiny"
    assert view["size_bytes"] > 0 and view["config"]["cmd"] == ["/data/run"]
    assert view["description"] == "tiny: no shell"
    assert view["facts"]["has_sh"] is False and view["jupyter"] == []
    digest = view["oci"]["digest"]
    assert view["cached"] == [f"host:{cache_of(cp).rootfs_path(digest)}"]
    listed = {i["name"]: i for i in cp.get("/images").json()}
    assert listed["tiny"]["oci"]["digest"] == digest and listed["jupyter-lab"]["format"] == "venv"
    assert listed["tiny"]["cached"] == view["cached"]
    # the same name again
    msg = error(upload(cp, tiny_tar, "tiny"), 409)
    assert msg == "image 'tiny' already exists"
    # jobs are checked against the rootfs
    msg = error(submit(cp, image="tiny", script="echo hi"), 422)
    assert msg.startswith("image 'tiny' has neither /bin/sh nor python3 on its PATH")
    msg = error(submit(cp, image="tiny", jupyter="lab"), 422)
    assert msg.startswith("image 'tiny' has no jupyter or jupyter-lab on its PATH")
    msg = error(submit(cp, image="jupyter-lab", jupyter="lab"), 422)
    assert msg.startswith("--jupyter is for OCI images")
    assert error(submit(cp, image="tiny", jupyter="notebook"), 422).startswith("jupyter:")


def test_refused_uploads_leave_nothing(cp: Server, tiny_tar: Path, tmp_path: Path) -> None:
    before = [i.digest for i in cache_of(cp).list()]
    for bad in ("../etc", "a/b", "UPPER", "x" * 41, ""):
        r = httpx.post(
            cp.api + "/images/import", params={"name": bad}, content=b"x", headers=cp.headers()
        )
        error(r, 422)
    assert error(upload(cp, b"not an archive at all", "junk"), 422).startswith(
        "corrupt archive 'junk': not a tar archive"
    )
    error(upload(cp, b"", "empty"), 422)
    data = tiny_tar.read_bytes()
    msg = error(upload(cp, data[: len(data) // 2], "cut"), 422)
    assert msg.startswith("corrupt archive")
    # over the limit: announced (Content-Length) and streamed without a length
    big = tmp_path / "big.tar"
    with open(big, "wb") as f:
        f.truncate(201 * 2**20)
    r = httpx.post(
        cp.api + "/images/import",
        params={"name": "big"},
        content=big.read_bytes(),
        headers=cp.headers(),
        timeout=120,
    )
    assert error(r, 413).startswith("the archive is over the upload limit")
    assert error(upload(cp, big, "big"), 413).startswith("the archive is over the upload limit")
    nothing_left(cp, before)
    assert "big" not in {i["name"] for i in cp.get("/images").json()}


def test_pull_through_the_api(cp: Server, tiny_oci: Path, oci_registry: Any) -> None:
    pushed = oci_registry.push(tiny_oci, "outgrow/pulled:2")
    r = cp.post("/images/pull", {"reference": f"{oci_registry.host}/outgrow/pulled:2"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "pulled" and r.json()["oci"]["digest"] == pushed
    msg = error(cp.post("/images/pull", {"reference": f"{oci_registry.host}/outgrow/no:1"}), 404)
    assert msg.startswith(f"unknown reference {oci_registry.host}/outgrow/no:1")
    error(cp.post("/images/pull", {"reference": "x", "name": "../up"}), 422)
    assert remove(cp, "pulled").status_code == 204


def test_remove_is_refused_while_a_job_uses_the_image(cp: Server, tiny_tar: Path) -> None:
    r = upload(cp, tiny_tar, "inuse")
    assert r.status_code == 201, r.text
    digest = r.json()["oci"]["digest"]
    # a job that has not ended: recorded without starting it (the scheduler would start
    # it, and running jobs from OCI images is the runtime's part)
    cp.plane.stopping.set()
    cp.plane.scheduler.join(10)
    owner = cp.plane.store.get_user("admin")
    assert owner is not None
    job = cp.plane.store.create_job(owner.id, JobSpec(name="user", image="inuse"), "tok")
    msg = error(remove(cp, "inuse"), 409)
    assert msg.startswith("image 'inuse' is used by job(s) user that have not ended")
    cp.plane.lifecycle.transition(job, JobState.CANCELLING, "test")
    cp.plane.lifecycle.transition(job, JobState.CANCELLED, "test")
    assert remove(cp, "inuse").status_code == 204
    # another library entry still uses the digest ("tiny", same archive): the cache keeps it
    assert cache_of(cp).get(digest) is not None
    assert remove(cp, "tiny").status_code == 204
    assert cache_of(cp).get(digest) is None
    assert not cache_of(cp).rootfs_path(digest).exists()


def test_jupyter_image_through_the_api(cp: Server, jupyter_oci_archive: Path) -> None:
    t0 = time.monotonic()
    r = upload(cp, jupyter_oci_archive, "jupyter-test")
    took = time.monotonic() - t0
    assert r.status_code == 201, r.text
    print(f"\nAPI import + unpack of the Jupyter test image: {took:.1f} s")
    view = r.json()
    assert view["jupyter"] == ["server"] and view["default_port"] == 8888
    assert view["description"].startswith("Test image: Debian bookworm")
    msg = error(submit(cp, image="jupyter-test", jupyter="lab"), 422)
    assert "no jupyter-lab on its PATH (/opt/jupyter/bin:" in msg
    assert "--jupyter lab needs JupyterLab" in msg
    assert remove(cp, "jupyter-test").status_code == 204
