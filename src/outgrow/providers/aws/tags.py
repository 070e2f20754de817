"""How outgrow finds its EC2 resources again: tags, instance states, small helpers.

Everything outgrow creates carries ``outgrow:cluster`` (one control plane's resources)
and is found again by tags, never by a local record:

* an instance and its root volume: ``outgrow:instance`` (outgrow's 8-hex-digit id) and,
  for a job's instances, ``outgrow:job``;
* a job's security group ``outgrow-sg-<job>``: ``outgrow:job``;
* a job's EBS volume (``OUTGROW_AWS_JOB_STORAGE=ebs``): ``outgrow:job`` and
  ``outgrow:kind=job-volume`` but *no* ``outgrow:instance`` — it outlives the instances
  it is attached to, and what removes an instance's leftovers never matches it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

TAG_CLUSTER = "outgrow:cluster"
TAG_INSTANCE = "outgrow:instance"
TAG_JOB = "outgrow:job"
TAG_KIND = "outgrow:kind"
KIND_JOB_VOLUME = "job-volume"
TAG_EC2_ID = "ec2:instance-id"  # added to InstanceInfo.tags (not an AWS tag)

LIVE_STATES = ("pending", "running", "stopping", "stopped")
NOT_GONE = (*LIVE_STATES, "shutting-down")
STATE_MAP = {
    "pending": "running",
    "running": "running",
    "stopping": "unhealthy",
    "stopped": "unhealthy",
    "shutting-down": "gone",
    "terminated": "gone",
}
CHUNK = 100  # values per filter / ids per request


def chunks(items: list[str], n: int = CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def tag_dict(raw: Mapping[str, Any]) -> dict[str, str]:
    """The ``Tags`` of an EC2 description as a dict."""
    return {t["Key"]: t["Value"] for t in raw.get("Tags", [])}


def tag_spec(resource_type: str, tags: Mapping[str, str]) -> dict[str, Any]:
    """One ``TagSpecifications`` entry (tags applied atomically on create)."""
    return {
        "ResourceType": resource_type,
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
    }
