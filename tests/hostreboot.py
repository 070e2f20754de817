"""A host restart, simulated for one control plane's instances only (tests and the
fault matrix): what a reboot takes, and nothing of anyone else's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

from outgrow.agent.cgroups import detect
from outgrow.agent.mounts import loop_devices, mounts
from waiting import wait_until


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def simulate_reboot(data_dir: Path, prefix: str) -> list[str]:
    """What a reboot does to this control plane's instances (and only to them): SIGKILL
    their agents and every process in their cgroups, then delete their cgroups, veths,
    network namespaces, the prefix's bridge, the mounts and loop devices of the data dir.
    The data dir's files stay as they are. Returns the
    instance ids it took down."""
    cgroups = detect()
    ids = sorted(d.name for d in (data_dir / "instances").iterdir() if d.is_dir())
    for iid in ids:
        rec = json.loads((data_dir / "instances" / iid / "instance.json").read_text())
        pid_file = data_dir / "instances" / iid / "agent.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        # Only the agent this instance started (its pid file could name a reused pid).
        if pid is not None and f"--instance-id {iid}" in _cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the agent leads its own session
        cg = cgroups.open(str(rec["cgroup"]))
        assert cg.name.startswith(f"{prefix}-"), cg.name
        if cg.exists():
            if cg.frozen():
                cg.thaw()
            cg.kill_all()
            cg.remove(timeout=10)
        if pid is not None:
            wait_until(
                lambda p=pid, i=iid: f"--instance-id {i}" not in _cmdline(p),
                timeout=10,
                what=f"the agent of instance {iid} to die",
            )
        for argv in (
            ["ip", "link", "del", "dev", f"{prefix}{iid}"],
            ["ip", "netns", "del", f"{prefix}-{iid}"],
        ):
            subprocess.run(argv, capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", "dev", f"{prefix}-br0"], capture_output=True)
    # The job directories' quota volumes: unmounted and their loop devices gone (only
    # those of this data dir).
    for m in mounts():
        if m.mountpoint.startswith(f"{data_dir}/"):
            subprocess.run(["umount", m.mountpoint], capture_output=True, check=True)
    for dev, backing in loop_devices().items():
        if backing.startswith(f"{data_dir}/"):
            subprocess.run(["losetup", "-d", dev], capture_output=True, check=True)
    return ids
