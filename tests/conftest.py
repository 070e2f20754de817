"""Shared fixtures. Tests that need root, namespaces, cgroups and CRIU are marked ``root``
and run for real in CI (which runs as root); elsewhere they are skipped with the reason.

As root, the whole session runs under the egress guard (tests/netguard.py): a packet a
test sends off this host is rejected before it leaves and fails that test, as does a route
off this host a test adds."""

from __future__ import annotations

import os
import random
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netguard import EgressGuard
from outgrow.settings import Settings

ROOT = os.geteuid() == 0
CRIU = Path(os.environ.get("OUTGROW_CRIU_PATH", "/opt/outgrow/criu/sbin/criu"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = None
    if not ROOT:
        skip = pytest.mark.skip(reason="needs root (namespaces, cgroups, CRIU)")
    elif not CRIU.exists():
        skip = pytest.mark.skip(reason=f"CRIU not installed at {CRIU}; run `make setup`")
    if skip:
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)


GUARD: EgressGuard | None = None
GUARD_OFF = ""  # why the guard is not running


def pytest_sessionstart(session: pytest.Session) -> None:
    global GUARD, GUARD_OFF
    if not ROOT:
        GUARD_OFF = "not root"
        return
    guard = EgressGuard()
    try:
        guard.start()
    except (OSError, RuntimeError) as exc:
        GUARD_OFF = f"cannot start: {exc}"
        return
    GUARD = guard


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global GUARD
    if GUARD is None:
        return
    try:
        problem = GUARD.check()  # e.g. from a session fixture's teardown
        if problem:
            GUARD.notes.append(f"at session end: {problem}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        GUARD.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if GUARD is None:
        terminalreporter.write_line(f"egress guard off ({GUARD_OFF}): packets were not checked")
        return
    for note in GUARD.notes:
        terminalreporter.write_line(f"egress guard: {note}", red=True)
    terminalreporter.write_line(
        f"egress guard on (nft table inet {GUARD.table}, uplinks {sorted(GUARD.external)})"
    )


@pytest.fixture(autouse=True)
def _no_packet_leaves() -> Iterator[None]:
    """Fail the test that sent a packet off this host or added a route off it."""
    yield
    if GUARD is not None:
        problem = GUARD.check()
        if problem:
            pytest.fail(f"this test broke the no-packet-leaves rule: {problem}", pytrace=False)


def unique_prefix() -> str:
    """A resource prefix no netns, link or pool of this host uses yet (concurrent runs
    pick from the same 4096)."""
    from outgrow.providers.local.hoststate import RUN_DIR, Pools

    used = {str(e.get("prefix")) for e in Pools().holders().values()} if ROOT else set()
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    names += os.listdir("/sys/class/net")
    for _ in range(100):
        prefix = "og" + secrets.token_hex(2)[:3]
        taken = prefix in used or (RUN_DIR / prefix).exists()
        if not taken and not any(n.startswith(prefix) for n in names):
            return prefix
    raise RuntimeError("no unused resource prefix")


def leftovers(prefix: str, path_contains: str | None = None) -> list[str]:
    """Every netns, link and cgroup with this prefix still on the machine; with
    ``path_contains`` also every loop device whose backing file path and every mount whose
    mount point contains that string (e.g. a test's tmp dir, for job volumes)."""
    found = []
    if path_contains:
        from outgrow.agent.mounts import loop_devices, mounts

        found += [
            f"loop {dev} ({back})" for dev, back in loop_devices().items() if path_contains in back
        ]
        found += [f"mount {m.mountpoint}" for m in mounts() if path_contains in m.mountpoint]
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {ln.split()[0]}" for ln in ns.splitlines() if ln.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for ln in links.splitlines():
        name = ln.split(":")[1].strip().split("@")[0]
        if name.startswith(prefix):
            found.append(f"link {name}")
    for top in Path("/sys/fs/cgroup").iterdir():
        if top.is_dir():
            found += [f"cgroup {d}" for d in top.glob(f"{prefix}-*") if d.is_dir()]
    return found


def free_pool(prefix: str) -> str:
    """A 198.19.X.0/24 for ``prefix``, reserved host-wide (``hoststate.Pools``): no other
    prefix of this or a concurrent run gets it while this run lives or its bridge exists.
    Without root no bridge can be made, so any pool does."""
    if not ROOT:
        return f"198.19.{random.randint(1, 250)}.0/24"
    from outgrow.providers.local.hoststate import Pools

    return Pools().reserve(prefix)


def make_settings(tmp: Path, prefix: str, **overrides: Any) -> Settings:
    """Settings of a test's own provider; ``overrides`` are further Settings fields
    (e.g. ``local_job_storage="volume"``)."""
    fields: dict[str, Any] = {
        "data_dir": tmp,
        "resource_prefix": prefix,
        "address_pool": free_pool(prefix),
        "criu_path": CRIU,
    }
    return Settings(**{**fields, **overrides})


@dataclass(frozen=True)
class FakeS3:
    """moto's fake S3 (ThreadedMotoServer), not AWS: see the ``moto_s3`` fixture."""

    endpoint_url: str  # http://127.0.0.1:PORT, what this process uses
    port: int
    bucket: str

    def endpoint_from(self, host: str) -> str:
        """The endpoint as seen from elsewhere, e.g. an instance's agent reaching the
        host at its bridge address (the server listens on every address)."""
        return f"http://{host}:{self.port}"


MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# unset while moto's fake S3 is in use: nothing of a developer's AWS setup leaks in
MOTO_UNSET = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "OUTGROW_AWS_ENDPOINT_URL",
    "OUTGROW_AWS_PROFILE",
    "OUTGROW_AWS_REGION",
)


def _start_moto_server() -> tuple[subprocess.Popen[bytes], int]:
    """moto's server in a process of its own: an in-process ``mock_aws`` of another test
    resets every moto backend of *its* process when it exits, which used to delete this
    session's bucket under the tests still using it."""
    import socket
    import sys

    import httpx

    from waiting import wait_for_value

    for _ in range(5):
        with socket.socket() as s:  # a free port; a lost race is retried below
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answer(proc: subprocess.Popen[bytes] = proc, port: int = port) -> bool | None:
            if proc.poll() is not None:
                return False  # exited (the port was taken): try another
            return httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1).is_success or None

        if wait_for_value(
            answer, lambda v: v is not None, timeout=30, interval=0.1,
            what="moto's server to answer", ignore=(httpx.HTTPError,),
        ):  # fmt: skip
            return proc, port
        proc.kill()
        proc.wait()
    pytest.fail("moto's server did not start (tried 5 ports)")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[FakeS3]:
    """moto's fake S3 — moto's server in its own process on a free port, NOT AWS — with
    one fresh bucket, for the whole session. While it runs, os.environ points boto3 and
    outgrow at it (AWS_ENDPOINT_URL, fake credentials ``testing``, region us-east-1,
    OUTGROW_AWS_S3_BUCKET); agents started meanwhile inherit that environment (an agent
    in a netns needs ``endpoint_from(gateway)`` instead of 127.0.0.1). Everything is
    restored at the end of the session."""
    pytest.importorskip("moto.server", reason="moto not installed (dev extra)")
    boto3 = pytest.importorskip("boto3", reason="boto3 not installed (aws extra)")
    proc, port = _start_moto_server()
    fake = FakeS3(f"http://127.0.0.1:{port}", port, f"outgrow-test-{secrets.token_hex(4)}")
    saved = {k: os.environ.get(k) for k in (*MOTO_ENV, *MOTO_UNSET, "AWS_ENDPOINT_URL")}
    saved["OUTGROW_AWS_S3_BUCKET"] = os.environ.get("OUTGROW_AWS_S3_BUCKET")
    for k in MOTO_UNSET:
        os.environ.pop(k, None)
    os.environ.update(MOTO_ENV)
    os.environ["AWS_ENDPOINT_URL"] = fake.endpoint_url
    os.environ["OUTGROW_AWS_S3_BUCKET"] = fake.bucket
    try:
        boto3.client("s3", endpoint_url=fake.endpoint_url).create_bucket(Bucket=fake.bucket)
        yield fake
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def local_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One local provider for the session (own prefix, own pool), torn down at the end;
    teardown fails the run if anything with its prefix is left on the machine."""
    if not ROOT or not CRIU.exists():
        pytest.skip("needs root and CRIU")
    from outgrow.providers.local.provider import LocalProvider

    prefix = unique_prefix()
    provider = LocalProvider(make_settings(tmp_path_factory.mktemp("outgrow"), prefix))
    yield provider
    provider.teardown()
    left = leftovers(prefix)
    assert not left, f"leaked: {left}"


@pytest.fixture(scope="session")
def pg() -> Iterator[Any]:
    """One throwaway PostgreSQL 15 cluster for the session (tests/pg.py): a real server on
    127.0.0.1, removed at the end. Tests take their own database: ``pg_url``."""
    import pg as pgmod

    why = pgmod.unavailable()
    if why:
        pytest.skip(why)
    cluster = pgmod.cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_url(pg: Any) -> Iterator[str]:
    """The URL of a new, empty database on the session's PostgreSQL cluster (dropped after
    the test)."""
    url: str = pg.create_database()
    yield url
    if pg.running():
        pg.drop_database(url)


@pytest.fixture(scope="session")
def jupyter_oci_archive() -> Path:
    """The real Jupyter test image as an OCI archive (tests/oci_image.py): built once per
    machine (a few minutes), then taken from /var/cache/outgrow/test-images."""
    from oci_image import jupyter_archive, missing_tools

    if not ROOT or missing_tools():
        pytest.skip(f"needs root and {', '.join(missing_tools()) or 'root'} (make setup)")
    path, seconds = jupyter_archive()
    if seconds is not None:
        print(f"\nbuilt the Jupyter test image in {seconds:.1f} s: {path}")
    return path


@pytest.fixture(scope="session")
def tiny_oci(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-layer OCI layout (a whiteout in the second), no shell, no python, no jupyter."""
    from oci_image import missing_tools, tiny_layout

    if not ROOT or missing_tools():
        pytest.skip("needs root, skopeo and umoci (make setup)")
    return tiny_layout(tmp_path_factory.mktemp("tiny") / "layout")


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real registry (Debian's docker-registry) on loopback for pulls."""
    import shutil

    import httpx

    from cp_server import free_port
    from oci_image import Registry
    from waiting import wait_until

    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (make setup)")
    reg = Registry(tmp_path_factory.mktemp("registry"), free_port())
    reg.start()
    try:
        wait_until(
            lambda: httpx.get(f"http://{reg.host}/v2/", timeout=1).status_code == 200,
            timeout=20,
            what=f"the registry to answer at {reg.host}",
            ignore=(httpx.HTTPError,),
            context=lambda: (reg.root / "registry.log").read_text()[-2000:],
        )
        yield reg
    finally:
        reg.stop()
