"""OCI images for aws instances: shipped through S3, so an instance needs no registry.

The control plane imports (or pulls) every image into its own host cache first
(``Provider.import_image``); before a job starts, ``prepare_image`` exports it from
there as an OCI archive to ``s3://<bucket>/<prefix>/<cluster>/image/oci/<hex>.tar``
(once per digest: a manifest with its sha256 says it is complete). The start request
carries that URL (``ImageBody.oci["archive_url"]``) and the instance's agent downloads it,
imports it checking the manifest digest and unpacks it (``agent/oci_ship.py``). Without a
bucket nothing is shipped: the instance pulls the image's registry reference itself (an
imported archive then cannot start on aws).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from outgrow.agent.oci import OciCache
from outgrow.domain.oci import digest_hex
from outgrow.errors import NotFoundError
from outgrow.transfer.s3 import CheckpointStore, url_of

ARCHIVE = "image.tar"  # the one file of the shipped directory


class ImageShipping:
    def __init__(self, store: CheckpointStore, cache: OciCache):
        self.store = store
        self.cache = cache

    def key(self, digest: str) -> str:
        return self.store.key("image", "oci", digest_hex(digest))

    def url(self, digest: str) -> str:
        return url_of(self.store.bucket, self.key(digest))

    def shipped(self, digest: str) -> bool:
        try:
            self.store.manifest(self.key(digest))
        except NotFoundError:
            return False
        return True

    def ship(self, digest: str, progress: Callable[[str], None] | None = None) -> str:
        """Upload the image's archive unless it is there already; its URL."""
        if self.shipped(digest):
            return self.url(digest)
        if progress is not None:
            progress(f"shipping image {digest[:19]} to {self.url(digest)}")
        with tempfile.TemporaryDirectory(dir=self.cache.root) as tmp:
            self.cache.export_archive(digest, Path(tmp) / ARCHIVE)
            self.store.upload_dir(Path(tmp), self.key(digest))
        return self.url(digest)

    def delete(self, digest: str) -> None:
        self.store.delete(self.key(digest))
