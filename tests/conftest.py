"""Shared fixtures. Tests that need root, namespaces, cgroups and CRIU are marked ``root``
and run for real in CI (which runs as root); elsewhere they are skipped with the reason."""

from __future__ import annotations

import os
import random
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def unique_prefix() -> str:
    return "og" + secrets.token_hex(2)[:3]


def leftovers(prefix: str) -> list[str]:
    """Every netns, link and cgroup with this prefix still on the machine."""
    found = []
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


def make_settings(tmp: Path, prefix: str) -> Settings:
    return Settings(
        data_dir=tmp,
        resource_prefix=prefix,
        address_pool=f"198.19.{random.randint(1, 250)}.0/24",
        criu_path=CRIU,
    )


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
