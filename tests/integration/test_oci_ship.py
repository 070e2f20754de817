"""OCI images shipped to an instance through S3 (moto's fake S3, not AWS): the control
plane's side (providers/aws/images.py) and the instance's (agent/oci_ship.py), checked
against the digest the job names."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FakeS3
from outgrow.agent.oci import OciCache
from outgrow.agent.oci_ship import prepare_oci
from outgrow.errors import ValidationError
from outgrow.providers.aws.images import ImageShipping
from outgrow.transfer.s3 import CheckpointStore, S3Connection

pytestmark = pytest.mark.slow


def test_ship_through_s3_and_fetch_on_the_instance(
    moto_s3: FakeS3, tiny_oci: Path, tmp_path: Path
) -> None:
    host = OciCache(tmp_path / "host")
    image = host.import_archive(tiny_oci, "tiny")
    store = CheckpointStore(S3Connection().adaptor(), moto_s3.bucket, cluster="oci-test")
    shipping = ImageShipping(store, host)
    assert not shipping.shipped(image.digest)
    said: list[str] = []
    url = shipping.ship(image.digest, said.append)
    hexpart = image.digest.removeprefix("sha256:")
    assert url == f"s3://{moto_s3.bucket}/outgrow/oci-test/image/oci/{hexpart}.tar"
    assert shipping.shipped(image.digest) and len(said) == 1
    assert shipping.ship(image.digest, said.append) == url and len(said) == 1  # once
    assert list((tmp_path / "host").glob("tmp*")) == []  # the export is gone

    instance = OciCache(tmp_path / "instance")
    oci = {"digest": image.digest, "reference": "tiny", "archive_url": url}
    rootfs = prepare_oci(instance, oci)
    assert (rootfs / "data" / "keep.txt").read_text() == "kept\n"
    assert instance.get(image.digest) is not None
    assert prepare_oci(instance, oci) == rootfs  # cached now: no download

    other = OciCache(tmp_path / "other")
    wrong = {**oci, "digest": "sha256:" + "0" * 64}
    with pytest.raises(ValidationError) as err:
        prepare_oci(other, wrong)
    assert str(err.value).startswith("digest mismatch: ")
    assert other.list() == []

    shipping.delete(image.digest)
    assert not shipping.shipped(image.digest)
