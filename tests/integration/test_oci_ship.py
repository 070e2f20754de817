"""OCI images shipped to an instance through S3 (moto's fake S3, not AWS): the control
plane's side (providers/aws/images.py) and the instance's (agent/oci_ship.py), checked
against the digest the job names."""

from __future__ import annotations

import os
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


def test_aws_provider_ships_before_start(
    tiny_oci: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AwsProvider against moto (fake AWS, in process): prepare_image ships the image once,
    the start request's URL is where it went, remove_image deletes it there too."""
    moto = pytest.importorskip("moto", reason="moto not installed (dev extra)")
    from outgrow.domain.images import ImageSpec
    from outgrow.domain.oci import OciRef
    from outgrow.providers.aws.provider import AwsProvider
    from outgrow.providers.aws.settings import AwsSettings
    from outgrow.settings import Settings

    for k in list(os.environ):
        if k.startswith(("AWS_", "OUTGROW_AWS_")):
            monkeypatch.delenv(k)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(k, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        aws = AwsSettings(region="us-east-1", s3_bucket="og-images", cluster="oci")
        settings = Settings(data_dir=tmp_path / "data", image_cache_dir=tmp_path / "images")
        provider = AwsProvider(settings, aws, sleep=lambda s: None)
        provider.adaptor.call("s3", "create_bucket", Bucket="og-images")
        image, facts = provider.import_image(tiny_oci, "tiny")
        assert not facts.runs_scripts
        spec = ImageSpec("tiny", "python", (), oci=OciRef(image.digest, "tiny"))
        url = provider.image_archive_url(image.digest)
        assert url is not None and url.endswith(f"/image/oci/{image.digest[7:]}.tar")
        assert provider.image_locations(image.digest) == [
            f"host:{provider.oci_cache().rootfs_path(image.digest)}"
        ]
        said: list[str] = []
        provider.prepare_image(spec, said.append)
        provider.prepare_image(spec, said.append)
        assert len(said) == 1  # shipped once
        assert url in provider.image_locations(image.digest)
        # the instance's side, with its own credentials (here: moto's again)
        monkeypatch.setenv("OUTGROW_AWS_REGION", "us-east-1")
        oci = {"digest": image.digest, "reference": "tiny", "archive_url": url}
        rootfs = prepare_oci(OciCache(tmp_path / "instance"), oci)
        assert (rootfs / "data" / "keep.txt").is_file()
        provider.remove_image(image.digest)
        assert provider.image_locations(image.digest) == []
        assert provider.oci_cache().list() == []
