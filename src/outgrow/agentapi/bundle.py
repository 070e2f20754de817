"""A checkpoint's image files as one HTTP body: ``<name> <size>\\n`` then ``size`` bytes,
for each file, in order.

A move sends its images inside the job's downtime. One PUT per file cost about 2 ms each
(a checkpoint has 50-150 small files: one per process and per kind), more than the bytes
themselves; one stream costs one request. Both ends live here so the framing is in one
place: :func:`frames` makes the body, :class:`Unbundler` writes it back to files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from outgrow.errors import CheckpointError

FEATURE = "bundle"  # in an agent's Health.features when it accepts PUT …/bundle
HEADER_MAX = 512
CHUNK = 1 << 20


def frames(paths: list[Path]) -> Iterator[bytes]:
    """The bundle of ``paths`` (regular files that do not change while sent)."""
    for p in paths:
        size = p.stat().st_size
        yield f"{p.name} {size}\n".encode()
        left = size
        with p.open("rb") as f:
            while left:
                data = f.read(min(CHUNK, left))
                if not data:
                    raise CheckpointError(f"image file {p.name} shrank while being sent")
                left -= len(data)
                yield data


class Unbundler:
    """Writes a bundle back to files, fed in pieces of any size (blocking I/O: run it in a
    thread). ``path_for(name)`` validates a name and says where it goes."""

    def __init__(self, path_for: Callable[[str], Path]):
        self.path_for = path_for
        self.head = b""
        self.out: BinaryIO | None = None
        self.left = 0
        self.files = 0
        self.bytes = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.out is None:
                nl = bytes(view[: HEADER_MAX + 1]).find(b"\n")
                if nl < 0:
                    self.head += bytes(view)
                    if len(self.head) > HEADER_MAX:
                        raise CheckpointError("bad image bundle: a file header is too long")
                    return
                self._open(self.head + bytes(view[:nl]))
                self.head = b""
                view = view[nl + 1 :]
                continue
            part = view[: self.left]
            self.out.write(part)
            self.left -= len(part)
            self.bytes += len(part)
            view = view[len(part) :]
            if self.left == 0:
                self._close()

    def _open(self, header: bytes) -> None:
        if len(header) > HEADER_MAX:
            raise CheckpointError("bad image bundle: a file header is too long")
        try:
            name, size_text = header.decode().split(" ")
            size = int(size_text)
        except ValueError as exc:
            raise CheckpointError(f"bad image bundle header {header[:80]!r}") from exc
        if size < 0:
            raise CheckpointError(f"bad image bundle header {header[:80]!r}")
        self.out = self.path_for(name).open("wb")
        self.files += 1
        self.left = size
        if size == 0:
            self._close()

    def _close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None

    def finish(self) -> None:
        """The body ended: complete only at a file boundary."""
        if self.out is not None or self.head:
            self.close()
            raise CheckpointError("image bundle ended in the middle of a file")

    def close(self) -> None:
        self._close()
