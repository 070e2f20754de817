"""The aws provider against moto (fake AWS): no AWS account is used anywhere here.

Every test that talks to "AWS" talks to moto — in-process (``mock_aws``) or, for the
endpoint-URL path, moto's threaded server — and says so in its name or docstring. moto
checks request shapes and keeps state (instances, tags, volumes, security groups, S3
objects) but does not boot anything: no instance ever runs cloud-init or an agent, so the
agent-health wait is either skipped (``wait_for_agent=False``) or checked for its timeout
error. Where AWS's answer is *simulated* (a capacity error, a dependency violation), the
test says so: moto does not produce those answers by itself.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("boto3", reason="outgrow[aws] not installed")
moto = pytest.importorskip("moto", reason="moto not installed (dev extra)")

from botocore.exceptions import ClientError  # noqa: E402

from netguard import fenced_range  # noqa: E402
from outgrow.controlplane.images import Images  # noqa: E402
from outgrow.controlplane.instances import Instances  # noqa: E402
from outgrow.domain.jobs import JobSpec  # noqa: E402
from outgrow.domain.security import SecurityGroup  # noqa: E402
from outgrow.errors import (  # noqa: E402
    CapacityError,
    ConfigError,
    NotFoundError,
    ProviderError,
    TransferError,
    ValidationError,
)
from outgrow.providers.aws import bootstrap, userdata  # noqa: E402
from outgrow.providers.aws.criu_script import CRIU_PATCHES, INSTALL_CRIU_SH  # noqa: E402
from outgrow.providers.aws.prices import (  # noqa: E402
    load_price_table,
    parse_price_item,
    parse_price_table,
)
from outgrow.providers.aws.provider import (  # noqa: E402
    TAG_CLUSTER,
    TAG_EC2_ID,
    TAG_INSTANCE,
    TAG_JOB,
    AwsProvider,
    sg_name,
)
from outgrow.providers.aws.settings import AwsSettings  # noqa: E402
from outgrow.providers.aws.spotwatch import notice, parse_instance_action  # noqa: E402
from outgrow.providers.aws.userdata import SPOT_UNIT_PATH  # noqa: E402
from outgrow.providers.base import get_provider  # noqa: E402
from outgrow.settings import Settings  # noqa: E402
from outgrow.store import JobRecord, Store  # noqa: E402
from outgrow.transfer.boto import AwsAdaptor, error_code, retry, translate  # noqa: E402
from outgrow.transfer.s3 import CheckpointStore  # noqa: E402

REGION = "eu-west-1"
REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


# ---- fixtures -----------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for moto; nothing from the developer's AWS setup leaks in."""
    for k in list(os.environ):
        if k.startswith(("AWS_", "OUTGROW_AWS_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


@pytest.fixture
def fake_aws(aws_env: None) -> Iterator[None]:
    """moto (fake AWS), in process."""
    with moto.mock_aws():
        yield


def _ec2() -> Any:
    return AwsAdaptor(REGION).client("ec2")


_AMI: list[str] = []


def _moto_ami(a: AwsAdaptor) -> str:
    """An x86_64 AMI of moto's catalogue (looked up once: listing them all takes a second)."""
    if not _AMI:
        _AMI.append(
            next(
                i["ImageId"]
                for i in a.call(
                    "ec2",
                    "describe_images",
                    Owners=["amazon"],
                    Filters=[{"Name": "architecture", "Values": ["x86_64"]}],
                )["Images"]
            )
        )
    return _AMI[0]


@pytest.fixture
def account(fake_aws: None) -> dict[str, str]:
    """moto (fake AWS): the default VPC's first subnet, an x86_64 AMI published through an
    SSM parameter (as Debian publishes its own), a bucket."""
    a = AwsAdaptor(REGION)
    sub = sorted(a.call("ec2", "describe_subnets")["Subnets"], key=lambda s: s["SubnetId"])[0]
    ami = _moto_ami(a)
    a.call("ssm", "put_parameter", Name="/test/debian-12-amd64", Value=ami, Type="String")
    a.call(
        "s3",
        "create_bucket",
        Bucket="og-test",
        CreateBucketConfiguration={"LocationConstraint": REGION},
    )
    return {"subnet": sub["SubnetId"], "vpc": sub["VpcId"], "ami": ami, "bucket": "og-test"}


def make_provider(tmp_path: Path, account: dict[str, str], **overrides: Any) -> AwsProvider:
    fields: dict[str, Any] = {
        "region": REGION,
        "subnet_id": account["subnet"],
        "ami_ssm_parameter": "/test/debian-12-amd64",
        "s3_bucket": account["bucket"],
        "cluster": "test",
        "control_plane_cidr": "10.9.0.10/32",
        "agent_health_timeout_s": 5.0,
        "agent_package": "outgrow==0.1.0",
        **overrides,
    }
    return AwsProvider(
        Settings(data_dir=tmp_path / "data"), AwsSettings(**fields), sleep=lambda s: None
    )


@pytest.fixture
def provider(tmp_path: Path, account: dict[str, str]) -> AwsProvider:
    return make_provider(tmp_path, account)


def job_sg(job: str = "j1", **kw: Any) -> SecurityGroup:
    spec = JobSpec(name="nb", image="jupyter-lab", **kw)
    return SecurityGroup.from_spec(job, spec, default_ports=(8888,))


def raw_instance(p: AwsProvider, iid: str) -> dict[str, Any]:
    res = _ec2().describe_instances(Filters=[{"Name": f"tag:{TAG_INSTANCE}", "Values": [iid]}])
    return res["Reservations"][0]["Instances"][0]


# ---- instance types and prices --------------------------------------------------------


def test_packaged_price_table_is_dated_and_covers_three_regions() -> None:
    t = load_price_table()
    assert isinstance(t.as_of, date)
    assert {"us-east-1", "eu-west-1", "eu-central-1"} <= set(t.regions)
    for region in ("us-east-1", "eu-west-1", "eu-central-1"):
        names = set(t.regions[region])
        for fam in ("t3", "m5", "m6i", "c5", "r5", "r6i"):
            assert f"{fam}.large" in names and f"{fam}.xlarge" in names
        # a bigger size of a family costs more; memory-optimised more than general purpose
        p = t.regions[region]
        assert p["m5.large"] < p["m5.xlarge"] < p["m5.2xlarge"]
        assert p["c5.large"] < p["m5.large"] < p["r5.large"]
    assert t.regions["us-east-1"]["m5.large"] == pytest.approx(0.096)
    with pytest.raises(ConfigError, match="no prices for region"):
        t.for_region("ap-south-2")
    with pytest.raises(ConfigError, match="as_of"):
        parse_price_table("regions: {}\n")


def test_pricing_api_item_is_parsed() -> None:
    """The shape of one pricing:GetProducts PriceList entry (abridged from AWS's docs)."""
    item = {
        "product": {"attributes": {"instanceType": "m5.large", "regionCode": "eu-west-1"}},
        "terms": {
            "OnDemand": {
                "X.JRTCKXETXF": {
                    "priceDimensions": {
                        "X.JRTCKXETXF.6YS6EN2CT7": {
                            "unit": "Hrs",
                            "pricePerUnit": {"USD": "0.1070000000"},
                        }
                    }
                }
            }
        },
    }
    assert parse_price_item(item) == ("m5.large", pytest.approx(0.107))
    assert parse_price_item({"product": {"attributes": {}}}) is None


def test_type_patterns_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTGROW_AWS_ALLOW_TYPES", "r5*, m*")
    monkeypatch.setenv("OUTGROW_AWS_DENY_TYPES", "m5.24xlarge,*.metal")
    s = AwsSettings()
    assert s.allow_types == ["r5*", "m*"]
    assert s.type_allowed("r5.large") and s.type_allowed("r5d.xlarge")
    assert s.type_allowed("m6i.large") and not s.type_allowed("m5.24xlarge")
    assert not s.type_allowed("c5.large") and not s.type_allowed("t3.micro")
    assert AwsSettings(allow_types=[]).type_allowed("anything.large")


def test_moto_catalog_joins_shapes_prices_and_spot(provider: AwsProvider) -> None:
    """moto (fake AWS): vCPU/memory from DescribeInstanceTypes, on-demand from the packaged
    table, spot from DescribeSpotPriceHistory (moto answers 0.00001 for every type)."""
    cat = provider.instance_types()
    m5 = cat.get("m5.large")
    assert (m5.vcpus, m5.memory_gib) == (2, 8)
    assert m5.price_per_hour == pytest.approx(0.107)  # eu-west-1 in the table
    assert m5.spot_price_per_hour == pytest.approx(0.00001)
    assert m5.price(spot=True) < m5.price(spot=False)
    r5 = cat.get("r5.2xlarge")
    assert (r5.vcpus, r5.memory_gib) == (8, 64)
    assert len(cat) == len(load_price_table().regions[REGION])


def test_moto_allow_deny_and_cheapest_fit(tmp_path: Path, account: dict[str, str]) -> None:
    """moto (fake AWS): the scheduler's own cheapest-fit choice (Instances.initial_type) on
    the aws catalog, with allow/deny wildcards."""
    p = make_provider(tmp_path, account, allow_types=["r5*", "m*"], deny_types=["r5.large"])
    cat = p.instance_types()
    assert {t.name.split(".")[0] for t in cat} == {"r5", "m5", "m6i"}
    assert "r5.large" not in {t.name for t in cat}

    instances, store = _instances(p)

    def initial(cpu: str, mem: str) -> str:
        name = f"nb{cpu}-{mem}".replace(":", "-")
        job = _job(store, JobSpec(name=name, image="python", cpu=cpu, mem=mem))
        return instances.initial_type(job).name

    # 2 vCPU 16 GiB: r5.large is denied, r6i.large is not in the allow list → m5.xlarge
    # (4 vCPU 16 GiB, 0.214) beats r5.xlarge (0.282); m5 and m6i cost the same, m5 sorts first
    assert initial("2", "16") == "m5.xlarge"
    assert initial("2", "8") == "m5.large"
    # 4+ vCPU 32 GiB: the memory-optimised r5.xlarge (0.282) beats m5.2xlarge (0.428)
    assert initial("4:8", "32") == "r5.xlarge"
    with pytest.raises(CapacityError):
        initial("2", "2048")
    with pytest.raises(ConfigError, match="allow_types"):
        make_provider(tmp_path, account, allow_types=["x9*"]).instance_types()


# ---- launching ------------------------------------------------------------------------


def _simulate_spot_capacity_error(p: AwsProvider, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """SIMULATED AWS answer: moto always has capacity, so RunInstances with spot options is
    made to fail the way AWS does (ClientError InsufficientInstanceCapacity) inside the
    boto3 client; the adaptor's real translation turns it into a CapacityError."""
    ec2 = p.adaptor.client("ec2")
    real = ec2.run_instances
    seen: list[str] = []

    def run_instances(**kw: Any) -> Any:
        market = "spot" if kw.get("InstanceMarketOptions") else "on-demand"
        seen.append(market)
        if market == "spot":
            raise ClientError(
                {
                    "Error": {
                        "Code": "InsufficientInstanceCapacity",
                        "Message": "We currently do not have sufficient capacity (simulated).",
                    }
                },
                "RunInstances",
            )
        return real(**kw)

    monkeypatch.setattr(ec2, "run_instances", run_instances)
    # No agent can answer in moto: skip the health wait (tested on its own below).
    monkeypatch.setattr(p, "wait_for_agent", lambda info, timeout=None, cancel=None: None)
    return seen


def _instances(p: AwsProvider) -> tuple[Instances, Store]:
    """The control plane's own instance logic on the moto provider, over a real (in-memory)
    store; no retry waits."""
    store = Store.open("sqlite://")
    stopping = threading.Event()
    return Instances(store, p, Images(store), stopping, retry_cap_s=0.0), store


def _job(store: Store, spec: JobSpec) -> JobRecord:
    user = store.get_user("u") or store.create_user("u", "password")
    job = store.get_job(store.create_job(user.id, spec, "t"))
    assert job is not None
    return job


def test_moto_spot_first_falls_back_to_on_demand(
    provider: AwsProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto (fake AWS) + a simulated spot capacity error: the control plane's own vmPolicy
    loop (Instances.create) gets a CapacityError for spot and launches on-demand."""
    seen = _simulate_spot_capacity_error(provider, monkeypatch)
    instances, store = _instances(provider)
    job = _job(
        store, JobSpec(name="nb", image="jupyter-lab", vm_policy="[spotFirst=true,retryLimit=0]")
    )
    inst = instances.create(job, provider.instance_types().get("m5.large"))
    assert seen == ["spot", "on-demand"]
    assert inst.spot is False
    raw = raw_instance(provider, inst.id)
    assert "InstanceLifecycle" not in raw
    assert inst.tags[TAG_JOB] == job.id


def test_moto_spot_only_gives_capacity_error_and_leaves_nothing(
    provider: AwsProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto (fake AWS) + a simulated spot capacity error, vmPolicy spotOnly."""
    seen = _simulate_spot_capacity_error(provider, monkeypatch)
    instances, store = _instances(provider)
    job = _job(store, JobSpec(name="nb", image="python", vm_policy="[spotOnly=true,retryLimit=1]"))
    with pytest.raises(CapacityError) as ei:
        instances.create(job, provider.instance_types().get("m5.large"))
    assert seen == ["spot", "spot"]
    assert "InsufficientInstanceCapacity" in str(ei.value)
    assert "simulated" in (ei.value.detail or "")
    assert isinstance(ei.value.__cause__, ClientError)
    assert any("retry 1/1" in e.reason for e in store.events(job.id))
    assert provider.list_instances() == []


def test_moto_spot_launch_tags_imdsv2_and_root_volume(provider: AwsProvider) -> None:
    """moto (fake AWS): what RunInstances was asked for, as EC2 recorded it."""
    inst = provider.create_instance(
        "m5.large",
        spot=True,
        tags={"outgrow:job": "j1"},
        security_group=job_sg(),
        wait_for_agent=False,
    )
    raw = raw_instance(provider, inst.id)
    tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
    assert tags[TAG_JOB] == "j1"
    assert tags[TAG_INSTANCE] == inst.id
    assert tags[TAG_CLUSTER] == "test"
    assert raw["InstanceLifecycle"] == "spot" and inst.spot
    md = raw["MetadataOptions"]
    assert md["HttpTokens"] == "required"  # IMDSv2 only
    assert md["HttpEndpoint"] == "enabled" and md["HttpPutResponseHopLimit"] == 1
    assert inst.address == raw["PrivateIpAddress"]
    assert inst.agent_url == f"http://{raw['PrivateIpAddress']}:7070"
    assert inst.tags[TAG_EC2_ID] == raw["InstanceId"]
    assert [g["GroupName"] for g in raw["SecurityGroups"]] == [sg_name("j1")]
    vols = _ec2().describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [raw["InstanceId"]]}]
    )["Volumes"]
    assert len(vols) == 1
    v = vols[0]
    assert v["Encrypted"] and v["VolumeType"] == "gp3" and v["Size"] == 30
    assert {t["Key"]: t["Value"] for t in v["Tags"]}[TAG_INSTANCE] == inst.id
    # the launch request itself (moto does not echo every field back)
    req = provider.launch_request(
        inst.id,
        inst.type,
        spot=True,
        tags={},
        group_id="sg-1",
        user_data="#cloud-config\n",
    )
    assert req["InstanceMarketOptions"]["SpotOptions"]["InstanceInterruptionBehavior"] == (
        "terminate"
    )
    assert req["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"] is True
    assert req["InstanceInitiatedShutdownBehavior"] == "terminate"
    # the user-data EC2 holds is the cloud-config that starts this instance's agent
    ud = _ec2().describe_instance_attribute(InstanceId=raw["InstanceId"], Attribute="userData")
    text = base64.b64decode(ud["UserData"]["Value"]).decode()
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    token = next(f for f in doc["write_files"] if f["path"] == userdata.TOKEN_FILE)
    assert token["content"].strip() == inst.agent_token
    # a spot instance also runs the interruption watcher, after the agent
    watcher = next(f for f in doc["write_files"] if f["path"] == SPOT_UNIT_PATH)
    assert "-m outgrow.providers.aws.spotwatch" in watcher["content"]
    assert f"--token-file {userdata.TOKEN_FILE}" in watcher["content"]
    assert doc["runcmd"][-2:] == [
        "systemctl enable --now outgrow-agent.service",
        "systemctl enable --now outgrow-spotwatch.service",
    ]
    # the agent reaches S3 (checkpoints, job directories) in this region and bucket, with
    # boto3 installed (outgrow's aws extra)
    assert _unit(doc)["Environment"] == [
        f"OUTGROW_AWS_REGION={REGION}",
        "OUTGROW_AWS_S3_BUCKET=og-test",
    ]
    assert any(c.endswith(" 'outgrow[aws]==0.1.0'") for c in doc["runcmd"])


# ---- user-data --------------------------------------------------------------------------


def _spec(**kw: Any) -> userdata.UserDataSpec:
    fields: dict[str, Any] = {
        "instance_id": "1a2b3c4d",
        "cluster": "test",
        "token": "tok-123_abc",
        "cgroup": "og-1a2b3c4d",
        "install": userdata.AgentInstall(requirement="outgrow==0.1.0"),
        "install_criu_sh": INSTALL_CRIU_SH,
        **kw,
    }
    return userdata.UserDataSpec(**fields)


def test_the_largest_user_data_fits_and_carries_every_criu_patch() -> None:
    """Every CRIU patch, a spot watcher and published ports: still under EC2's 16 KiB (the
    patches travel compressed, as cloud-init's write_files decodes them)."""
    spec = _spec(criu_patches=CRIU_PATCHES, spot=True, redirects=((8080, 8080), (8443, 443)))
    text = userdata.render(spec)
    assert len(text.encode()) < userdata.USER_DATA_LIMIT
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    assert len(CRIU_PATCHES) >= 3
    for name, content in CRIU_PATCHES:
        f = files[f"{userdata.CRIU_PATCH_DIR}/{name}"]
        assert f["encoding"] == "gz+b64"
        assert gzip.decompress(base64.b64decode(f["content"])).decode() == content


def _unit(doc: dict[str, Any]) -> dict[str, list[str]]:
    f = next(f for f in doc["write_files"] if f["path"] == userdata.UNIT_PATH)
    out: dict[str, list[str]] = {}
    for line in f["content"].splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_user_data_is_a_cloud_config_that_installs_and_starts_the_agent() -> None:
    text = userdata.render(_spec())
    assert text.startswith("#cloud-config\n")
    assert len(text.encode()) < userdata.USER_DATA_LIMIT
    doc = yaml.safe_load(text)
    assert set(doc) == {"write_files", "runcmd"}
    files = {f["path"]: f for f in doc["write_files"]}
    token = files[userdata.TOKEN_FILE]
    assert token["permissions"] == "0600" and token["owner"] == "root:root"
    assert token["content"] == "tok-123_abc\n"
    assert files[userdata.CRIU_SCRIPT]["content"] == INSTALL_CRIU_SH
    assert files[userdata.CRIU_SCRIPT]["permissions"] == "0755"

    unit = _unit(doc)
    assert "Environment" not in unit  # no region, no bucket given: no S3 for the agent
    assert unit["Restart"] == ["on-failure"] and unit["KillMode"] == ["process"]
    assert unit["WantedBy"] == ["multi-user.target"]
    assert unit["EnvironmentFile"] == [f"-{userdata.ENV_FILE}"]
    assert unit["ExecStartPre"] == [
        f"{userdata.VENV}/bin/python -m outgrow.providers.aws.bootstrap --cgroup og-1a2b3c4d "
        f"--env-file {userdata.ENV_FILE} --memory-reserve-mib 768"
    ]
    argv = unit["ExecStart"][0].split()
    assert argv[:3] == [f"{userdata.VENV}/bin/python", "-m", "outgrow.agent"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags == {
        "--instance-id": "1a2b3c4d",
        "--cgroup": "og-1a2b3c4d",
        "--netns-path": "/proc/1/ns/net",
        "--address": "${OUTGROW_AGENT_ADDRESS}",
        "--port": "7070",
        "--jobs-dir": userdata.JOBS_DIR,
        "--work-dir": userdata.WORK_DIR,
        "--image-cache-dir": userdata.IMAGE_CACHE_DIR,
        "--criu": "/opt/outgrow/criu/sbin/criu",
        "--token-file": userdata.TOKEN_FILE,
        "--oom-headroom-mib": "64",
    }
    # every flag the agent's own parser requires is given, and it knows every flag given
    from outgrow.agent import __main__ as agent_main

    src = Path(agent_main.__file__).read_text()
    known = set(re.findall(r'add_argument\(\s*"(--[a-z-]+)"', src))
    required = set(re.findall(r'add_argument\(\s*"(--[a-z-]+)"[^)]*required=True', src))
    assert required and required <= set(flags) <= known
    assert SPOT_UNIT_PATH not in {f["path"] for f in doc["write_files"]}  # on-demand

    run = doc["runcmd"]
    assert run[0] == "set -eu"  # a failed step stops the rest
    apt = next(c for c in run if "apt-get install" in c)
    assert "python3-venv" in apt.split()
    i_venv = run.index(f"python3 -m venv {userdata.VENV}")
    i_pip = next(i for i, c in enumerate(run) if "/bin/pip install" in c)
    i_criu = next(i for i, c in enumerate(run) if userdata.CRIU_SCRIPT in c)
    i_start = run.index("systemctl enable --now outgrow-agent.service")
    assert i_venv < i_pip < i_criu < i_start == len(run) - 1
    assert run[i_pip].endswith(" outgrow==0.1.0")  # pinned
    assert run[i_criu] == "OUTGROW_CRIU_PREFIX=/opt/outgrow/criu bash /opt/outgrow/install-criu.sh"


def test_user_data_wheel_is_downloaded_checked_and_redirects_applied() -> None:
    sha = "ab" * 32
    install = userdata.AgentInstall(
        wheel_url="https://example.invalid/w/outgrow-0.1.0-py3-none-any.whl?X-Amz-Signature=1",
        wheel_name="outgrow-0.1.0-py3-none-any.whl",
        sha256=sha,
    )
    doc = yaml.safe_load(userdata.render(_spec(install=install, redirects=((9100, 9000),))))
    run = doc["runcmd"]
    path = "/opt/outgrow/outgrow-0.1.0-py3-none-any.whl"
    i_get = next(i for i, c in enumerate(run) if c.startswith("curl "))
    assert path in run[i_get] and "'https://example.invalid/" in run[i_get]
    assert run[i_get + 1] == f"echo '{sha}  {path}' | sha256sum -c -"
    assert run[i_get + 2].endswith(f"install --no-cache-dir --disable-pip-version-check {path}")
    files = {f["path"]: f for f in doc["write_files"]}
    assert "tcp dport 9100 redirect to :9000" in files[userdata.REDIRECT_FILE]["content"]
    assert f"/usr/sbin/nft -f {userdata.REDIRECT_FILE}" in _unit(doc)["ExecStartPre"]
    with pytest.raises(ConfigError, match="pinned"):
        userdata.AgentInstall(requirement="outgrow>=0.1")
    with pytest.raises(ConfigError, match="https"):
        userdata.AgentInstall(wheel_url="http://x/outgrow-0.1.0-py3-none-any.whl")


def test_user_data_gives_the_agent_what_it_needs_for_s3() -> None:
    """Region and bucket in the agent's unit environment (credentials: the instance
    profile), and outgrow installed with its aws extra (boto3) when a bucket is set."""
    doc = yaml.safe_load(userdata.render(_spec(region="eu-west-1", s3_bucket="og-test")))
    assert _unit(doc)["Environment"] == [
        "OUTGROW_AWS_REGION=eu-west-1",
        "OUTGROW_AWS_S3_BUCKET=og-test",
    ]
    pip = next(c for c in doc["runcmd"] if "/bin/pip install" in c)
    assert pip.endswith(" 'outgrow[aws]==0.1.0'")
    # a region but no bucket: the agent never uses S3, no boto3
    doc = yaml.safe_load(userdata.render(_spec(region="us-east-1")))
    assert _unit(doc)["Environment"] == ["OUTGROW_AWS_REGION=us-east-1"]
    assert next(c for c in doc["runcmd"] if "/bin/pip install" in c).endswith(" outgrow==0.1.0")
    # a wheel gets the extra too
    install = userdata.AgentInstall(
        wheel_url="https://example.invalid/outgrow-0.1.0-py3-none-any.whl"
    )
    doc = yaml.safe_load(userdata.render(_spec(install=install, s3_bucket="og-test")))
    pip = next(c for c in doc["runcmd"] if "/bin/pip install" in c)
    assert pip.endswith(" '/opt/outgrow/outgrow-0.1.0-py3-none-any.whl[aws]'")
    assert userdata.with_extras("outgrow[x]==0.1.0", ("aws",)) == "outgrow[x,aws]==0.1.0"
    assert userdata.with_extras("outgrow[aws]==0.1.0", ("aws",)) == "outgrow[aws]==0.1.0"
    for bad in ({"region": "eu-west-1\nExecStart=/bin/sh"}, {"s3_bucket": "Bad Bucket"}):
        with pytest.raises(ConfigError):
            userdata.render(_spec(**bad))


def test_packaged_criu_script_is_the_project_script() -> None:
    """The script written onto instances is the one `make setup` runs, byte for byte."""
    assert (REPO / "src/outgrow/data/install-criu.sh").read_text() == INSTALL_CRIU_SH, (
        "the aws provider does not ship src/outgrow/data/install-criu.sh: "
        "the package must carry the script make setup runs"
    )


def test_moto_s3_wheel_is_presigned_into_user_data(tmp_path: Path, account: dict[str, str]) -> None:
    """moto (fake AWS): an s3:// wheel becomes a presigned https URL in the user-data."""
    p = make_provider(
        tmp_path,
        account,
        agent_wheel_url="s3://og-test/wheels/outgrow-0.1.0-py3-none-any.whl",
        agent_wheel_sha256="cd" * 32,
    )
    inst = p.create_instance("t3.small", wait_for_agent=False)
    ud = _ec2().describe_instance_attribute(InstanceId=inst.tags[TAG_EC2_ID], Attribute="userData")
    doc = yaml.safe_load(base64.b64decode(ud["UserData"]["Value"]))
    curl = next(c for c in doc["runcmd"] if c.startswith("curl "))
    assert "https://og-test.s3" in curl and "outgrow-0.1.0-py3-none-any.whl" in curl
    assert "Signature" in curl
    assert any(("cd" * 32) in c for c in doc["runcmd"])


def test_s3_wheel_behind_a_plain_http_endpoint_is_a_clear_error(
    aws_env: None, tmp_path: Path
) -> None:
    """An s3:// wheel presigned against an http endpoint (a test fake, a proxy) would be
    downloaded without TLS: refused, saying why — not "must be https" of a URL the user
    wrote as s3://."""
    from outgrow.providers.aws.launch import agent_install
    from outgrow.providers.aws.settings import AwsSettings

    aws = AwsSettings(agent_wheel_url="s3://og-test/w/outgrow-0.1.0-py3-none-any.whl")
    with pytest.raises(ConfigError, match=r"presigns to a plain-http URL.*http://127\.0\.0\.1:9"):
        agent_install(aws, AwsAdaptor(REGION, endpoint_url="http://127.0.0.1:9"))


def test_spot_interruption_signals_are_parsed() -> None:
    """The documented IMDS answers (as text; no IMDS is faked here)."""
    now = 1_764_100_000.0  # 2025-11-25T19:46:40Z
    action = '{"action": "terminate", "time": "2025-11-25T19:48:40Z"}'
    assert parse_instance_action(action, now) == pytest.approx(120.0)
    assert parse_instance_action('{"action": "stop", "time": "2025-11-25T19:46:00Z"}', now) == 0
    assert parse_instance_action(None, now) is None
    assert parse_instance_action("<html>oops", now) is None
    rebalance = '{"noticeTime": "2025-11-25T19:40:00Z"}'
    assert notice(None, rebalance, now, 600) == (600, "aws rebalance recommendation")
    assert notice(action, rebalance, now, 600) == (pytest.approx(120.0), "aws spot instance-action")
    assert notice(None, None, now, 600) is None


def test_moto_agent_source_must_be_configured(tmp_path: Path, account: dict[str, str]) -> None:
    """moto (fake AWS): no wheel URL and no pinned package → a clear error, no launch."""
    p = make_provider(tmp_path, account, agent_package=None)
    with pytest.raises(ConfigError, match="OUTGROW_AWS_AGENT_WHEEL_URL"):
        p.create_instance("t3.small", wait_for_agent=False)
    assert p.list_instances() == []


def test_bootstrap_memory_limit_and_env_file() -> None:
    meminfo = "MemTotal:        8000000 kB\nMemFree:  1 kB\n"
    assert bootstrap.memory_limit_bytes(meminfo, 768) == 8000000 * 1024 - 768 * MIB
    assert bootstrap.memory_limit_bytes(meminfo, 100_000) == 8000000 * 1024 // 2
    assert bootstrap.env_file_text("10.0.1.23") == "OUTGROW_AGENT_ADDRESS=10.0.1.23\n"
    with pytest.raises(ValueError):
        bootstrap.env_file_text("10.0.1.23; rm -rf /")


# ---- security groups --------------------------------------------------------------------


def _ingress(p: AwsProvider, job: str) -> set[tuple[int, int, str]]:
    g = _ec2().describe_security_groups(Filters=[{"Name": "group-name", "Values": [sg_name(job)]}])[
        "SecurityGroups"
    ][0]
    out = set()
    for perm in g["IpPermissions"]:
        assert perm["IpProtocol"] == "tcp"
        for r in perm.get("IpRanges", []):
            out.add((perm["FromPort"], perm["ToPort"], r["CidrIp"]))
        for r in perm.get("Ipv6Ranges", []):
            out.add((perm["FromPort"], perm["ToPort"], r["CidrIpv6"]))
    return out


def test_moto_security_group_rules_for_ports_and_cidrs(provider: AwsProvider) -> None:
    """moto (fake AWS): the job's group holds exactly the domain's allow rules."""
    sg = job_sg(publish=["8888:8888", "9100:9000"], allow_cidr=["203.0.113.0/24", "2001:db8::/32"])
    inst = provider.create_instance("t3.small", security_group=sg, wait_for_agent=False)
    vpc = provider.network()["vpc_cidr"]
    cp = "10.9.0.10/32"
    assert _ingress(provider, "j1") == {
        (7070, 7070, cp),  # agent API from the control plane
        (8888, 8888, cp),  # stable-URL proxy
        (9100, 9100, cp),
        (9000, 9000, cp),
        (7070, 7070, vpc),  # other instances' agents
        (7100, 7199, vpc),  # CRIU page server
        (8888, 8888, "203.0.113.0/24"),
        (9100, 9100, "203.0.113.0/24"),
        (8888, 8888, "2001:db8::/32"),
        (9100, 9100, "2001:db8::/32"),
    }
    # default deny: nothing from anywhere, nothing of the job port 9000 from the users
    assert not any(c in ("0.0.0.0/0", "::/0") for _, _, c in _ingress(provider, "j1"))
    assert (9000, 9000, "203.0.113.0/24") not in _ingress(provider, "j1")
    assert inst.tags[TAG_JOB] == "j1"
    with pytest.raises(ValidationError, match="reserved"):
        provider.create_instance(
            "t3.small", security_group=job_sg("j9", publish=["7070:80"]), wait_for_agent=False
        )


def test_moto_security_group_follows_the_job_and_is_deleted_with_it(
    provider: AwsProvider,
) -> None:
    """moto (fake AWS): a migration target gets the same group; changed rules are applied;
    the group goes when the job ends."""
    a = provider.create_instance("t3.small", security_group=job_sg(), wait_for_agent=False)
    b = provider.create_instance(
        "m5.large", security_group=job_sg(allow_cidr=["198.51.100.7/32"]), wait_for_agent=False
    )
    ga = raw_instance(provider, a.id)["SecurityGroups"]
    gb = raw_instance(provider, b.id)["SecurityGroups"]
    assert ga == gb  # one group per job, on every instance of it
    rules = _ingress(provider, "j1")
    assert (8888, 8888, "198.51.100.7/32") in rules
    provider.delete_instance(a.id)  # the source goes, the group stays with the target
    assert raw_instance(provider, b.id)["SecurityGroups"] == gb
    # allow_cidr changed back: the old range is revoked
    provider.update_security_group(b.id, job_sg())
    assert (8888, 8888, "198.51.100.7/32") not in _ingress(provider, "j1")
    provider.delete_instance(b.id)
    provider.wait_terminated()
    provider.delete_security_group("j1")
    provider.delete_security_group("j1")  # idempotent
    assert provider.groups.find(sg_name("j1")) is None


def test_security_group_delete_waits_out_dependency_violation() -> None:
    """SIMULATED AWS answer (moto deletes groups still in use): DependencyViolation while
    an instance is shutting down is retried with backoff, other errors are not."""
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            exc = ClientError({"Error": {"Code": "DependencyViolation"}}, "DeleteSecurityGroup")
            raise translate(exc, "ec2", "delete_security_group") from exc
        return "ok"

    slept: list[float] = []
    assert retry(flaky, codes={"DependencyViolation"}, timeout=60, what="x", sleep=slept.append)
    assert len(calls) == 3 and len(slept) == 2
    with pytest.raises(ProviderError):
        retry(flaky_other, codes={"DependencyViolation"}, timeout=60, what="x", sleep=slept.append)


def flaky_other() -> None:
    exc = ClientError({"Error": {"Code": "InvalidParameterValue"}}, "DeleteSecurityGroup")
    raise translate(exc, "ec2", "delete_security_group") from exc


# ---- reconcile, idempotency, teardown -------------------------------------------------


def test_moto_reconcile_after_restart_finds_the_same_instances(
    tmp_path: Path, account: dict[str, str]
) -> None:
    """moto (fake AWS): a new provider object (a restarted control plane with the same
    data dir) lists the same instances by their tags, with the same agent tokens."""
    p1 = make_provider(tmp_path, account)
    a = p1.create_instance("t3.small", tags={"outgrow:job": "j1"}, wait_for_agent=False)
    b = p1.create_instance("m5.large", spot=True, wait_for_agent=False)
    p2 = make_provider(tmp_path, account)
    found = {i.id: i for i in p2.list_instances()}
    assert set(found) == {a.id, b.id}
    for old in (a, b):
        new = found[old.id]
        assert (new.agent_token, new.address, new.agent_url, new.spot, new.type) == (
            old.agent_token,
            old.address,
            old.agent_url,
            old.spot,
            old.type,
        )
        assert new.state == "running"
    assert p2.describe_instance(a.id) == found[a.id]
    assert p2.describe_instance(a.tags[TAG_EC2_ID]) == found[a.id]  # the EC2 id works too
    assert p2.describe_instance("ffffffff") is None
    # another cluster (another control plane) sees none of them
    assert make_provider(tmp_path, account, cluster="other").list_instances() == []
    # an instance given an id of an earlier attempt is found again, not launched twice
    again = p2.create_instance("t3.small", instance_id=a.id, wait_for_agent=False)
    assert again.tags[TAG_EC2_ID] == a.tags[TAG_EC2_ID]
    assert len(p2.list_instances()) == 2


def test_moto_delete_is_idempotent(provider: AwsProvider) -> None:
    inst = provider.create_instance("t3.small", wait_for_agent=False)
    provider.delete_instance(inst.id)
    provider.delete_instance(inst.id)
    provider.delete_instance("00000000")
    assert provider.describe_instance(inst.id) is None
    state = raw_instance(provider, inst.id)["State"]["Name"]
    assert state in ("shutting-down", "terminated")


def test_moto_teardown_leaves_no_instance_volume_or_security_group(
    provider: AwsProvider,
) -> None:
    """moto (fake AWS): instances terminated, tagged volumes (a detached workspace volume
    included) and security groups deleted."""
    provider.create_instance("t3.small", security_group=job_sg("j1"), wait_for_agent=False)
    b = provider.create_instance("m5.large", security_group=job_sg("j2"), wait_for_agent=False)
    provider.create_instance("t3.micro", wait_for_agent=False)  # base group
    _ec2().create_volume(
        AvailabilityZone=provider.network()["az"],
        Size=10,
        TagSpecifications=[
            {
                "ResourceType": "volume",
                "Tags": [
                    {"Key": TAG_CLUSTER, "Value": "test"},
                    {"Key": TAG_INSTANCE, "Value": b.id},
                ],
            }
        ],
    )
    removed = provider.teardown(timeout=30)
    assert any(r.startswith("security group outgrow-sg-j1") for r in removed)
    ec2 = _ec2()
    left = [
        i
        for r in ec2.describe_instances(
            Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": ["test"]}]
        )["Reservations"]
        for i in r["Instances"]
    ]
    assert left and all(i["State"]["Name"] == "terminated" for i in left)
    assert (
        ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": ["test"]}])[
            "Volumes"
        ]
        == []
    )
    assert (
        ec2.describe_security_groups(Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": ["test"]}])[
            "SecurityGroups"
        ]
        == []
    )
    assert provider.list_instances() == []


# ---- agent health ------------------------------------------------------------------------


@pytest.fixture
def fenced_subnet(account: dict[str, str]) -> Iterator[dict[str, str]]:
    """moto (fake AWS): the account with a subnet in a range fenced off on this host, so
    polling an agent there sends nothing off the machine (moto's default VPC,
    172.31.0.0/16, would be reached through the default route). Needs root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to fence the fake subnet's range (no packet may leave)")
    with fenced_range("10.0.0.0/8", 16) as cidr:
        ec2 = _ec2()
        vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(
            VpcId=vpc, CidrBlock=cidr.replace("0.0/16", "1.0/24"), AvailabilityZone=f"{REGION}a"
        )["Subnet"]["SubnetId"]
        yield {**account, "subnet": subnet, "vpc": vpc}


def test_moto_agent_health_timeout_is_a_clear_error_and_terminates(
    tmp_path: Path, fenced_subnet: dict[str, str]
) -> None:
    """moto (fake AWS): no agent ever answers on a moto instance, so the wait times out
    with a message saying what to check; the instance is terminated, not left running."""
    provider = make_provider(tmp_path, fenced_subnet)
    with pytest.raises(ProviderError) as ei:
        provider.create_instance("t3.small", agent_timeout_s=1.5)
    assert ei.value.detail and "No route to host" in ei.value.detail  # fenced: not sent
    msg = str(ei.value)
    assert "did not become healthy within 1.5 s" in msg
    assert "port 7070" in msg and "console output" in msg
    assert "console output (tail)" in (ei.value.detail or "")
    assert provider.list_instances() == []


# ---- S3 checkpoints ----------------------------------------------------------------------


def _checkpoint_dir(root: Path) -> Path:
    d = root / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "pages-1.img").write_bytes(os.urandom(12 * MIB + 12345))  # three 5 MiB parts
    (d / "core-1.img").write_bytes(b"core" * 100)
    (d / "sub" / "stats-dump").write_text("ok")
    return d


def _tree(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def test_moto_s3_checkpoint_round_trip_and_corruption(
    tmp_path: Path, account: dict[str, str]
) -> None:
    """moto (fake AWS): a checkpoint streamed to S3 in multipart parts comes back identical;
    a corrupted object is refused and leaves nothing behind."""
    store = CheckpointStore(
        AwsAdaptor(REGION), account["bucket"], cluster="test", part_size=5 * MIB
    )
    src = _checkpoint_dir(tmp_path)
    key = store.key("suspend", "j1", "c1")
    m = store.upload_dir(src, key)
    assert m.parts == 3 and m.size > 12 * MIB
    assert list(store.keys("suspend", "j1")) == [key]
    dest = tmp_path / "restored"
    assert store.download_dir(key, dest) == m
    assert _tree(dest) == _tree(src)

    # the object is replaced behind our back (same size, one byte differs)
    ec2_s3 = AwsAdaptor(REGION)
    body = bytearray(ec2_s3.call("s3", "get_object", Bucket="og-test", Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    ec2_s3.call("s3", "put_object", Bucket="og-test", Key=key, Body=bytes(body))
    bad = tmp_path / "bad"
    with pytest.raises(TransferError, match="failed its checksum"):
        store.download_dir(key, bad)
    assert not bad.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bad")] == []

    store.delete(key)
    with pytest.raises(NotFoundError):
        store.download_dir(key, tmp_path / "gone")
    # no multipart upload left open
    assert ec2_s3.call("s3", "list_multipart_uploads", Bucket="og-test").get("Uploads", []) == []


def test_moto_s3_lifecycle_rules_are_merged(account: dict[str, str]) -> None:
    """moto (fake AWS): outgrow's expiry rules join the bucket's existing ones."""
    a = AwsAdaptor(REGION)
    other = {
        "ID": "someone-else",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
    }
    a.call(
        "s3",
        "put_bucket_lifecycle_configuration",
        Bucket="og-test",
        LifecycleConfiguration={"Rules": [other]},
    )
    store = CheckpointStore(a, "og-test", cluster="test")
    store.ensure_lifecycle(2)
    store.ensure_lifecycle(2)  # idempotent
    rules = {
        r["ID"]: r
        for r in a.call("s3", "get_bucket_lifecycle_configuration", Bucket="og-test")["Rules"]
    }
    assert set(rules) == {
        "someone-else",
        "outgrow-transfer-expiry",
        "outgrow-abort-incomplete-uploads",
    }
    assert rules["outgrow-transfer-expiry"]["Expiration"]["Days"] == 2
    assert rules["outgrow-transfer-expiry"]["Filter"]["Prefix"] == "outgrow/test/transfer/"
    abort = rules["outgrow-abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"]
    assert abort["DaysAfterInitiation"] == 1


def test_moto_s3_failed_upload_is_aborted(
    tmp_path: Path, account: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto (fake AWS) + a SIMULATED failure of the second part: the multipart upload is
    aborted, no part is left to pay for."""
    a = AwsAdaptor(REGION)
    store = CheckpointStore(a, "og-test", cluster="test", part_size=5 * MIB)
    s3 = a.client("s3")
    real = s3.upload_part

    def upload_part(**kw: Any) -> Any:
        if kw["PartNumber"] == 2:
            raise ClientError({"Error": {"Code": "InternalError"}}, "UploadPart")
        return real(**kw)

    monkeypatch.setattr(s3, "upload_part", upload_part)
    with pytest.raises(TransferError):
        store.upload_dir(_checkpoint_dir(tmp_path), store.key("transfer", "j1", "c2"))
    assert a.call("s3", "list_multipart_uploads", Bucket="og-test").get("Uploads", []) == []


# ---- the adaptor -------------------------------------------------------------------------


def test_missing_boto3_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError, match=r"outgrow\[aws\]") as ei:
        AwsAdaptor("eu-west-1").client("ec2")
    assert isinstance(ei.value.__cause__, ImportError)


def test_client_errors_are_translated_with_message_and_detail() -> None:
    def err(code: str) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": code, "Message": f"AWS says {code}"},
                "ResponseMetadata": {"RequestId": "req-1"},
            },
            "RunInstances",
        )

    for code in (
        "InsufficientInstanceCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
    ):
        e = translate(err(code), "ec2", "run_instances")
        assert isinstance(e, CapacityError), code
        assert code in str(e) and "AWS says" not in str(e)  # user message
        assert f"AWS says {code}" in (e.detail or "") and "req-1" in (e.detail or "")
    assert isinstance(translate(err("InvalidInstanceID.NotFound"), "ec2", "x"), NotFoundError)
    denied = translate(err("UnauthorizedOperation"), "ec2", "run_instances")
    assert isinstance(denied, ProviderError) and "docs/aws.md" in str(denied)
    assert type(translate(err("Boom"), "ec2", "x")) is ProviderError
    try:
        exc = err("SpotMaxPriceTooLow")
        raise translate(exc, "ec2", "run_instances") from exc
    except CapacityError as e:
        assert error_code(e) == "SpotMaxPriceTooLow"


def test_no_credentials_is_a_config_error(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="no AWS credentials"):
        AwsAdaptor(REGION).call("ec2", "describe_vpcs")


def test_adaptor_retry_config(aws_env: None) -> None:
    a = AwsAdaptor(REGION, max_attempts=5)
    cfg = a.client("ec2").meta.config
    assert cfg.retries == {"mode": "adaptive", "total_max_attempts": 5}
    assert cfg.region_name == REGION
    assert "outgrow/" in cfg.user_agent_extra


def test_moto_server_endpoint_url_is_honoured(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto (fake AWS) as a threaded HTTP server: AWS_ENDPOINT_URL (and the explicit
    OUTGROW_AWS_ENDPOINT_URL setting) send every call there."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        a = AwsAdaptor(REGION)
        assert a.client("ec2").meta.endpoint_url == url
        vpc = a.call("ec2", "create_vpc", CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        b = AwsAdaptor(REGION, endpoint_url=url)
        ids = [v["VpcId"] for v in b.call("ec2", "describe_vpcs")["Vpcs"]]
        assert vpc in ids  # the same (server-side) fake account
    finally:
        server.stop()


def test_moto_registered_as_aws_provider(
    account: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto (fake AWS): OUTGROW_PROVIDER=aws with OUTGROW_AWS_* settings."""
    monkeypatch.setenv("OUTGROW_AWS_SUBNET_ID", account["subnet"])
    monkeypatch.setenv("OUTGROW_AWS_AMI_ID", account["ami"])
    monkeypatch.setenv("OUTGROW_AWS_ALLOW_TYPES", "t3.*")
    monkeypatch.setenv("OUTGROW_AWS_AGENT_PACKAGE", "outgrow==0.1.0")
    p = get_provider("aws", Settings(data_dir=tmp_path))
    assert isinstance(p, AwsProvider)
    assert p.region == REGION
    assert {t.name.split(".")[0] for t in p.instance_types()} == {"t3"}
    assert p.image()[0] == account["ami"]


def test_suspend_checkpoints_and_snapshots_are_kept_in_s3(provider: AwsProvider) -> None:
    """Regression: the provider's S3 location was named ``checkpoint_url``, so the
    interface's ``checkpoint_location`` (what suspend and snapshots ask) refused."""
    url = provider.checkpoint_location("j1", "snapshot-0123456789")
    assert url == "s3://og-test/outgrow/test/suspend/j1/snapshot-0123456789.tar"
    provider.delete_checkpoint(url)  # nothing there yet: idempotent
