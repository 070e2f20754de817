"""A job's own EBS volume (``OUTGROW_AWS_JOB_STORAGE=ebs``): the job directory moves with
the job by detaching the volume from the source instance and attaching it to the target.

* **Found by tags**, never by a local record: ``outgrow:cluster``, ``outgrow:job``,
  ``outgrow:kind=job-volume`` and ``Name=outgrow-job-<job>``; no ``outgrow:instance`` tag,
  so deleting an instance's leftovers never matches it. Attached after launch, EC2 sets
  ``DeleteOnTermination=false``: the volume outlives every instance it was attached to
  (a suspended job keeps its directory) until the job ends
  (:meth:`JobVolumes.delete`).
* **Created on first attach** in the subnet's availability zone — every instance is
  launched in that one subnet, so source and target are always in the volume's AZ —
  encrypted (the account's default EBS key), ``job_volume_type``/``job_volume_gib``.
* **Attached** at ``/dev/sdf``; on Nitro instances it appears as an NVMe device whose
  serial is the volume id (``vol0abc…``), which is how the agent finds it
  (``JobStorage.device = "ebs:vol-…"``). Attaching a volume still held by another live
  instance is refused (a ProviderError naming it): the source's agent must release it
  first (:meth:`JobVolumes.detach`). A volume held by an instance that is terminated or
  shutting down is detached and awaited.
* **Detached** without ``Force`` (a forced detach can lose writes not yet flushed), after
  the agent has unmounted it.

Every wait is bounded (``wait_s``) and ends in a ProviderError saying what is stuck.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from outgrow.errors import NotFoundError, ProviderError
from outgrow.providers.aws.account import Account
from outgrow.providers.aws.tags import (
    KIND_JOB_VOLUME,
    LIVE_STATES,
    TAG_CLUSTER,
    TAG_INSTANCE,
    TAG_JOB,
    TAG_KIND,
    tag_dict,
    tag_spec,
)
from outgrow.transfer.boto import error_code

log = logging.getLogger("outgrow.provider.aws")

DEVICE = "/dev/sdf"
VOLUME_WAIT_S = 300.0
VOLUME_STATES = ("creating", "available", "in-use", "error")  # not deleting/deleted
ATTACHED = ("attaching", "attached")


def volume_name(job_id: str) -> str:
    return f"outgrow-job-{job_id}"


def io2_iops(gib: int) -> int:
    """Provisioned IOPS of an io2 job volume: gp3's baseline 3000, within io2's 500/GiB."""
    return max(100, min(3000, 500 * gib))


def attachment(vol: dict[str, Any]) -> dict[str, Any] | None:
    """The volume's current attachment (a job volume has at most one), or None."""
    atts: list[dict[str, Any]] = vol.get("Attachments", [])
    return next((a for a in atts if a.get("State") != "detached"), None)


def _attached_to(ec2_id: str) -> Callable[[dict[str, Any]], bool]:
    def pred(vol: dict[str, Any]) -> bool:
        a = attachment(vol)
        return a is not None and a["InstanceId"] == ec2_id and a["State"] == "attached"

    return pred


def _available(vol: dict[str, Any]) -> bool:
    return vol["State"] == "available" and attachment(vol) is None


def _state(vol: dict[str, Any]) -> str:
    a = attachment(vol)
    if a is None:
        return str(vol["State"])
    return f"{vol['State']} ({a['State']} {a['InstanceId']})"


class JobVolumes:
    def __init__(
        self,
        account: Account,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wait_s: float = VOLUME_WAIT_S,
    ):
        self.account = account
        self.aws = account.aws
        self.sleep = sleep
        self.clock = clock
        self.wait_s = wait_s
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def _lock(self, job_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(job_id, threading.Lock())

    # ---- finding and creating -----------------------------------------------------------
    def tags(self, job_id: str) -> dict[str, str]:
        return {
            TAG_CLUSTER: self.aws.cluster,
            TAG_JOB: job_id,
            TAG_KIND: KIND_JOB_VOLUME,
            "Name": volume_name(job_id),
        }

    def create_request(self, job_id: str) -> dict[str, Any]:
        """The CreateVolume parameters of the job's volume."""
        req: dict[str, Any] = {
            "AvailabilityZone": self.account.network()["az"],
            "Size": self.aws.job_volume_gib,
            "VolumeType": self.aws.job_volume_type,
            "Encrypted": True,
            "TagSpecifications": [tag_spec("volume", self.tags(job_id))],
        }
        if self.aws.job_volume_type == "io2":
            req["Iops"] = io2_iops(self.aws.job_volume_gib)
        return req

    def find(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The job's volumes (every job's of the cluster when None): in use first, then
        the oldest; deleted ones left out."""
        filters = [
            {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.aws.cluster]},
            {"Name": f"tag:{TAG_KIND}", "Values": [KIND_JOB_VOLUME]},
            {"Name": "status", "Values": list(VOLUME_STATES)},
        ]
        if job_id is not None:
            filters.append({"Name": f"tag:{TAG_JOB}", "Values": [job_id]})
        vols = list(
            self.account.adaptor.pages("ec2", "describe_volumes", "Volumes", Filters=filters)
        )
        return sorted(
            vols,
            key=lambda v: (
                v["State"] != "in-use",
                v["State"] == "error",
                str(v.get("CreateTime", "")),
                v["VolumeId"],
            ),
        )

    def _ensure(self, job_id: str) -> dict[str, Any]:
        """The job's volume, created when it has none, not ``creating`` any more."""
        found = self.find(job_id)
        if found:
            vol = found[0]
            if len(found) > 1:
                log.warning(
                    "job %s has %d volumes (%s); using %s",
                    job_id,
                    len(found),
                    ", ".join(v["VolumeId"] for v in found),
                    vol["VolumeId"],
                )
            if vol["State"] == "error":
                raise ProviderError(
                    f"the volume {vol['VolumeId']} of job {job_id} is in state 'error' "
                    "(EBS could not create or restore it); its data may be lost"
                )
            if vol["State"] == "creating":
                vol = self._wait(vol["VolumeId"], job_id, "available", _available, new=True)
            return vol
        req = self.create_request(job_id)
        vid = self.account.ec2("create_volume", **req)["VolumeId"]
        log.info(
            "created volume %s for job %s (%s, %d GiB, %s)",
            vid,
            job_id,
            req["VolumeType"],
            req["Size"],
            req["AvailabilityZone"],
        )
        return self._wait(vid, job_id, "available", _available, new=True)

    # ---- attach, detach, delete ------------------------------------------------------------
    def attach(self, job_id: str, ec2_id: str) -> str:
        """Attach the job's volume (created on first use) to the EC2 instance ``ec2_id``
        and wait until it is attached; its id. Idempotent."""
        with self._lock(job_id):
            vol = self._ensure(job_id)
            vid = str(vol["VolumeId"])
            att = attachment(vol)
            if att is not None and att["InstanceId"] == ec2_id and att["State"] in ATTACHED:
                self._wait(vid, job_id, f"attached to {ec2_id}", _attached_to(ec2_id))
                return vid
            if att is not None:
                self._release(vol, job_id)
            self.account.ec2("attach_volume", VolumeId=vid, InstanceId=ec2_id, Device=DEVICE)
            log.info("attaching volume %s of job %s to %s", vid, job_id, ec2_id)
            self._wait(vid, job_id, f"attached to {ec2_id} at {DEVICE}", _attached_to(ec2_id))
            return vid

    def detach(self, job_id: str, ec2_id: str) -> list[str]:
        """Detach the job's volume from ``ec2_id`` (not forced: the agent unmounted it)
        and wait until it is available; the volumes detached. Idempotent."""
        done = []
        with self._lock(job_id):
            for vol in self.find(job_id):
                att = attachment(vol)
                if att is None or att["InstanceId"] != ec2_id:
                    continue
                vid = vol["VolumeId"]
                if att["State"] in ATTACHED:
                    with contextlib.suppress(NotFoundError):  # detached meanwhile
                        self.account.ec2("detach_volume", VolumeId=vid, InstanceId=ec2_id)
                    log.info("detaching volume %s of job %s from %s", vid, job_id, ec2_id)
                self._wait(vid, job_id, "available (detached)", _available)
                done.append(vid)
        return done

    def delete(self, job_id: str) -> list[str]:
        """Delete the job's volumes; idempotent. A volume still attached to a live
        instance is refused (ProviderError): delete that instance first."""
        with self._lock(job_id):
            return [self._delete(v, job_id) for v in self.find(job_id)]

    def delete_instance_volumes(self, filters: list[dict[str, Any]]) -> list[str]:
        """Delete the cluster's detached *instance* volumes matching ``filters`` (those
        tagged ``outgrow:instance``: root volumes EC2 left; a job volume is never one)."""
        removed = []
        for v in self.account.adaptor.pages(
            "ec2",
            "describe_volumes",
            "Volumes",
            Filters=[
                {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.aws.cluster]},
                {"Name": "tag-key", "Values": [TAG_INSTANCE]},
                {"Name": "status", "Values": ["available"]},
                *filters,
            ],
        ):
            tags = tag_dict(v)
            if tags.get(TAG_KIND) == KIND_JOB_VOLUME or TAG_INSTANCE not in tags:
                continue
            with contextlib.suppress(NotFoundError):
                self.account.ec2("delete_volume", VolumeId=v["VolumeId"])
                removed.append(v["VolumeId"])
        return removed

    def delete_all(self) -> list[str]:
        """Delete every job volume of the cluster (teardown, once its instances are gone)."""
        removed = []
        for vol in self.find():
            job_id = tag_dict(vol).get(TAG_JOB, "?")
            with self._lock(job_id):
                removed.append(self._delete(vol, job_id))
        return removed

    def _delete(self, vol: dict[str, Any], job_id: str) -> str:
        vid = str(vol["VolumeId"])
        if vol["State"] == "creating":
            vol = self._wait(vid, job_id, "available", _available)
        self._release(vol, job_id)
        with contextlib.suppress(NotFoundError):
            self.account.ec2("delete_volume", VolumeId=vid)
            log.info("deleted volume %s of job %s", vid, job_id)
        return vid

    def _release(self, vol: dict[str, Any], job_id: str) -> None:
        """Make an attached volume available — only when what holds it is gone or going."""
        att = attachment(vol)
        if att is None:
            return
        vid, holder = vol["VolumeId"], att["InstanceId"]
        if att["State"] != "detaching":
            state, name = self._holder(holder)
            if state in LIVE_STATES:
                raise ProviderError(
                    f"the volume {vid} of job {job_id} is still attached to instance "
                    f"{name} ({holder}), which is {state}: its agent must release it and "
                    "the volume be detached there first (detach_job_storage), or that "
                    "instance deleted"
                )
            try:
                self.account.ec2("detach_volume", VolumeId=vid, InstanceId=holder)
            except NotFoundError:
                pass  # InvalidAttachment.NotFound: EC2 detached it with the instance
            except ProviderError as exc:
                if error_code(exc) != "IncorrectState":
                    raise
        self._wait(vid, job_id, "available (detached)", _available)

    def _holder(self, ec2_id: str) -> tuple[str | None, str]:
        """(state, outgrow's id or the EC2 id) of the instance a volume is attached to;
        state None when EC2 no longer knows it."""
        try:
            res = self.account.ec2("describe_instances", InstanceIds=[ec2_id])["Reservations"]
        except NotFoundError:
            return None, ec2_id
        for r in res:
            for i in r.get("Instances", []):
                return str(i["State"]["Name"]), tag_dict(i).get(TAG_INSTANCE, ec2_id)
        return None, ec2_id

    def _wait(
        self,
        vid: str,
        job_id: str,
        what: str,
        done: Callable[[dict[str, Any]], bool],
        *,
        new: bool = False,
    ) -> dict[str, Any]:
        """Poll the volume until ``done``; at most ``wait_s`` (``new``: a volume just
        created may not be visible yet, EC2 being eventually consistent)."""
        deadline = self.clock() + self.wait_s
        delay = 0.5
        last = "not visible yet"
        while True:
            try:
                vols = self.account.ec2("describe_volumes", VolumeIds=[vid])["Volumes"]
            except NotFoundError as exc:
                if not new:
                    raise ProviderError(
                        f"the volume {vid} of job {job_id} disappeared while waiting for "
                        f"it to be {what}"
                    ) from exc
                vols = []
            if vols:
                vol: dict[str, Any] = vols[0]
                if done(vol):
                    return vol
                if vol["State"] == "error":
                    raise ProviderError(
                        f"the volume {vid} of job {job_id} went into state 'error' while "
                        f"waiting for it to be {what}"
                    )
                last = _state(vol)
            if self.clock() >= deadline:
                hint = (
                    " (still mounted on the instance? a detach without Force waits for it)"
                    if "detached" in what
                    else ""
                )
                raise ProviderError(
                    f"the volume {vid} of job {job_id} is still {last} after "
                    f"{self.wait_s:g} s of waiting for it to be {what}{hint}",
                    detail=f"volume {vid}: {last}",
                )
            self.sleep(min(delay, max(0.0, deadline - self.clock())))
            delay = min(delay * 2, 5.0)
