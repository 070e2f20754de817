"""The OCI image cache (agent/oci.py) for real: skopeo and umoci on real images — the
Debian + Jupyter test image, a tiny two-layer image, a real registry on loopback — and
every bad input refused with a one-line error and nothing left in the cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oci_image import DESCRIPTION, docker_archive, oci_archive, tiny_layout
from outgrow.agent.oci import OciCache
from outgrow.domain.oci import OciImage, check_jupyter, check_script_job
from outgrow.errors import ImageBuildError, NotFoundError, OutgrowError, ValidationError

pytestmark = pytest.mark.slow


def blobs(cache: OciCache) -> set[str]:
    d = cache.layout / "blobs" / "sha256"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def leftovers(cache: OciCache) -> dict[str, Any]:
    """Everything an image leaves in a cache: metadata, rootfs dirs, staging, blobs."""

    def names(sub: str) -> list[str]:
        d = cache.layout / sub
        return sorted(p.name for p in d.iterdir() if p.suffix != ".lock") if d.is_dir() else []

    return {
        "images": names("images"),
        "rootfs": names("rootfs"),
        "tmp": names("tmp"),
        "blobs": sorted(blobs(cache)),
    }


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


@pytest.fixture(scope="module")
def jupyter(
    jupyter_oci_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OciCache, OciImage, dict[str, float]]]:
    cache = OciCache(tmp_path_factory.mktemp("cache"))
    t0 = time.monotonic()
    image = cache.import_archive(jupyter_oci_archive, "jupyter-test")
    t1 = time.monotonic()
    lines: list[str] = []
    cache.ensure_rootfs(image.digest, progress=lines.append)
    t2 = time.monotonic()
    times = {"import_s": t1 - t0, "unpack_s": t2 - t1}
    size = jupyter_oci_archive.stat().st_size
    print(
        f"\nJupyter test image: {size / 2**20:.1f} MiB archive; import {times['import_s']:.1f} s,"
        f" unpack {times['unpack_s']:.1f} s"
    )
    assert sum(1 for ln in lines if ln.startswith("unpacking image")) == 1, lines
    yield cache, image, times
    shutil.rmtree(cache.root, ignore_errors=True)  # hundreds of MiB: not for pytest to keep


def test_jupyter_image_imports_with_its_config(
    jupyter: tuple[OciCache, OciImage, dict[str, float]],
) -> None:
    cache, image, _ = jupyter
    assert image.digest.startswith("sha256:") and len(image.digest) == 71
    assert image.reference == "jupyter-test"
    assert image.size > 50 * 2**20
    assert (image.architecture, image.os) == ("amd64", "linux")
    c = image.config
    assert c.cmd == ("jupyter", "server", "--ip=0.0.0.0", "--port=8888", "--no-browser")
    assert c.entrypoint == ()
    assert c.env["PATH"].startswith("/opt/jupyter/bin:")
    assert c.env["OUTGROW_TEST_IMAGE"] == "1"
    assert c.working_dir == "/root"
    assert c.exposed_ports == ("8888/tcp",)
    assert c.port == 8888
    assert c.description == DESCRIPTION
    assert cache.config(image.digest) == c
    assert [i.digest for i in cache.list()] == [image.digest]
    # the blobs are in the one shared layout, tagged by digest
    assert (cache.layout / "oci-layout").is_file()
    assert image.digest.removeprefix("sha256:") in blobs(cache)


def test_jupyter_rootfs_is_unpacked_and_probed(
    jupyter: tuple[OciCache, OciImage, dict[str, float]],
) -> None:
    cache, image, _ = jupyter
    rootfs = cache.ensure_rootfs(image.digest)
    hexpart = image.digest.removeprefix("sha256:")
    assert rootfs == cache.layout / "rootfs" / hexpart / "rootfs"
    assert (rootfs.parent / ".complete").is_file()
    assert (rootfs / "etc" / "debian_version").read_text().startswith("12")
    assert (rootfs / "opt" / "jupyter" / "bin" / "jupyter-server").is_file()
    facts = cache.facts(image.digest)
    assert facts is not None and facts.has_sh and facts.runs_scripts
    assert facts.found["python3"] == "/opt/jupyter/bin/python3"
    assert facts.jupyter_modes == ("server",)
    check_script_job("jupyter-test", facts)
    check_jupyter("jupyter-test", "server", facts)
    with pytest.raises(ValidationError) as err:
        check_jupyter("jupyter-test", "lab", facts)
    assert "no jupyter-lab on its PATH (/opt/jupyter/bin:" in one_line(err.value)


def test_ensure_rootfs_is_idempotent(
    jupyter: tuple[OciCache, OciImage, dict[str, float]],
) -> None:
    cache, image, _ = jupyter
    lines: list[str] = []
    first = cache.ensure_rootfs(image.digest, progress=lines.append)
    t0 = time.monotonic()
    assert cache.ensure_rootfs(image.digest, progress=lines.append) == first
    assert time.monotonic() - t0 < 1
    assert lines == []  # nothing unpacked again


def test_importing_the_same_image_again_reuses_it(
    jupyter: tuple[OciCache, OciImage, dict[str, float]], jupyter_oci_archive: Path
) -> None:
    cache, image, _ = jupyter
    before = leftovers(cache)
    again = cache.import_archive(jupyter_oci_archive, "other-name")
    assert again == image  # the first import's record
    assert leftovers(cache) == before


# ---- the tiny image: formats, whiteouts, concurrency, removal -------------------------------


@pytest.fixture
def cache(tmp_path: Path) -> OciCache:
    return OciCache(tmp_path / "cache")


def test_whiteouts_are_applied_when_flattening(cache: OciCache, tiny_oci: Path) -> None:
    image = cache.import_archive(tiny_oci, "tiny")
    rootfs = cache.ensure_rootfs(image.digest)
    assert (rootfs / "data" / "keep.txt").read_text() == "kept\n"
    assert not (rootfs / "data" / "gone.txt").exists()
    assert not list(rootfs.rglob(".wh.*"))
    facts = cache.facts(image.digest)
    assert facts is not None and not facts.runs_scripts and facts.jupyter_modes == ()


def test_archive_formats_import_to_the_same_image(
    cache: OciCache, tiny_oci: Path, tmp_path: Path
) -> None:
    from_dir = cache.import_archive(tiny_oci, "from-layout")
    from_oci = cache.import_archive(oci_archive(tiny_oci, tmp_path / "tiny.tar"), "oci")
    assert from_oci.digest == from_dir.digest  # an OCI archive keeps its manifest
    docker = cache.import_archive(docker_archive(tiny_oci, tmp_path / "docker.tar"), "docker")
    # docker save's manifest is converted to OCI: a digest of its own, the same content
    assert docker.digest != from_dir.digest
    assert docker.config.cmd == ("/data/run",)
    rootfs = cache.ensure_rootfs(docker.digest)
    assert (rootfs / "data" / "keep.txt").is_file() and not (rootfs / "data/gone.txt").exists()
    assert {i.reference for i in cache.list()} == {"from-layout", "docker"}


def test_concurrent_callers_unpack_once(cache: OciCache, tiny_oci: Path) -> None:
    image = cache.import_archive(tiny_oci, "tiny")
    lines: list[str] = []
    results: list[Path] = []
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def unpack() -> None:
        go.wait()
        try:
            results.append(cache.ensure_rootfs(image.digest, progress=lines.append))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=unpack) for _ in range(3)]
    for t in threads:
        t.start()
    # a fourth caller in another process (flock works across processes too)
    code = (
        "import sys; from pathlib import Path; from outgrow.agent.oci import OciCache\n"
        f"p = OciCache(Path({str(cache.root)!r})).ensure_rootfs({image.digest!r})\n"
        "print(p)"
    )
    go.wait()
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for t in threads:
        t.join(60)
    assert errors == [] and other.returncode == 0, (errors, other.stderr)
    assert {*results, Path(other.stdout.strip())} == {cache.rootfs_path(image.digest)}
    unpacks = [ln for ln in lines if ln.startswith("unpacking image")]
    assert len(unpacks) <= 1, lines  # 0: the other process did it


def test_a_crashed_unpack_is_redone(cache: OciCache, tiny_oci: Path) -> None:
    image = cache.import_archive(tiny_oci, "tiny")
    bundle = cache.rootfs_path(image.digest).parent
    (bundle / "rootfs" / "data").mkdir(parents=True)
    (bundle / "rootfs" / "data" / "half.txt").write_text("a crashed unpack\n")
    assert cache.facts(image.digest) is None  # no .complete: not usable
    lines: list[str] = []
    rootfs = cache.ensure_rootfs(image.digest, progress=lines.append)
    assert any("incomplete unpack" in ln for ln in lines)
    assert sorted(p.name for p in (rootfs / "data").iterdir()) == ["keep.txt"]


def test_remove_deletes_the_image_its_rootfs_and_its_blobs(
    cache: OciCache, tiny_oci: Path, tmp_path: Path
) -> None:
    keep = cache.import_archive(docker_archive(tiny_oci, tmp_path / "d.tar"), "docker")
    empty = leftovers(cache)
    image = cache.import_archive(tiny_oci, "tiny")
    cache.ensure_rootfs(image.digest)
    cache.remove(image.digest)
    assert cache.get(image.digest) is None
    assert leftovers(cache) == empty  # the other image's blobs stay, nothing else
    assert [i.digest for i in cache.list()] == [keep.digest]
    with pytest.raises(NotFoundError) as err:
        cache.remove(image.digest)
    assert "is not in the cache" in one_line(err.value)
    with pytest.raises(NotFoundError):
        cache.ensure_rootfs(image.digest)
    cache.remove(keep.digest)  # the layout is empty now (umoci writes "manifests": null)
    assert cache.import_archive(tiny_oci, "again").digest == image.digest


def test_a_crashed_import_is_repaired_by_the_next_one(
    cache: OciCache, tiny_oci: Path, tmp_path: Path
) -> None:
    image = cache.import_archive(tiny_oci, "tiny")
    # as if the process died after copying into the layout but before recording it
    (cache.layout / "images" / f"{image.digest.removeprefix('sha256:')}.json").unlink()
    stale = cache.layout / "tmp" / "999999999-deadbeef"
    stale.mkdir(parents=True)
    assert cache.list() == []
    other = cache.import_archive(docker_archive(tiny_oci, tmp_path / "d.tar"), "docker")
    assert [i.digest for i in cache.list()] == [other.digest]
    assert not stale.exists()
    index = json.loads((cache.layout / "index.json").read_text())
    assert len(index["manifests"]) == 1


def test_export_then_import_elsewhere_keeps_the_digest(
    cache: OciCache, tiny_oci: Path, tmp_path: Path
) -> None:
    image = cache.import_archive(tiny_oci, "tiny")
    archive = cache.export_archive(image.digest, tmp_path / "ship.tar")
    there = OciCache(tmp_path / "instance")
    got = there.import_archive(archive, "tiny", expect_digest=image.digest)
    assert got.digest == image.digest
    with pytest.raises(ValidationError) as err:
        zeros = "sha256:" + "0" * 64
        OciCache(tmp_path / "third").import_archive(archive, "x", expect_digest=zeros)
    assert one_line(err.value).startswith("digest mismatch: ship.tar holds sha256:")
    assert leftovers(OciCache(tmp_path / "third"))["images"] == []


# ---- bad input: one-line errors, nothing left ---------------------------------------------


def assert_refused(
    cache: OciCache, path: Path, error: type[OutgrowError], starts: str
) -> OutgrowError:
    before = leftovers(cache)
    with pytest.raises(error) as err:
        cache.import_archive(path, "bad")
    assert one_line(err.value).startswith(starts), str(err.value)
    assert leftovers(cache) == before
    assert cache.list() == []
    return err.value


def test_corrupt_archive(cache: OciCache, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    assert_refused(cache, junk, ValidationError, "corrupt archive junk.tar")
    notimage = tmp_path / "notimage.tar"
    with tarfile.open(notimage, "w") as tar:
        tar.add(__file__, arcname="hello.py")
    err = assert_refused(cache, notimage, ValidationError, "corrupt archive notimage.tar")
    assert "neither an OCI archive nor a docker save archive" in str(err)
    with pytest.raises(NotFoundError):
        cache.import_archive(tmp_path / "missing.tar", "x")


def test_truncated_archive(cache: OciCache, tiny_oci: Path, tmp_path: Path) -> None:
    whole = oci_archive(tiny_oci, tmp_path / "whole.tar")
    data = whole.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    assert_refused(cache, cut, ValidationError, "corrupt archive cut.tar")


def test_digest_mismatch(cache: OciCache, tmp_path: Path) -> None:
    layout = tiny_layout(tmp_path / "tampered")
    index = json.loads((layout / "index.json").read_text())
    manifest_blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    layer = json.loads(manifest_blob.read_text())["layers"][0]["digest"][7:]
    blob = layout / "blobs" / "sha256" / layer
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    blob.write_bytes(bytes(data))
    archive = oci_archive_unchecked(layout, tmp_path / "tampered.tar")
    assert_refused(cache, archive, ValidationError, "digest mismatch in tampered.tar")


def oci_archive_unchecked(layout: Path, dest: Path) -> Path:
    """Tar a layout as is (skopeo would refuse to copy a tampered blob)."""
    with tarfile.open(dest, "w") as tar:
        for p in sorted(layout.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(layout)), recursive=False)
    return dest


def test_unsupported_media_type(cache: OciCache, tmp_path: Path) -> None:
    import hashlib

    layout = tiny_layout(tmp_path / "zstd")
    index = json.loads((layout / "index.json").read_text())
    old = index["manifests"][0]
    manifest = json.loads((layout / "blobs" / "sha256" / old["digest"][7:]).read_text())
    for layer in manifest["layers"]:
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    raw = json.dumps(manifest).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(raw)
    index["manifests"][0] = {**old, "digest": f"sha256:{digest}", "size": len(raw)}
    (layout / "index.json").write_text(json.dumps(index))
    archive = oci_archive_unchecked(layout, tmp_path / "zstd.tar")
    err = assert_refused(cache, archive, ValidationError, "unsupported media type")
    assert "tar+zstd" in str(err)


def test_a_damaged_cache_is_found_at_unpack(cache: OciCache, tiny_oci: Path) -> None:
    image = cache.import_archive(tiny_oci, "tiny")
    manifest = json.loads(
        (cache.layout / "blobs" / "sha256" / image.digest.removeprefix("sha256:")).read_text()
    )
    layer = cache.layout / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    with pytest.raises(ImageBuildError) as err:
        cache.ensure_rootfs(image.digest)
    assert "unpacking image" in one_line(err.value)
    assert not cache.rootfs_path(image.digest).parent.exists()  # nothing half-made


# ---- pulls from a real registry ----------------------------------------------------------


def test_pull_by_tag_and_by_digest(tmp_path: Path, tiny_oci: Path, oci_registry: Any) -> None:
    pushed = oci_registry.push(tiny_oci, "outgrow/tiny:1")
    cache = OciCache(tmp_path / "cache", insecure_registries=[oci_registry.host])
    image = cache.pull(f"{oci_registry.host}/outgrow/tiny:1")
    assert image.digest == pushed  # an OCI manifest is kept as is
    assert image.reference == f"{oci_registry.host}/outgrow/tiny:1"
    again = cache.pull(f"docker://{oci_registry.host}/outgrow/tiny@{pushed}")
    assert again.digest == pushed
    assert (cache.ensure_rootfs(image.digest) / "data" / "keep.txt").is_file()


def test_pull_errors(tmp_path: Path, tiny_oci: Path, oci_registry: Any) -> None:
    oci_registry.push(tiny_oci, "outgrow/tiny:1")
    cache = OciCache(tmp_path / "cache", insecure_registries=[oci_registry.host])
    empty = leftovers(cache)
    with pytest.raises(NotFoundError) as err:
        cache.pull(f"{oci_registry.host}/outgrow/nope:1")
    assert one_line(err.value).startswith(f"unknown reference {oci_registry.host}/outgrow/nope:1")
    with pytest.raises(NotFoundError):
        cache.pull(f"{oci_registry.host}/outgrow/tiny@sha256:{'1' * 64}")
    for bad in ("-rf", "a b", "x@sha256:zz", ""):
        with pytest.raises(ValidationError):
            cache.pull(bad)
    # TLS is verified for every registry not named insecure: plain HTTP fails
    with pytest.raises(ImageBuildError) as err:
        OciCache(tmp_path / "strict").pull(f"{oci_registry.host}/outgrow/tiny:1")
    one_line(err.value)
    assert leftovers(cache) == {**empty, "tmp": []}
