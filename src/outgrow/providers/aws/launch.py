"""What a new EC2 instance is launched with: its agent token, where it gets outgrow from,
its cloud-init user-data (``userdata.py``) and the RunInstances request itself.

The agent token is derived (HMAC-SHA256) from a key in the control plane's data directory
and the instance id, so it is never stored in AWS tags yet survives a restart of the
control plane. Nothing here calls AWS except presigning an ``s3://`` wheel URL (computed
locally).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from outgrow import __version__
from outgrow.domain.instance_types import InstanceType
from outgrow.domain.security import SecurityGroup
from outgrow.errors import ConfigError
from outgrow.providers.aws.criu_script import CRIU_PATCHES, INSTALL_CRIU_SH
from outgrow.providers.aws.settings import AwsSettings
from outgrow.providers.aws.tags import tag_spec
from outgrow.providers.aws.userdata import AgentInstall, UserDataSpec, render
from outgrow.settings import Settings
from outgrow.transfer.boto import AwsAdaptor


class AgentTokens:
    """Agent tokens: HMAC-SHA256 of ``<cluster>/<instance id>`` under a key kept in
    ``<data_dir>/aws/agent-token.key`` (0600, created on first use)."""

    def __init__(self, data_dir: Path, cluster: str):
        self.path = data_dir / "aws" / "agent-token.key"
        self.cluster = cluster
        self._lock = threading.Lock()
        self._key: bytes | None = None

    def key(self) -> bytes:
        with self._lock:
            if self._key is None:
                try:
                    self._key = self.path.read_bytes()
                except FileNotFoundError:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    key = secrets.token_bytes(32)
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(key)
                    self._key = key
            return self._key

    def token(self, instance_id: str) -> str:
        mac = hmac.new(self.key(), f"{self.cluster}/{instance_id}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def agent_install(aws: AwsSettings, adaptor: AwsAdaptor) -> AgentInstall:
    """Where instances get outgrow from (a ConfigError before anything is created when
    neither a wheel URL nor a pinned package is configured)."""
    url = aws.agent_wheel_url
    if url is None:
        if not aws.agent_package:
            # Never a bare name from a public index: it may not be this project.
            raise ConfigError(
                "instances need outgrow itself: set OUTGROW_AWS_AGENT_WHEEL_URL (a wheel "
                "built with `pip wheel --no-deps . -w dist`, e.g. uploaded to S3) or "
                f"OUTGROW_AWS_AGENT_PACKAGE (e.g. outgrow=={__version__} from your "
                "package index)",
                field="agent_wheel_url",
            )
        return AgentInstall(requirement=aws.agent_package)
    if url.startswith("s3://"):
        bucket, _, key = url[5:].partition("/")
        signed = adaptor.presign(bucket, key, aws.presign_expiry_s)
        if not signed.startswith("https://"):
            raise ConfigError(
                f"the agent wheel {url} presigns to a plain-http URL because the S3 endpoint "
                f"({adaptor.endpoint_url}) is http; instances download only over https",
                field="agent_wheel_url",
            )
        return AgentInstall(
            wheel_url=signed,
            wheel_name=key.rsplit("/", 1)[-1],
            sha256=aws.agent_wheel_sha256,
        )
    return AgentInstall(wheel_url=url, sha256=aws.agent_wheel_sha256)


def user_data(
    settings: Settings,
    aws: AwsSettings,
    *,
    region: str,
    instance_id: str,
    token: str,
    install: AgentInstall,
    security_group: SecurityGroup | None,
    spot: bool,
) -> str:
    """The instance's ``#cloud-config`` (the agent's environment carries the region and
    the bucket: the agent reaches S3 with the instance profile's credentials)."""
    return render(
        UserDataSpec(
            instance_id=instance_id,
            cluster=aws.cluster,
            token=token,
            cgroup=f"{settings.resource_prefix}-{instance_id}",
            install=install,
            install_criu_sh=INSTALL_CRIU_SH,
            criu_patches=CRIU_PATCHES,
            agent_port=aws.agent_port,
            memory_reserve_mib=aws.memory_reserve_mib,
            oom_headroom_mib=settings.oom_headroom_mib,
            redirects=security_group.redirects if security_group else (),
            spot=spot,
            region=region,
            s3_bucket=aws.s3_bucket,
        )
    )


def launch_request(
    aws: AwsSettings,
    network: Mapping[str, str],
    image: tuple[str, str],
    iid: str,
    itype: InstanceType,
    *,
    spot: bool,
    tags: Mapping[str, str],
    group_id: str,
    user_data: str,
) -> dict[str, Any]:
    """The RunInstances parameters: IMDSv2 only, an encrypted gp3 root volume deleted
    with the instance, the tags on the instance and its root volume, spot options."""
    ami, root = image
    req: dict[str, Any] = {
        "ImageId": ami,
        "InstanceType": itype.name,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data,
        "ClientToken": f"outgrow-{aws.cluster}-{iid}"[:64],
        "MetadataOptions": {
            "HttpTokens": "required",  # IMDSv2 only
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 1,
            "InstanceMetadataTags": "disabled",
        },
        "BlockDeviceMappings": [
            {
                "DeviceName": root,
                "Ebs": {
                    "VolumeSize": aws.root_volume_gib,
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                    "Encrypted": True,
                },
            }
        ],
        "TagSpecifications": [tag_spec("instance", tags), tag_spec("volume", tags)],
        "InstanceInitiatedShutdownBehavior": "terminate",
    }
    if aws.associate_public_ip:
        req["NetworkInterfaces"] = [
            {
                "DeviceIndex": 0,
                "SubnetId": network["subnet"],
                "Groups": [group_id],
                "AssociatePublicIpAddress": True,
                "DeleteOnTermination": True,
            }
        ]
    else:
        req["SubnetId"] = network["subnet"]
        req["SecurityGroupIds"] = [group_id]
    if aws.key_name:
        req["KeyName"] = aws.key_name
    if aws.instance_profile:
        p = aws.instance_profile
        req["IamInstanceProfile"] = {"Arn": p} if p.startswith("arn:") else {"Name": p}
    if spot:
        opts: dict[str, Any] = {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        }
        if aws.spot_max_price:
            opts["MaxPrice"] = aws.spot_max_price
        req["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": opts}
    return req
