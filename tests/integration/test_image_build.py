"""Real image builds (python -m venv + pip from the host's configured index) in a tmp cache."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from outgrow.agent.images import BuiltImage, ImageCache
from outgrow.domain.images import ImageSpec
from outgrow.errors import ImageBuildError, NotFoundError

pytestmark = pytest.mark.slow

SIX = ImageSpec(name="tiny-six", kind="python", pip=("six==1.16.0",), description="just six")
BAD = ImageSpec(name="broken", kind="python", pip=("outgrow-does-not-exist-zz==0.0.1",))


def creations(lines: list[str]) -> int:
    return sum(1 for line in lines if line.startswith("creating virtualenv"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageCache, BuiltImage, list[str]]:
    cache = ImageCache(tmp_path_factory.mktemp("images"))
    assert cache.get(SIX) is None
    lines: list[str] = []
    image = cache.ensure(SIX, progress=lines.append)
    return cache, image, lines


def test_built_image_works(built: tuple[ImageCache, BuiltImage, list[str]]) -> None:
    cache, image, _ = built
    h = cache.hash_of(SIX)
    assert image.spec_hash == h == SIX.content_hash()  # default interpreter: this one's base
    assert image.path == cache.root / h
    assert image.python == image.path / "venv" / "bin" / "python"
    assert image.bin_dir == image.python.parent
    assert (image.path / ".complete").is_file()
    assert image.size_bytes is not None and image.size_bytes > 1_000_000
    out = subprocess.run(
        [str(image.python), "-c", "import six, sys; print(six.__version__, sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["1.16.0", str(image.path / "venv")]
    # outgrow itself is not installed into images
    probe = subprocess.run([str(image.python), "-c", "import outgrow"], capture_output=True)
    assert probe.returncode != 0


def test_progress_lines(built: tuple[ImageCache, BuiltImage, list[str]]) -> None:
    _, _, lines = built
    assert creations(lines) == 1
    assert any(line.startswith("installing 1 package: six==1.16.0") for line in lines)
    assert any("Successfully installed six-1.16.0" in line for line in lines), lines  # pip's own
    assert lines[-1].startswith("done in ") and lines[-1].endswith(" s")


def test_image_json(built: tuple[ImageCache, BuiltImage, list[str]]) -> None:
    cache, image, _ = built
    meta = json.loads((image.path / "image.json").read_text())
    assert meta["name"] == "tiny-six" and meta["kind"] == "python"
    assert meta["pip"] == ["six==1.16.0"] and meta["description"] == "just six"
    assert meta["hash"] == image.spec_hash
    assert meta["python_version"].startswith("3.")
    assert "six==1.16.0" in meta["packages"]
    assert meta["build_seconds"] > 0 and meta["built_at"]
    assert meta["size_bytes"] == image.size_bytes
    listed = cache.list()
    assert [(b.spec_hash, m["name"]) for b, m in listed] == [(image.spec_hash, "tiny-six")]


def test_second_ensure_is_instant_and_shared(
    built: tuple[ImageCache, BuiltImage, list[str]],
) -> None:
    cache, image, _ = built
    lines: list[str] = []
    t0 = time.monotonic()
    again = cache.ensure(SIX, progress=lines.append)
    assert time.monotonic() - t0 < 1.0
    assert again == image and creations(lines) == 0
    # same content under another name (and another cache object) is the same image
    other = ImageCache(cache.root).ensure(ImageSpec("six-again", "python", ("SIX == 1.16.0",)))
    assert other.path == image.path


def test_concurrent_ensure_builds_once(tmp_path: Path) -> None:
    root = tmp_path / "images"
    barrier = threading.Barrier(2)
    lines: list[list[str]] = [[], []]
    results: list[BuiltImage | BaseException | None] = [None, None]

    def worker(i: int) -> None:
        cache = ImageCache(root)  # separate objects, as separate processes would have
        barrier.wait()
        try:
            results[i] = cache.ensure(SIX, progress=lines[i].append)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    a, b = results
    assert isinstance(a, BuiltImage) and isinstance(b, BuiltImage), results
    assert a.path == b.path
    assert creations(lines[0] + lines[1]) == 1, lines
    waiter = lines[0] if creations(lines[1]) else lines[1]
    assert any(line.startswith("waiting for another build") for line in waiter), waiter
    assert [p.name for p in root.iterdir() if p.is_dir()] == [a.spec_hash]


def test_failing_build_raises_and_cleans_up(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "images")
    lines: list[str] = []
    with pytest.raises(ImageBuildError) as ei:
        cache.ensure(BAD, progress=lines.append)
    msg = str(ei.value)
    assert msg.startswith("building image 'broken' failed: ")
    assert "outgrow-does-not-exist-zz" in msg and "\n" not in msg
    assert ei.value.detail and "outgrow-does-not-exist-zz" in ei.value.detail
    assert len(ei.value.detail.splitlines()) <= 50
    assert not (cache.root / cache.hash_of(BAD)).exists()
    assert cache.get(BAD) is None and cache.list() == []
    assert creations(lines) == 1


def test_stale_dir_is_rebuilt_then_removed(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "images")
    stale = cache.root / cache.hash_of(SIX)
    (stale / "venv" / "bin").mkdir(parents=True)
    (stale / "venv" / "junk").write_text("left by a crashed build")
    (stale / "image.json").write_text("{}")
    assert cache.get(SIX) is None and cache.list() == []

    lines: list[str] = []
    image = cache.ensure(SIX, progress=lines.append)
    assert any(line.startswith("removing incomplete build") for line in lines)
    assert creations(lines) == 1
    assert image.path == stale and (stale / ".complete").is_file()
    assert not (stale / "venv" / "junk").exists()
    subprocess.run([str(image.python), "-c", "import six"], check=True)

    cache.remove(image.spec_hash)
    assert not stale.exists() and cache.get(SIX) is None
    with pytest.raises(NotFoundError):
        cache.remove(image.spec_hash)
