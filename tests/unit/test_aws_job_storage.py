"""The aws provider's job storage against moto (fake AWS): no AWS account is used here.

moto is the only fake: every test talks to moto in-process (``mock_aws``, the same
fixtures as ``test_aws_provider.py``) and reads the state back with plain boto3 describe
calls, so a test fails when the provider did not really create, attach, detach or delete
what it says. moto keeps volumes and attachments but boots nothing: no device ever
appears on an instance (the NVMe naming and real attach latency are unverified, see
docs/aws.md). Where AWS's answer is *simulated* (an attach that never completes), the
test says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

pytest.importorskip("boto3", reason="outgrow[aws] not installed")
moto = pytest.importorskip("moto", reason="moto not installed (dev extra)")

from test_aws_provider import REGION, _ec2, _moto_ami, job_sg, make_provider  # noqa: E402

from outgrow.domain.storage import JobStorage, StorageKind  # noqa: E402
from outgrow.errors import ConfigError, ProviderError, TransferError  # noqa: E402
from outgrow.providers.aws.provider import (  # noqa: E402
    TAG_CLUSTER,
    TAG_EC2_ID,
    TAG_INSTANCE,
    TAG_JOB,
    TAG_KIND,
    AwsProvider,
)
from outgrow.providers.aws.settings import AwsSettings  # noqa: E402
from outgrow.providers.aws.volumes import DEVICE  # noqa: E402
from outgrow.providers.base import Capability, InstanceInfo  # noqa: E402
from outgrow.transfer.boto import AwsAdaptor  # noqa: E402
from outgrow.transfer.s3 import upload_url  # noqa: E402

# ---- fixtures: moto (fake AWS), as in test_aws_provider.py ------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for moto; nothing from the developer's AWS setup leaks in."""
    for k in list(os.environ):
        if k.startswith(("AWS_", "OUTGROW_AWS_")):
            monkeypatch.delenv(k)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(k, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


@pytest.fixture
def account(aws_env: None) -> Iterator[dict[str, str]]:
    """moto (fake AWS), in process: the default VPC's first subnet, an x86_64 AMI behind
    an SSM parameter, a bucket."""
    with moto.mock_aws():
        a = AwsAdaptor(REGION)
        subnets = a.call("ec2", "describe_subnets")["Subnets"]
        sub = sorted(subnets, key=lambda s: s["SubnetId"])[0]
        ami = _moto_ami(a)
        a.call("ssm", "put_parameter", Name="/test/debian-12-amd64", Value=ami, Type="String")
        a.call(
            "s3",
            "create_bucket",
            Bucket="og-test",
            CreateBucketConfiguration={"LocationConstraint": REGION},
        )
        yield {"subnet": sub["SubnetId"], "vpc": sub["VpcId"], "ami": ami, "bucket": "og-test"}


@pytest.fixture
def provider(tmp_path: Path, account: dict[str, str]) -> AwsProvider:
    return make_provider(tmp_path, account)


# ---- helpers: the state as EC2 (moto) records it ------------------------------------


def job_volumes(job: str | None = None) -> list[dict[str, Any]]:
    """The job volumes of cluster ``test`` as DescribeVolumes returns them."""
    filters = [
        {"Name": f"tag:{TAG_CLUSTER}", "Values": ["test"]},
        {"Name": f"tag:{TAG_KIND}", "Values": ["job-volume"]},
    ]
    if job is not None:
        filters.append({"Name": f"tag:{TAG_JOB}", "Values": [job]})
    return list(_ec2().describe_volumes(Filters=filters)["Volumes"])


def volume(vid: str) -> dict[str, Any]:
    vols = _ec2().describe_volumes(VolumeIds=[vid])["Volumes"]
    assert len(vols) == 1
    return dict(vols[0])


def vid_of(storage: JobStorage) -> str:
    assert storage.kind is StorageKind.VOLUME
    assert storage.device.startswith("ebs:vol-")
    return storage.device.removeprefix("ebs:")


def ec2_id(inst: InstanceInfo) -> str:
    return inst.tags[TAG_EC2_ID]


def subnet_az(account: dict[str, str]) -> str:
    sub = _ec2().describe_subnets(SubnetIds=[account["subnet"]])["Subnets"][0]
    return str(sub["AvailabilityZone"])


def two_instances(p: AwsProvider) -> tuple[InstanceInfo, InstanceInfo]:
    a = p.create_instance("t3.small", tags={TAG_JOB: "j1"}, wait_for_agent=False)
    b = p.create_instance("m5.large", tags={TAG_JOB: "j1"}, wait_for_agent=False)
    return a, b


# ---- ebs: attach, detach, move ----------------------------------------------------------


def test_aws_does_not_claim_shared_job_storage() -> None:
    assert Capability.SHARED_JOB_STORAGE not in AwsProvider.capabilities


def test_moto_attach_creates_an_encrypted_tagged_volume_in_the_subnets_az(
    provider: AwsProvider, account: dict[str, str]
) -> None:
    """moto (fake AWS): the first attach creates the job's volume and attaches it."""
    inst = provider.create_instance("t3.small", tags={TAG_JOB: "j1"}, wait_for_agent=False)
    assert job_volumes() == []
    storage = provider.attach_job_storage("j1", inst)
    vid = vid_of(storage)
    assert storage.url == ""
    v = volume(vid)
    assert v["Encrypted"] is True
    assert v["VolumeType"] == "gp3" and v["Size"] == 20
    assert v["AvailabilityZone"] == subnet_az(account)
    tags = {t["Key"]: t["Value"] for t in v["Tags"]}
    assert tags == {
        TAG_CLUSTER: "test",
        TAG_JOB: "j1",
        TAG_KIND: "job-volume",
        "Name": "outgrow-job-j1",
    }
    assert TAG_INSTANCE not in tags  # never matched by an instance's cleanup
    assert v["State"] == "in-use"
    [att] = v["Attachments"]
    assert att["InstanceId"] == ec2_id(inst)
    assert att["Device"] == DEVICE == "/dev/sdf"
    assert att["State"] == "attached"
    # EC2 sets DeleteOnTermination false on volumes attached after launch (moto leaves
    # the field out); that the volume outlives the instance is checked below
    assert att.get("DeleteOnTermination", False) is False
    # the root volume is still the instance's own, deleted with it
    roots = _ec2().describe_volumes(Filters=[{"Name": f"tag:{TAG_INSTANCE}", "Values": [inst.id]}])[
        "Volumes"
    ]
    assert [r["VolumeId"] for r in roots] != [vid]


def test_moto_second_attach_is_idempotent(provider: AwsProvider) -> None:
    """moto (fake AWS): attaching again to the same instance changes nothing."""
    inst = provider.create_instance("t3.small", wait_for_agent=False)
    first = provider.attach_job_storage("j1", inst)
    again = provider.attach_job_storage("j1", inst)
    assert again == first
    [v] = job_volumes("j1")
    assert v["VolumeId"] == vid_of(first)
    assert [a["InstanceId"] for a in v["Attachments"]] == [ec2_id(inst)]
    # another job gets its own volume
    other = provider.create_instance("t3.small", wait_for_agent=False)
    assert vid_of(provider.attach_job_storage("j2", other)) != vid_of(first)
    assert len(job_volumes()) == 2


def test_moto_attach_while_held_by_another_running_instance_is_refused(
    provider: AwsProvider,
) -> None:
    """moto (fake AWS): the target cannot take the volume while the source still runs
    with it attached; the error names the source, and nothing changes."""
    a, b = two_instances(provider)
    vid = vid_of(provider.attach_job_storage("j1", a))
    with pytest.raises(ProviderError) as ei:
        provider.attach_job_storage("j1", b)
    msg = str(ei.value)
    assert a.id in msg and ec2_id(a) in msg and vid in msg
    assert "detach" in msg
    assert [x["InstanceId"] for x in volume(vid)["Attachments"]] == [ec2_id(a)]


def test_moto_detach_then_attach_to_the_target_moves_the_volume(provider: AwsProvider) -> None:
    """moto (fake AWS): the migration path — detach from the source (available), attach
    the same volume to the target."""
    a, b = two_instances(provider)
    vid = vid_of(provider.attach_job_storage("j1", a))
    provider.detach_job_storage("j1", a)
    v = volume(vid)
    assert v["State"] == "available" and v["Attachments"] == []
    provider.detach_job_storage("j1", a)  # idempotent
    provider.detach_job_storage("j1", b)  # not attached there: nothing to do
    assert volume(vid)["State"] == "available"
    moved = provider.attach_job_storage("j1", b)
    assert vid_of(moved) == vid  # the same directory, not a new volume
    v = volume(vid)
    assert v["State"] == "in-use"
    assert [(x["InstanceId"], x["State"]) for x in v["Attachments"]] == [(ec2_id(b), "attached")]
    assert len(job_volumes("j1")) == 1
    # and back again (a second migration)
    provider.detach_job_storage("j1", b)
    assert vid_of(provider.attach_job_storage("j1", a)) == vid
    assert volume(vid)["Attachments"][0]["InstanceId"] == ec2_id(a)


def test_moto_instance_info_without_the_ec2_id_is_resolved(provider: AwsProvider) -> None:
    """moto (fake AWS): an InstanceInfo carrying only outgrow's id (e.g. rebuilt from the
    control plane's store) is mapped to its EC2 id by the tags."""
    inst = provider.create_instance("t3.small", wait_for_agent=False)
    bare = InstanceInfo(
        id=inst.id,
        provider="aws",
        type=inst.type,
        address=inst.address,
        agent_url=inst.agent_url,
        agent_token=inst.agent_token,
        spot=False,
        created_at=inst.created_at,
        state="running",
    )
    vid = vid_of(provider.attach_job_storage("j1", bare))
    assert volume(vid)["Attachments"][0]["InstanceId"] == ec2_id(inst)
    provider.detach_job_storage("j1", bare)
    assert volume(vid)["State"] == "available"


def test_moto_attach_to_a_gone_instance_is_a_clear_error(provider: AwsProvider) -> None:
    """moto (fake AWS)."""
    inst = provider.create_instance("t3.small", wait_for_agent=False)
    provider.delete_instance(inst.id)
    with pytest.raises(ProviderError, match=f"instance {inst.id} is gone"):
        provider.attach_job_storage("j1", inst)


def test_moto_delete_instance_and_cleanup_leave_the_job_volume(provider: AwsProvider) -> None:
    """moto (fake AWS): terminating the instance holding the volume detaches it (EC2 does,
    DeleteOnTermination false); delete_instance and cleanup delete the instance's own
    leftovers, never the job's volume, which a new instance then gets."""
    a, b = two_instances(provider)
    vid = vid_of(provider.attach_job_storage("j1", a))
    provider.delete_instance(a.id)
    provider.wait_terminated([a.id], timeout=30)
    provider.delete_instance(a.id)  # again, once terminated: its leftovers go
    assert volume(vid)["State"] == "available"
    removed = provider.cleanup(keep=[b.id])
    assert not any(vid in r for r in removed)
    assert [v["VolumeId"] for v in job_volumes("j1")] == [vid]
    # the job resumes on b with its directory
    assert vid_of(provider.attach_job_storage("j1", b)) == vid


def test_moto_delete_job_storage_removes_the_volume(provider: AwsProvider) -> None:
    """moto (fake AWS): refused while a live instance holds it; once that instance is
    gone the volume is deleted; deleting again does nothing."""
    inst = provider.create_instance("t3.small", wait_for_agent=False)
    vid = vid_of(provider.attach_job_storage("j1", inst))
    with pytest.raises(ProviderError, match=inst.id):
        provider.delete_job_storage("j1")
    assert volume(vid)["State"] == "in-use"
    provider.delete_instance(inst.id)
    provider.delete_job_storage("j1")
    assert job_volumes("j1") == []
    assert vid not in {v["VolumeId"] for v in _ec2().describe_volumes()["Volumes"]}
    provider.delete_job_storage("j1")  # idempotent
    provider.delete_job_storage("never-attached")


def test_moto_teardown_leaves_no_volume_instance_or_security_group(
    provider: AwsProvider,
) -> None:
    """moto (fake AWS): teardown (tests, cleanup --all) removes the jobs' volumes too —
    one attached to a running instance, one detached."""
    a = provider.create_instance("t3.small", security_group=job_sg("j1"), wait_for_agent=False)
    b = provider.create_instance("m5.large", security_group=job_sg("j2"), wait_for_agent=False)
    provider.attach_job_storage("j1", a)
    provider.attach_job_storage("j2", b)
    provider.detach_job_storage("j2", b)
    assert len(job_volumes()) == 2
    removed = provider.teardown(timeout=30)
    assert sum(r.startswith("job volume vol-") for r in removed) == 2
    ec2 = _ec2()
    cluster = [{"Name": f"tag:{TAG_CLUSTER}", "Values": ["test"]}]
    assert ec2.describe_volumes(Filters=cluster)["Volumes"] == []
    assert ec2.describe_volumes()["Volumes"] == []  # nothing untagged left either
    instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert instances and all(i["State"]["Name"] == "terminated" for i in instances)
    assert ec2.describe_security_groups(Filters=cluster)["SecurityGroups"] == []


def test_moto_io2_and_st1_volumes(tmp_path: Path, account: dict[str, str]) -> None:
    """moto (fake AWS): io2 needs provisioned IOPS (EC2 refuses it without); size and
    type come from the settings."""
    p = make_provider(tmp_path, account, job_volume_type="io2", job_volume_gib=8)
    inst = p.create_instance("t3.small", wait_for_agent=False)
    v = volume(vid_of(p.attach_job_storage("j1", inst)))
    assert (v["VolumeType"], v["Size"], v["Iops"]) == ("io2", 8, 3000)
    assert p.volumes.create_request("j9")["Iops"] == 3000
    p4 = make_provider(tmp_path, account, job_volume_type="io2", job_volume_gib=4)
    assert p4.volumes.create_request("j9")["Iops"] == 2000  # 500 IOPS per GiB at most
    st1 = make_provider(tmp_path, account, job_volume_type="st1", job_volume_gib=125)
    req = st1.volumes.create_request("j9")
    assert (req["VolumeType"], req["Size"]) == ("st1", 125) and "Iops" not in req


def test_moto_attach_that_never_completes_times_out(
    provider: AwsProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto (fake AWS) + a SIMULATED AWS answer: AttachVolume is accepted but the
    attachment never happens (moto attaches at once), so the bounded wait ends in a
    ProviderError naming the volume; the clock is a fake one."""
    inst = provider.create_instance("t3.small", wait_for_agent=False)
    ec2 = provider.adaptor.client("ec2")
    monkeypatch.setattr(ec2, "attach_volume", lambda **kw: {"State": "attaching", **kw})
    now = [0.0]
    provider.volumes.clock = lambda: now[0]
    provider.volumes.sleep = lambda s: now.__setitem__(0, now[0] + max(s, 0.1))
    with pytest.raises(ProviderError) as ei:
        provider.attach_job_storage("j1", inst)
    [v] = job_volumes("j1")
    msg = str(ei.value)
    assert v["VolumeId"] in msg and "j1" in msg
    assert "300 s" in msg and f"attached to {ec2_id(inst)}" in msg
    assert now[0] >= 300.0


# ---- s3 mode, checkpoints ------------------------------------------------------------------


def test_moto_s3_job_storage_url_and_delete(tmp_path: Path, account: dict[str, str]) -> None:
    """moto (fake AWS): s3 mode hands the agent a URL under jobdir/ and creates no
    volume; delete_job_storage removes the object and its manifest."""
    p = make_provider(tmp_path, account, job_storage="s3", s3_prefix="pfx")
    inst = p.create_instance("t3.small", wait_for_agent=False)
    storage = p.attach_job_storage("j1", inst)
    url = "s3://og-test/pfx/test/jobdir/j1/workspace.tar"
    assert storage == JobStorage(StorageKind.S3, url=url)
    assert p.attach_job_storage("j1", inst) == storage  # idempotent
    assert job_volumes() == []
    p.detach_job_storage("j1", inst)  # nothing to detach
    # what an agent uploads there (the storage module's own helper, against moto)
    src = tmp_path / "jobdir"
    src.mkdir()
    (src / "notebook.ipynb").write_text("{}")
    upload_url(src, url, AwsAdaptor(REGION))
    s3 = AwsAdaptor(REGION).client("s3")

    def keys() -> list[str]:
        got = s3.list_objects_v2(Bucket="og-test", Prefix="pfx/test/jobdir/j1/")
        return sorted(o["Key"] for o in got.get("Contents", []))

    assert keys() == [
        "pfx/test/jobdir/j1/workspace.tar",
        "pfx/test/jobdir/j1/workspace.tar.manifest.json",
    ]
    p.delete_job_storage("j1")
    assert keys() == []
    p.delete_job_storage("j1")  # idempotent


def test_s3_job_storage_without_a_bucket_is_a_config_error(
    tmp_path: Path, account: dict[str, str]
) -> None:
    """moto (fake AWS) account; the error comes at construction, before any call."""
    with pytest.raises(ConfigError, match="OUTGROW_AWS_S3_BUCKET") as ei:
        make_provider(tmp_path, account, job_storage="s3", s3_bucket=None)
    assert ei.value.field == "s3_bucket"


def test_moto_checkpoint_url_and_delete(tmp_path: Path, account: dict[str, str]) -> None:
    """moto (fake AWS): suspend checkpoints are s3:// URLs under suspend/; deleting one
    removes it and its manifest, idempotently; other URLs are refused."""
    p = make_provider(tmp_path, account)
    url = p.checkpoint_location("j1", "c1")
    assert url == "s3://og-test/outgrow/test/suspend/j1/c1.tar"
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "core-1.img").write_bytes(b"core")
    upload_url(src, url, AwsAdaptor(REGION))
    s3 = AwsAdaptor(REGION).client("s3")
    listed = s3.list_objects_v2(Bucket="og-test", Prefix="outgrow/test/suspend/j1/")
    assert len(listed.get("Contents", [])) == 2
    p.delete_checkpoint(url)
    listed = s3.list_objects_v2(Bucket="og-test", Prefix="outgrow/test/suspend/j1/")
    assert listed.get("Contents", []) == []
    p.delete_checkpoint(url)  # idempotent
    with pytest.raises(ProviderError, match="not a suspend checkpoint"):
        p.delete_checkpoint("s3://og-test/outgrow/test/jobdir/j1/workspace.tar")
    with pytest.raises(TransferError):
        p.delete_checkpoint("/var/lib/outgrow/ckpt")
    with pytest.raises(ValueError):
        p.checkpoint_location("j1", "../c1")


def test_checkpoint_url_without_a_bucket_is_a_config_error(
    tmp_path: Path, account: dict[str, str]
) -> None:
    """moto (fake AWS) account; ebs mode works without a bucket, suspend does not."""
    p = make_provider(tmp_path, account, s3_bucket=None)
    with pytest.raises(ConfigError, match="suspend on aws needs OUTGROW_AWS_S3_BUCKET"):
        p.checkpoint_location("j1", "c1")
    inst = p.create_instance("t3.small", wait_for_agent=False)
    assert p.attach_job_storage("j1", inst).kind is StorageKind.VOLUME
    p.delete_instance(inst.id)
    p.delete_job_storage("j1")  # no bucket: only the volume
    assert job_volumes("j1") == []


# ---- settings ------------------------------------------------------------------------------


def test_job_storage_settings_defaults_environment_and_validation(
    aws_env: None,  # no OUTGROW_AWS_* from the environment
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = AwsSettings()
    assert (s.job_storage, s.job_volume_gib, s.job_volume_type) == ("ebs", 20, "gp3")
    monkeypatch.setenv("OUTGROW_AWS_JOB_STORAGE", "s3")
    monkeypatch.setenv("OUTGROW_AWS_JOB_VOLUME_GIB", "200")
    monkeypatch.setenv("OUTGROW_AWS_JOB_VOLUME_TYPE", "st1")
    s = AwsSettings()
    assert (s.job_storage, s.job_volume_gib, s.job_volume_type) == ("s3", 200, "st1")
    for bad in (
        {"job_storage": "nfs"},
        {"job_volume_gib": 0},
        {"job_volume_gib": 16385},
        {"job_volume_type": "io1"},
        {"job_volume_type": "st1", "job_volume_gib": 124},
        {"job_volume_type": "io2", "job_volume_gib": 3},
    ):
        with pytest.raises(PydanticValidationError) as ei:
            AwsSettings(**bad)
        assert next(iter(bad)) in str(ei.value) or "job_volume_gib" in str(ei.value), bad
    assert AwsSettings(job_volume_type="io2", job_volume_gib=4).job_volume_gib == 4
    assert AwsSettings(job_volume_gib=16384).job_volume_gib == 16384
