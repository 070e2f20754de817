"""The account side every part of the aws provider shares: the settings, the adaptor (the
one way to AWS), the region, and the network and AMI resolved once from the settings."""

from __future__ import annotations

import threading
from typing import Any

from outgrow.errors import ConfigError, NotFoundError
from outgrow.providers.aws.settings import AwsSettings
from outgrow.transfer.boto import AwsAdaptor


class Account:
    def __init__(self, aws: AwsSettings, adaptor: AwsAdaptor):
        self.aws = aws
        self.adaptor = adaptor
        self._lock = threading.RLock()
        self._network: dict[str, str] | None = None
        self._image: tuple[str, str] | None = None

    @property
    def region(self) -> str:
        self.adaptor.session  # noqa: B018 - resolves the region (settings, env or config)
        assert self.adaptor.region is not None
        return self.adaptor.region

    def ec2(self, op: str, **params: Any) -> Any:
        return self.adaptor.call("ec2", op, **params)

    def network(self) -> dict[str, str]:
        """subnet, vpc, az, subnet_cidr, vpc_cidr, control_plane_cidr (resolved once)."""
        with self._lock:
            if self._network is None:
                if not self.aws.subnet_id:
                    raise ConfigError(
                        "set OUTGROW_AWS_SUBNET_ID: the subnet instances are launched in",
                        field="subnet_id",
                    )
                sub = self.ec2("describe_subnets", SubnetIds=[self.aws.subnet_id])["Subnets"][0]
                vpc_id = self.aws.vpc_id or sub["VpcId"]
                if vpc_id != sub["VpcId"]:
                    raise ConfigError(
                        f"subnet {sub['SubnetId']} is in {sub['VpcId']}, not in {vpc_id}",
                        field="vpc_id",
                    )
                vpc = self.ec2("describe_vpcs", VpcIds=[vpc_id])["Vpcs"][0]
                self._network = {
                    "subnet": sub["SubnetId"],
                    "vpc": vpc_id,
                    "az": sub["AvailabilityZone"],
                    "subnet_cidr": sub["CidrBlock"],
                    "vpc_cidr": vpc["CidrBlock"],
                    "control_plane_cidr": self.aws.control_plane_cidr or vpc["CidrBlock"],
                }
            return self._network

    def image(self) -> tuple[str, str]:
        """(AMI id, root device name)."""
        with self._lock:
            if self._image is None:
                ami = self.aws.ami_id
                if not ami:
                    try:
                        ami = self.adaptor.call(
                            "ssm", "get_parameter", Name=self.aws.ami_ssm_parameter
                        )["Parameter"]["Value"]
                    except NotFoundError as exc:
                        raise ConfigError(
                            f"SSM parameter {self.aws.ami_ssm_parameter} not found: set "
                            "OUTGROW_AWS_AMI_ID or OUTGROW_AWS_AMI_SSM_PARAMETER",
                            field="ami_id",
                        ) from exc
                images = self.ec2("describe_images", ImageIds=[ami])["Images"]
                if not images:
                    raise ConfigError(f"AMI {ami} not found in {self.region}", field="ami_id")
                img = images[0]
                if img.get("Architecture", self.aws.architecture) != self.aws.architecture:
                    raise ConfigError(
                        f"AMI {ami} is {img.get('Architecture')}, the settings say "
                        f"{self.aws.architecture}",
                        field="architecture",
                    )
                self._image = (str(ami), str(img.get("RootDeviceName") or "/dev/xvda"))
            return self._image
