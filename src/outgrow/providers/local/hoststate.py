"""Host-wide state of the local provider, shared by every control plane and test run on
this host.

Two control planes with different data dirs on one resource prefix share one bridge, so
they must share one address table: with a table per data dir both handed out
``198.18.0.2`` and each reached the other's agent (issue 10). So the state lives under
``/run/outgrow`` (``Settings.run_dir``; tmpfs: it goes at reboot together with the
network namespaces it describes), never in a data dir:

* ``pools.json``: which address pool each resource prefix uses, so no two prefixes get
  overlapping pools (:class:`Pools`; tests reserve theirs here too);
* ``<prefix>/network.json``: which instance of the prefix has which address, and which
  control plane (its data dir) owns it (``network.py``).

Every file is read-modify-written under ``fcntl.flock`` of a lock file beside it
(:func:`locked`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import Any

from outgrow.errors import ProviderError

RUN_DIR = Path("/run/outgrow")
SYS_NET = Path("/sys/class/net")


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path`` (created, with its directory, if needed)."""
    while True:
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            continue  # the directory was removed between mkdir and open: again
        except OSError as exc:
            raise ProviderError(
                "cannot lock the host-wide state", detail=f"{lock_path}: {exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A teardown may have removed the file while we waited: lock the new one.
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` ({} when there is none). Files are replaced atomically,
    so reading without the lock sees a whole version."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ProviderError("cannot read the host-wide state", detail=f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProviderError("cannot read the host-wide state", detail=f"{path}: not an object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ProviderError("cannot write the host-wide state", detail=f"{path}: {exc}") from exc


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def bridge_name(prefix: str) -> str:
    return f"{prefix}-br0"


def host_routes() -> list[IPv4Network]:
    """Every IPv4 destination routed on this host (but the default routes)."""
    proc = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    out: list[IPv4Network] = []
    for r in json.loads(proc.stdout or "[]") if proc.returncode == 0 else []:
        dst = r.get("dst")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                out.append(IPv4Network(dst, strict=False))
    return out


class Pools:
    """Which address pool each resource prefix holds on this host (``pools.json``).

    An entry ``pool → {prefix, pid}`` holds while the prefix's bridge exists or the
    process that made it lives (a test run reserves a pool before any bridge exists).
    """

    def __init__(self, run_dir: Path = RUN_DIR):
        self.file = run_dir / "pools.json"
        self.lock = run_dir / "pools.lock"

    @staticmethod
    def _holds(entry: dict[str, Any]) -> bool:
        prefix = str(entry.get("prefix", ""))
        return (SYS_NET / bridge_name(prefix)).exists() or pid_alive(entry.get("pid"))

    def _live(self) -> dict[str, dict[str, Any]]:
        pools = read_json(self.file).get("pools") or {}
        return {k: v for k, v in pools.items() if isinstance(v, dict) and self._holds(v)}

    def holders(self) -> dict[str, dict[str, Any]]:
        """pool → {prefix, pid} of every pool held now."""
        return self._live()

    def claim(self, prefix: str, pool: IPv4Network) -> None:
        """Record that ``prefix`` uses ``pool``; ProviderError when another prefix holds an
        overlapping pool, or the prefix's bridge runs with another pool."""
        with locked(self.lock):
            live = self._live()
            for cidr, e in live.items():
                other = ip_network(cidr)
                if e.get("prefix") == prefix:
                    if other != pool and (SYS_NET / bridge_name(prefix)).exists():
                        raise ProviderError(
                            f"resource prefix {prefix} already uses address pool {cidr} on "
                            f"this host (bridge {bridge_name(prefix)}): set "
                            f"OUTGROW_ADDRESS_POOL={cidr} or use another OUTGROW_RESOURCE_PREFIX"
                        )
                elif other.overlaps(pool):
                    raise ProviderError(
                        f"address pool {pool} overlaps {cidr} of resource prefix "
                        f"{e.get('prefix')} on this host (pid {e.get('pid')})"
                    )
            live = {k: v for k, v in live.items() if v.get("prefix") != prefix}
            live[str(pool)] = {"prefix": prefix, "pid": os.getpid()}
            write_json(self.file, {"pools": live})

    def reserve(self, prefix: str, within: str = "198.19.0.0/16", prefixlen: int = 24) -> str:
        """Pick a pool of ``within`` that no prefix holds and no host route overlaps, and
        hold it for ``prefix`` (for this process's lifetime, until its bridge exists)."""
        outer = ip_network(within)
        assert isinstance(outer, IPv4Network)
        with locked(self.lock):
            live = self._live()
            for cidr, e in live.items():  # asked again (a second provider of the prefix)
                if e.get("prefix") == prefix and ip_network(cidr).subnet_of(outer):  # type: ignore[arg-type]
                    return cidr
            taken = [ip_network(c) for c in live] + host_routes()
            for net in outer.subnets(new_prefix=prefixlen):
                if not any(net.overlaps(t) for t in taken):
                    live = {k: v for k, v in live.items() if v.get("prefix") != prefix}
                    live[str(net)] = {"prefix": prefix, "pid": os.getpid()}
                    write_json(self.file, {"pools": live})
                    return str(net)
        raise ProviderError(f"no free /{prefixlen} address pool left in {within} on this host")

    def release(self, prefix: str) -> None:
        with locked(self.lock):
            pools = read_json(self.file).get("pools") or {}
            kept = {k: v for k, v in pools.items() if isinstance(v, dict) and self._holds(v)}
            kept = {k: v for k, v in kept.items() if v.get("prefix") != prefix}
            if kept != pools:
                write_json(self.file, {"pools": kept})
