"""A checkpoint's images in one body (agentapi/bundle.py): what goes in comes out, byte
for byte, however the body is cut into pieces; a broken body is an error, not a file."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from outgrow.agentapi.bundle import Unbundler, frames
from outgrow.errors import CheckpointError


def _files(tmp: Path) -> list[Path]:
    src = tmp / "src"
    src.mkdir()
    sizes = {"core-1.img": 2000, "empty.img": 0, "pages-1.img": (3 << 20) + 17, "mm-1.img": 1}
    out = []
    for name, size in sizes.items():
        p = src / name
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out


def _into(dest: Path) -> Callable[[str], Path]:
    def path_for(name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise CheckpointError(f"bad image file name {name!r}")
        return dest / name

    return path_for


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_bundle_fed_in_random_pieces_gives_back_every_file(tmp_path: Path, seed: int) -> None:
    files = _files(tmp_path)
    body = b"".join(frames(files))
    dest = tmp_path / "dest"
    dest.mkdir()
    u = Unbundler(_into(dest))
    rnd = random.Random(seed)
    at = 0
    while at < len(body):  # pieces from 1 byte (a header cut anywhere) to 1 MiB
        n = rnd.choice([1, 3, 50, 4096, 1 << 20])
        u.feed(body[at : at + n])
        at += n
    u.finish()
    assert u.files == len(files)
    assert u.bytes == sum(p.stat().st_size for p in files)
    for p in files:
        assert (dest / p.name).read_bytes() == p.read_bytes(), f"{p.name} differs"


def test_a_body_cut_mid_file_is_an_error(tmp_path: Path) -> None:
    files = _files(tmp_path)
    body = b"".join(frames(files))
    u = Unbundler(_into(tmp_path))
    u.feed(body[:-5])
    with pytest.raises(CheckpointError, match="middle of a file"):
        u.finish()


@pytest.mark.parametrize(
    "body,match",
    [
        (b"core.img notanumber\n", "bad image bundle header"),
        (b"core.img 3 extra\n", "bad image bundle header"),
        (b"core.img -1\n", "bad image bundle header"),
        (b"x" * 600, "too long"),
        (b"../etc/passwd 1\nx", "bad image file name"),
    ],
)
def test_a_bad_header_is_refused(tmp_path: Path, body: bytes, match: str) -> None:
    u = Unbundler(_into(tmp_path))
    with pytest.raises(CheckpointError, match=match):
        u.feed(body)
        u.finish()
    u.close()
    assert not (tmp_path.parent / "etc").exists()
