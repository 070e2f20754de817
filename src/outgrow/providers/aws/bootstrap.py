"""Run on an aws instance before its agent starts (``ExecStartPre`` of the agent unit).

``python -m outgrow.providers.aws.bootstrap --cgroup og-<id> --env-file /run/outgrow/agent.env``

* asks the instance metadata service (IMDSv2: a session token first, as the launch
  requires ``HttpTokens=required``; ``--imds-url``/``$OUTGROW_IMDS_URL`` for another
  endpoint than ``http://169.254.169.254``) for the instance's private address and writes
  ``OUTGROW_AGENT_ADDRESS=<ip>`` to the env file the unit reads for ``--address``;
* creates the job cgroup the agent expects (the local provider makes it on the host) with
  a memory limit of the machine's memory less a reserve for the agent and the system, so
  a job that outgrows the instance stalls at the limit (evadeOOM) instead of taking the
  agent down with it.

No boto3 here: standard library and outgrow's own cgroup module only. Idempotent (the
unit runs it at every start, including after a reboot).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

IMDS = "http://169.254.169.254"
IMDS_ENV = "OUTGROW_IMDS_URL"  # another metadata endpoint (tests: a fake of IMDS)
TOKEN_TTL_S = 21600  # IMDSv2 allows 1 s .. 6 h
MIB = 1024 * 1024


def imds_url(explicit: str | None = None) -> str:
    """The metadata service's base URL: ``explicit``, else ``$OUTGROW_IMDS_URL``, else
    the link-local address of EC2's IMDS."""
    url = (explicit or os.environ.get(IMDS_ENV) or IMDS).rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"metadata service URL {url!r} is not an http(s) URL")
    return url


class Imds:
    """An IMDSv2 client: a session token (``PUT /latest/api/token``) cached for its TTL
    and sent with every ``GET /latest/<path>``; a new token shortly before the old one
    expires, or once when the service answers 401 (token revoked, clock skew).

    Never through a proxy: ``http_proxy`` in the environment must not see metadata
    requests (and the link-local address is unreachable through one anyway)."""

    def __init__(
        self,
        base: str | None = None,
        *,
        ttl_s: int = TOKEN_TTL_S,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= ttl_s <= TOKEN_TTL_S:
            raise ValueError(f"IMDSv2 token TTL must be 1..{TOKEN_TTL_S} s, not {ttl_s}")
        self.base = imds_url(base)
        self.ttl_s = ttl_s
        self.timeout = timeout
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _open(self, req: urllib.request.Request) -> tuple[str, str | None]:
        with self._opener.open(req, timeout=self.timeout) as r:
            ttl = r.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            return r.read().decode(), ttl

    def token(self) -> str:
        """The cached session token, or a new one when it is (nearly) expired."""
        with self._lock:
            if self._token is not None and self._clock() < self._expires:
                return self._token
            asked = self._clock()
            put = urllib.request.Request(
                f"{self.base}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.ttl_s)},
            )
            token, granted = self._open(put)
            try:
                ttl = min(float(granted), float(self.ttl_s)) if granted else float(self.ttl_s)
            except ValueError:
                ttl = float(self.ttl_s)
            # Counted from before the request and renewed a little early (a tenth of the
            # TTL, at most 30 s), so a token is never sent in its last moments.
            self._token = token.strip()
            self._expires = asked + ttl - min(ttl * 0.1, 30.0)
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None
            self._expires = 0.0

    def _get(self, path: str, token: str) -> str:
        req = urllib.request.Request(
            f"{self.base}/latest/{path.lstrip('/')}",
            headers={"X-aws-ec2-metadata-token": token},
        )
        return self._open(req)[0]

    def get(self, path: str) -> str:
        """GET ``/latest/<path>`` (``urllib.error.HTTPError`` for 404 and other errors)."""
        try:
            return self._get(path, self.token())
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise
        self.invalidate()  # refused: one new token, one more try
        return self._get(path, self.token())


_clients: dict[tuple[str, float], Imds] = {}
_clients_lock = threading.Lock()


def imds_get(path: str, *, base: str | None = None, timeout: float = 2.0) -> str:
    """GET ``/latest/<path>`` from the instance metadata service with an IMDSv2 token
    (one cached :class:`Imds` per base URL; ``base`` defaults to :func:`imds_url`)."""
    key = (imds_url(base), timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = Imds(key[0], timeout=timeout)
    return client.get(path)


def memory_limit_bytes(meminfo: str, reserve_mib: int) -> int:
    """The job cgroup's limit: MemTotal of ``/proc/meminfo`` less the reserve (at least
    half of the memory, so a large reserve on a small instance still leaves a job room)."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
            return max(total - reserve_mib * MIB, total // 2)
    raise ValueError("no MemTotal in /proc/meminfo")


def env_file_text(address: str) -> str:
    ipaddress.ip_address(address)  # refuse anything else before systemd expands it
    return f"OUTGROW_AGENT_ADDRESS={address}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m outgrow.providers.aws.bootstrap")
    p.add_argument("--cgroup", required=True, help="the job cgroup the agent uses")
    p.add_argument("--env-file", type=Path, required=True)
    p.add_argument("--memory-reserve-mib", type=int, default=768)
    p.add_argument("--pids-max", type=int, default=4096, help="most tasks of the job")
    p.add_argument(
        "--imds-url",
        default=None,
        help=f"instance metadata service (default ${IMDS_ENV}, else {IMDS})",
    )
    args = p.parse_args(argv)

    address = imds_get("meta-data/local-ipv4", base=args.imds_url).strip()
    args.env_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.env_file.with_suffix(".tmp")
    tmp.write_text(env_file_text(address))
    tmp.replace(args.env_file)

    from outgrow.agent.cgroups import detect

    cg = detect().open(args.cgroup)
    cg.create()
    cg.set_memory_limit(
        memory_limit_bytes(Path("/proc/meminfo").read_text(), args.memory_reserve_mib)
    )
    cg.set_pids_max(args.pids_max)
    print(f"outgrow bootstrap: address {address}, cgroup {args.cgroup}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
