"""What an unpacked OCI rootfs offers a job: /bin/sh, python, jupyter on the image's PATH.

Paths are resolved as a process chrooted into the rootfs would see them: an absolute
symlink (Debian's /bin -> usr/bin, a venv's python -> /usr/bin/python3) points into the
image, never out of it to the host.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from outgrow.domain.oci import PROBED, OciConfig, RootfsFacts


def _resolve_in(root: Path, path: str) -> Path | None:
    """``path`` inside the rootfs ``root``, following symlinks as a process chrooted there
    would (an absolute link points into the image, never out of it); None on a loop."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        if here.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return root.joinpath(*done)


def _executable(root: Path, path: str) -> bool:
    p = _resolve_in(root, path)
    try:
        st = p.stat() if p is not None else None
    except OSError:
        return False
    return st is not None and stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def probe_rootfs(rootfs: Path, config: OciConfig) -> RootfsFacts:
    """Which of the executables a job may need the image has on its PATH."""
    search = config.search_path
    found: dict[str, str] = {}
    for name in PROBED:
        for d in search.split(":"):
            if d.startswith("/") and _executable(rootfs, f"{d}/{name}"):
                found[name] = f"{d.rstrip('/')}/{name}"
                break
    return RootfsFacts(search, _executable(rootfs, "/bin/sh"), found)
