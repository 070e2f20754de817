"""Run on an aws instance before its agent starts (``ExecStartPre`` of the agent unit).

``python -m outgrow.providers.aws.bootstrap --cgroup og-<id> --env-file /run/outgrow/agent.env``

* asks the instance metadata service (IMDSv2: a session token first, as the launch
  requires ``HttpTokens=required``) for the instance's private address and writes
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
import sys
import urllib.request
from pathlib import Path

IMDS = "http://169.254.169.254"
MIB = 1024 * 1024


def imds_get(path: str, *, base: str = IMDS, timeout: float = 2.0) -> str:
    """GET ``/latest/<path>`` from the instance metadata service with an IMDSv2 token."""
    put = urllib.request.Request(
        f"{base}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    with urllib.request.urlopen(put, timeout=timeout) as r:
        token = r.read().decode()
    get = urllib.request.Request(
        f"{base}/latest/{path}", headers={"X-aws-ec2-metadata-token": token}
    )
    with urllib.request.urlopen(get, timeout=timeout) as r:
        text: str = r.read().decode()
        return text


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
    args = p.parse_args(argv)

    address = imds_get("meta-data/local-ipv4").strip()
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
    print(f"outgrow bootstrap: address {address}, cgroup {args.cgroup}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
