"""The agent raises fs.pipe-max-size for post-copy dumps, never lowers it (agent/checkpoint.py),
against a stand-in file for the sysctl (the real one is host-wide: the root tests use it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from outgrow.agent.checkpoint import LAZY_PIPE_BYTES, ensure_pipe_max_size, lazy_pages_copied
from outgrow.errors import RuntimeFailure


def test_raises_a_low_value(tmp_path: Path) -> None:
    f = tmp_path / "pipe-max-size"
    f.write_text("1048576\n")
    assert ensure_pipe_max_size(sysctl=f) == (1048576, LAZY_PIPE_BYTES)
    assert f.read_text().strip() == str(LAZY_PIPE_BYTES)


def test_never_lowers_a_higher_value(tmp_path: Path) -> None:
    f = tmp_path / "pipe-max-size"
    f.write_text("16777216\n")
    assert ensure_pipe_max_size(sysctl=f) == (16777216, 16777216)
    assert f.read_text().strip() == "16777216"


def test_unreadable_sysctl_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match=r"could not raise .*pipe-max-size"):
        ensure_pipe_max_size(sysctl=tmp_path / "missing" / "pipe-max-size")


def test_pages_copied_sums_every_process(tmp_path: Path) -> None:
    log = tmp_path / "lazy-pages.log"
    log.write_text(
        "(01.2) uffd: 1-5: UFFD transferred pages: (100/100)\n"
        "(01.3) other line\n"
        "(01.4) uffd: 3-7: UFFD transferred pages: (2048/2048)\n"
    )
    assert lazy_pages_copied(log) == 2148
    assert lazy_pages_copied(tmp_path / "none.log") == 0
