"""The "volume" mode of the migration benchmark: the job's directory moves with the job.

With ``Settings.local_job_storage = "volume"`` the local provider keeps each job's
directory on an ext4 image of its own (``<data_dir>/volumes/<job>.img``) attached as a
real loop device to one instance at a time, the local stand-in for an EBS volume.
``Migrator.migrate`` sees that the directory is not shared and moves the job in copy
mode: dump, kill the source tree (keeping its images), unmount on the source, detach the
loop device, attach it for the target, mount it there, restore. ``storage_s`` of the
result is the directory's part of the downtime.

This module holds what the benchmark does around such a job, like the control plane does
(controlplane/jobdirs.py): attach and mount the volume before the job starts, check after
each move that the directory arrived, and stop the job, release, detach and delete the
volume at the end. It raises OutgrowError (StorageError, AgentError, ProviderError), which
the benchmark records like any other failed step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polling import poll_until

from outgrow.agent.mounts import loop_devices, mounted_on, mounts
from outgrow.domain.storage import StorageKind
from outgrow.errors import ConflictError, StorageError
from outgrow.orchestrator.migrate import agent
from outgrow.providers.base import InstanceInfo
from outgrow.providers.local.provider import LocalProvider
from outgrow.settings import Settings

MODE = "volume"
# Small on purpose: the image is sparse and the directory holds logs and Jupyter's state,
# never the checkpoint (that is in the agent's work dir).
VOLUME_GIB = 1.0
MARKER = "bench-marker.txt"  # written into the volume before the job starts
RELEASE_TIMEOUT_S = 60.0

Say = Callable[[str], None]


def provider_for(settings: Settings) -> LocalProvider:
    """A second provider on the same data dir, prefix and address pool as ``settings``
    (so one teardown removes every instance of the run) whose jobs' directories are loop
    volumes."""
    return LocalProvider(
        settings.model_copy(update={"local_job_storage": "volume", "local_volume_gib": VOLUME_GIB})
    )


class JobVolume:
    """The volume of one benchmark job, from the mount before its start to its deletion."""

    def __init__(self, provider: LocalProvider, say: Say):
        if provider.settings.local_job_storage != "volume":
            raise ValueError("JobVolume needs a provider with local_job_storage='volume'")
        self.p = provider
        self.say = say
        self.job_id = ""
        self.facts: dict[str, Any] = {"volume_gib": VOLUME_GIB}

    @property
    def job_dir(self) -> Path:
        return self.p.jobs_dir / self.job_id

    def mount(self, inst: InstanceInfo, job_id: str) -> None:
        """Attach the job's (new) volume to ``inst`` and have its agent format and mount
        it; then leave a marker in it, to be found on every instance it moves to."""
        self.job_id = job_id
        t0 = time.monotonic()
        storage = self.p.attach_job_storage(job_id, inst)
        if storage.kind != StorageKind.VOLUME:
            raise StorageError(f"expected a volume for job {job_id}, got {storage.kind.value}")
        with agent(inst, timeout=60) as a:
            r = a.mount_storage(job_id, storage)
        self.facts.update(
            {
                "first_device": storage.device,
                "first_mount_s": round(time.monotonic() - t0, 4),
                "agent_mount_s": r.seconds,
                "formatted": r["formatted"],
            }
        )
        (self.job_dir / MARKER).write_text(job_id)
        self.say(
            f"  job directory on volume {storage.device} ({VOLUME_GIB:g} GiB, "
            f"formatted {r['formatted']}), mounted in {r['seconds']:.2f} s"
        )

    def check(self) -> dict[str, Any]:
        """After a move: the job directory is this job's volume (a loop device backed by
        its image), mounted, with the marker written before the job started."""
        device = mount_source(self.job_dir)
        if not device or not device.startswith("/dev/loop"):
            raise StorageError(f"the job directory {self.job_dir} is not on a loop volume")
        back = loop_devices().get(device, "")
        image = self.p.job_storage.volumes / f"{self.job_id}.img"
        if back != str(image):
            raise StorageError(f"the job directory is mounted from {device} ({back}), not {image}")
        try:
            marker = (self.job_dir / MARKER).read_text()
        except OSError as exc:
            raise StorageError(f"the volume came without its marker: {exc}") from exc
        if marker != self.job_id:
            raise StorageError(f"the volume's marker reads {marker!r}, not {self.job_id!r}")
        return {"volume_device": device}

    def release(self, inst: InstanceInfo) -> None:
        """Stop the job on ``inst``, unmount its directory there and detach the volume
        (what the control plane does when a job ends)."""
        if not self.job_id:
            return
        t0 = time.monotonic()
        storage = self.p.attach_job_storage(self.job_id, inst)
        with agent(inst, timeout=60) as a:
            a.stop_job(grace_s=3)
            # The tree takes a moment to end and close its files: until then the agent
            # says the job is live (conflict) or umount says busy (storage).
            busy: list[ConflictError | StorageError] = []

            def released() -> bool:
                try:
                    a.release_storage(self.job_id, storage)
                except (ConflictError, StorageError) as exc:
                    busy.append(exc)
                    return False
                return True

            try:
                poll_until(
                    released,
                    timeout=RELEASE_TIMEOUT_S,
                    interval=0.2,
                    what=f"the job's storage to be released on {inst.id}",
                )
            except TimeoutError:
                raise busy[-1] from None  # still busy: the agent's own answer says why
        self.p.detach_job_storage(self.job_id, inst)
        self.facts["release_s"] = round(time.monotonic() - t0, 4)

    def delete(self) -> None:
        """Delete the volume (its image file); after the instances are gone."""
        if self.job_id:
            self.p.delete_job_storage(self.job_id)


def mount_source(path: Path) -> str | None:
    """The device mounted on ``path`` in this mount namespace (the top of the stack)."""
    m = mounted_on(path)
    return m.source if m else None


def leftovers(data_dir: Path) -> list[str]:
    """Mounts under ``data_dir`` and loop devices backed by a file in it (after teardown
    there must be none)."""
    root = os.path.realpath(data_dir).rstrip("/") + "/"
    out = [f"mount {m.mountpoint}" for m in mounts() if m.mountpoint.startswith(root)]
    out += [
        f"loop device {dev} ({back})"
        for dev, back in loop_devices().items()
        if back.startswith(root)
    ]
    return out


def merge(shared: dict[str, Any] | None, vol: dict[str, Any]) -> dict[str, Any]:
    """One record per size: the volume job's migrations, failures and errors join those
    of the job in a shared directory, its own facts go under ``volume_job``. Without a
    shared job the volume job's record is the size's."""
    if shared is None:
        return vol
    lists = ("migrations", "failed_migrations", "errors", "raw_criu", "reload")
    out = {**shared, "volume_job": {k: v for k, v in vol.items() if k not in lists}}
    for key in ("migrations", "failed_migrations", "errors"):
        out[key] = [*shared[key], *vol[key]]
    a, b = shared.get("checksum"), vol.get("checksum")
    if a and b and a != b:  # same seed, same code: the same data, or ratios are moot
        out["errors"].append(
            {"step": "volume job", "error": f"built other data (crc32 {b} != {a})", "detail": ""}
        )
    return out
