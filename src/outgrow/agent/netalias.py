"""Borrow the source instance's address on the target while CRIU restores.

A job's sockets to peers outside its instance are destroyed before the dump (only
connections inside the tree can move), but the process still holds them: closed TCP
sockets bound to the *source* instance's address (a keep-alive HTTP connection of a
notebook, a connection the job accepted from the proxy). CRIU restores them by binding
that address again, which fails on the target ("Can't bind inet socket back: Cannot
assign requested address"). So for the restore the target holds the source address as a
/32 on its loopback — with ``arp_ignore=1`` so it never answers for it on the network —
and drops it right after: the restored sockets are closed and send nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import subprocess
from collections.abc import Iterator

from outgrow.errors import CheckpointError

log = logging.getLogger("outgrow.agent")


def _ip(netns_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={netns_path}", "ip", *args], capture_output=True, text=True
    )


@contextlib.contextmanager
def borrowed_address(netns_path: str, address: str | None, own: str) -> Iterator[None]:
    """Hold ``address`` on the loopback of ``netns_path`` for the duration (nothing when it
    is empty or the instance's own)."""
    if not address or address == own:
        yield
        return
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint names a bad source address {address!r}") from exc
    prefix = "32" if ip.version == 4 else "128"
    for key in ("all", "lo"):  # never answer ARP for the borrowed address
        sysctl = f"net.ipv4.conf.{key}.arp_ignore=1"
        subprocess.run(
            ["nsenter", f"--net={netns_path}", "sysctl", "-qw", sysctl], capture_output=True
        )
    added = _ip(netns_path, "addr", "add", f"{ip}/{prefix}", "dev", "lo")
    if added.returncode != 0 and "File exists" not in added.stderr:
        raise CheckpointError(
            f"could not borrow the source address {ip} for the restore",
            detail=added.stderr.strip(),
        )
    try:
        yield
    finally:
        gone = _ip(netns_path, "addr", "del", f"{ip}/{prefix}", "dev", "lo")
        if gone.returncode != 0:
            log.error("could not drop the borrowed address %s: %s", ip, gone.stderr.strip())


@contextlib.contextmanager
def nonlocal_bind(netns_path: str) -> Iterator[None]:
    """For a post-copy restore: let sockets bind the source address without holding it.
    Borrowing it (above) would make it local here, and the lazy-pages daemon — which
    connects to the source's page server at that very address while CRIU restores —
    would reach this namespace instead. ``ip_nonlocal_bind`` (per namespace) is on for
    the restore only; the restored sockets are closed and send nothing."""
    key = "net.ipv4.ip_nonlocal_bind"
    got = subprocess.run(
        ["nsenter", f"--net={netns_path}", "sysctl", "-n", key], capture_output=True, text=True
    )
    before = got.stdout.strip() or "0"
    on = subprocess.run(
        ["nsenter", f"--net={netns_path}", "sysctl", "-qw", f"{key}=1"],
        capture_output=True,
        text=True,
    )
    if on.returncode != 0:
        raise CheckpointError(f"could not set {key} for the restore", detail=on.stderr.strip())
    try:
        yield
    finally:
        off = subprocess.run(
            ["nsenter", f"--net={netns_path}", "sysctl", "-qw", f"{key}={before}"],
            capture_output=True,
            text=True,
        )
        if off.returncode != 0:
            log.error("could not reset %s: %s", key, off.stderr.strip())
