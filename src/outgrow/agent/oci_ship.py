"""An OCI image on an instance that does not share the control plane's cache (aws): the
archive the control plane shipped through S3 (providers/aws/images.py), else a pull of
the image's registry reference; either way checked against the digest the job names,
then unpacked. The agent's start path calls :func:`prepare_oci` before it starts the job
(and a move's target before the checkpoint is taken, so never inside the downtime).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from outgrow.agent.oci import OciCache
from outgrow.domain.oci import check_digest
from outgrow.errors import ImageBuildError
from outgrow.transfer.s3 import download_url

ARCHIVE = "image.tar"  # what providers/aws/images.py uploads


def prepare_oci(
    cache: OciCache, oci: Mapping[str, str], progress: Callable[[str], None] | None = None
) -> Path:
    """The rootfs of ``oci`` (``ImageBody.oci``: digest, reference, archive_url?) on this
    instance: from the cache, else from the shipped archive, else pulled."""
    digest = check_digest(str(oci.get("digest", "")))
    reference = str(oci.get("reference") or "")
    if cache.get(digest) is None:
        url = oci.get("archive_url")
        if url:
            if progress is not None:
                progress(f"fetching image {digest[:19]} from {url}")
            cache.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache.root) as tmp:
                download_url(url, Path(tmp) / "shipped")
                archive = Path(tmp) / "shipped" / ARCHIVE
                cache.import_archive(archive, reference, expect_digest=digest)
        else:
            pulled = cache.pull(reference)
            if pulled.digest != digest:
                raise ImageBuildError(
                    f"pulling {reference} gave image {pulled.digest}, not the job's {digest}: "
                    "the reference was moved; import or pull the image again"
                )
    return cache.ensure_rootfs(digest, progress)
