"""A CRIU in front of the real one, for the fault matrix: the agent's ``criu_path``
(``OUTGROW_CRIU_PATH``) points at the script :func:`install` writes, which execs the real
CRIU unless a rule in its directory says otherwise:

* ``fail-<action>-<n>``: the n-th ``criu <action>`` (dump, restore, page-server) exits 1
  without running, as a real failure of CRIU would (the caller sees a non-zero exit).
* ``hold-<action>-<n>``: the n-th ``criu <action>`` writes ``held-<action>-<n>`` (its
  arguments) and waits, for at most 120 s, for ``release-<action>-<n>`` before it execs
  the real CRIU: the harness does its damage (kill -9, a network cut, a full disk) at that
  exact moment of the move.

The counts live in the directory (one file per call), so they hold across agents and
restarts. Only files in that directory are read or written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from waiting import wait_until

REAL_CRIU = Path(os.environ.get("OUTGROW_REAL_CRIU", "/opt/outgrow/criu/sbin/criu"))

SCRIPT = """#!/bin/sh
# outgrow fault matrix: the real CRIU, unless a rule of {dir} says otherwise
D={dir}
A="$1"
case "$A" in dump|restore|page-server) ;; *) exec {real} "$@" ;; esac
N=$(mkdir -p "$D/calls-$A" && ls "$D/calls-$A" | wc -l)
N=$((N + 1))
echo "$$ $*" > "$D/calls-$A/$N"
if [ -e "$D/fail-$A-$N" ]; then echo "outgrow fault matrix: criu $A #$N fails" >&2; exit 1; fi
if [ -e "$D/hold-$A-$N" ]; then
  echo "$$ $*" > "$D/held-$A-$N"
  i=0
  while [ ! -e "$D/release-$A-$N" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
fi
exec {real} "$@"
"""


class CriuWrapper:
    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "criu"
        self.path.write_text(SCRIPT.format(dir=self.dir, real=REAL_CRIU))
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def fail(self, action: str, n: int = 1) -> None:
        (self.dir / f"fail-{action}-{n}").touch()

    def hold(self, action: str, n: int = 1) -> None:
        (self.dir / f"hold-{action}-{n}").touch()

    def wait_held(self, action: str, n: int = 1, timeout: float = 120) -> list[str]:
        """Wait until the n-th ``criu <action>`` waits at the hold; its pid and arguments."""
        held = self.dir / f"held-{action}-{n}"
        wait_until(held.exists, timeout=timeout, what=f"criu {action} #{n} to start (held)")
        return held.read_text().split()

    def release(self, action: str, n: int = 1) -> None:
        (self.dir / f"release-{action}-{n}").touch()

    def calls(self, action: str) -> int:
        d = self.dir / f"calls-{action}"
        return len(list(d.iterdir())) if d.exists() else 0
