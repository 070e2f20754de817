"""Where a job's directory lives while the job moves between instances (pure data).

The provider decides (``Provider.attach_job_storage``); the agent acts on it
(``agent/jobstorage.py``); the control plane only passes it along.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class StorageKind(StrEnum):
    SHARED = "shared"  # the job directory is the same on every instance (one host, NFS)
    VOLUME = "volume"  # a block device moved between instances (EBS, a local loop device)
    S3 = "s3"  # a directory synced through object storage (instances in different AZs)


@dataclass(frozen=True)
class JobStorage:
    """How an agent makes a job's directory appear on its instance (see agent/jobstorage.py).

    VOLUME: ``device`` is a block device path (``/dev/loop3``) or ``ebs:vol-0abc…`` (the
    agent finds the NVMe device by its serial); the agent formats it on first use (ext4)
    and mounts it on the job directory. S3: ``url`` (``s3://bucket/key.tar``) holds the
    directory as a checksummed tar; the agent downloads it on mount (nothing there yet =
    an empty directory) and uploads it on release."""

    kind: StorageKind = StorageKind.SHARED
    device: str = ""
    url: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "device": self.device, "url": self.url}

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> JobStorage:
        return cls(StorageKind(d.get("kind", "shared")), d.get("device", ""), d.get("url", ""))


def is_object_url(location: str) -> bool:
    """A checkpoint or directory location in object storage (``s3://bucket/key``), as
    opposed to a directory path."""
    return location.startswith("s3://")
