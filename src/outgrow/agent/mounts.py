"""The host's mount table and loop devices, read one way for the agent, the local
provider, the benchmarks and the tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """The mount tables escape space, tab, newline and backslash as \\ooo."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    devno: str  # "major:minor" of the mounted device
    mountpoint: str
    source: str  # e.g. /dev/loop3


def mounts() -> list[Mount]:
    """This mount namespace's mounts, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out.append(Mount(fields[2], unescape(fields[4]), unescape(fields[sep + 2])))
    return out


def mounted_on(path: Path | str) -> Mount | None:
    """What is mounted on ``path`` (the top of the stack), else None."""
    target = os.path.realpath(path)
    found = None
    for m in mounts():
        if m.mountpoint == target:
            found = m
    return found


def loop_devices() -> dict[str, str]:
    """Every attached loop device → its backing file (OSError, SubprocessError)."""
    out = subprocess.run(
        ["losetup", "--json", "--list", "--output", "NAME,BACK-FILE"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    if not out.strip():  # no loop device at all: losetup prints nothing
        return {}
    return {d["name"]: (d.get("back-file") or "") for d in json.loads(out)["loopdevices"]}
