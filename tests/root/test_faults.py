"""The fault-matrix rows cheap enough for `make test` (seconds each), run exactly as
`make faults` runs them (benchmarks/faults/rows.py): a real `outgrow up`, real agents,
CRIU behind a wrapper that fails or holds its n-th dump/restore, kill -9, API races, a
locked or broken database. Each must keep the job (not lost, not duplicated, not
restarted) and leave nothing of its prefix behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "faults"))

from harness import World
from rows import ROWS

pytestmark = [pytest.mark.root, pytest.mark.slow]

HERE = [r for r in ROWS if r.test.startswith("tests/root/test_faults.py::")]


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(r.key, marks=pytest.mark.xfail(reason=r.known_bug, strict=True))
        if r.known_bug
        else r.key
        for r in HERE
    ],
)
def test_fault(tmp_path: Path, key: str) -> None:
    r = next(r for r in HERE if r.key == key)
    assert r.fn is not None
    w = World(tmp_path, key, tmpfs_mib=r.tmpfs_mib, tmpfs_at=r.tmpfs_at, **r.env)
    try:
        w.start()
        out = r.fn(w)
    finally:
        left = w.close()
    assert out.work_lost in ("none", "n/a (cancelled)"), out
    assert left == [], f"row {key} left behind: {left}"
