"""Checkpoints in S3: suspend (the job's CRIU images while no instance exists) and the
fallback transfer path when two agents cannot reach each other directly.

* **Streamed, multipart**: a checkpoint directory is written as a tar stream straight
  into an S3 multipart upload (``part_size`` parts, 8 MiB by default: S3 needs ≥ 5 MiB
  but the last), so nothing the size of the checkpoint is ever held in memory or on a
  second disk. Each part carries S3's own SHA-256 part checksum (checked by S3 on
  arrival); the whole stream's SHA-256 and size go into a small manifest object beside it
  (``<key>.manifest.json``: S3 metadata cannot be set after a multipart upload starts).
* **Checksummed download**: the object is streamed through the hash and a tar reader into
  a temporary directory next to the destination; only when the SHA-256 and size match the
  manifest is it renamed into place. A corrupted, truncated or replaced object raises
  :class:`~outgrow.errors.TransferError` and leaves nothing behind.
* **Failures** abort the multipart upload (no orphaned parts to pay for).
* **Lifecycle**: :meth:`CheckpointStore.ensure_lifecycle` merges two rules into the
  bucket's lifecycle (other rules are kept): transfer checkpoints expire after
  ``transfer_expire_days``; incomplete multipart uploads under the prefix are aborted after
  a day. Suspend checkpoints never expire by themselves (a suspended job may stay so for
  months): they are deleted when the job resumes or ends (:meth:`delete`).

Keys: ``<prefix>/<cluster>/suspend/<job>/<checkpoint>.tar``,
``<prefix>/<cluster>/transfer/<job>/<checkpoint>.tar`` and (job directories synced
through S3, ``OUTGROW_AWS_JOB_STORAGE=s3``) ``<prefix>/<cluster>/jobdir/<job>/workspace.tar``.

The agent uses only the ``s3://bucket/key`` helpers at the end (:func:`upload_url`,
:func:`download_url`, :func:`delete_url`): the control plane's provider hands it URLs, and
the agent connects with :class:`S3Connection` (``OUTGROW_AWS_*``, the instance profile's
credentials on an instance).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from outgrow.errors import NotFoundError, OutgrowError, TransferError
from outgrow.transfer.boto import AwsAdaptor, error_code

MIB = 1024 * 1024
MIN_PART = 5 * MIB
Kind = Literal["suspend", "transfer", "jobdir", "image"]
LIFECYCLE_TRANSFER_ID = "outgrow-transfer-expiry"
LIFECYCLE_MULTIPART_ID = "outgrow-abort-incomplete-uploads"


class S3Connection(BaseSettings):
    """How to reach AWS (``OUTGROW_AWS_*``): the part of the aws provider's settings an
    agent needs for object storage (the provider's AwsSettings extends it)."""

    model_config = SettingsConfigDict(env_prefix="OUTGROW_AWS_", extra="ignore")

    region: str | None = Field(
        None,
        description="AWS region (else AWS_REGION / AWS_DEFAULT_REGION / the AWS config file).",
    )
    endpoint_url: str | None = Field(
        None,
        description="Endpoint of every AWS service (else AWS_ENDPOINT_URL, honoured by "
        "botocore). Only for tests against a fake such as moto's server.",
    )
    profile: str | None = Field(None, description="AWS config profile (else the default chain).")
    max_attempts: int = Field(
        8, ge=1, le=20, description="botocore attempts per call (adaptive retry mode)."
    )

    def adaptor(self) -> AwsAdaptor:
        # boto3 itself is imported on the first call (the aws extra is optional)
        return AwsAdaptor(
            self.region,
            endpoint_url=self.endpoint_url,
            profile=self.profile,
            max_attempts=self.max_attempts,
        )


@dataclass(frozen=True)
class Manifest:
    key: str
    sha256: str
    size: int
    parts: int
    created_at: float

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()


class _MultipartWriter(io.RawIOBase):
    """A write-only file object that uploads what it is given as S3 multipart parts,
    hashing everything as it goes."""

    def __init__(self, s3: AwsAdaptor, bucket: str, key: str, part_size: int):
        super().__init__()
        self.s3, self.bucket, self.key, self.part_size = s3, bucket, key, part_size
        self.sha = hashlib.sha256()
        self.size = 0
        self._buf = bytearray()
        self._parts: list[dict[str, Any]] = []
        self.upload_id: str = s3.call(
            "s3", "create_multipart_upload", Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256"
        )["UploadId"]

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.size += len(data)
        self._buf += data
        while len(self._buf) >= self.part_size:
            chunk = bytes(self._buf[: self.part_size])
            del self._buf[: self.part_size]
            self._upload(chunk)
        return len(data)

    def _upload(self, chunk: bytes) -> None:
        n = len(self._parts) + 1
        r = self.s3.call(
            "s3",
            "upload_part",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=n,
            Body=chunk,
            ChecksumAlgorithm="SHA256",
        )
        part: dict[str, Any] = {"PartNumber": n, "ETag": r["ETag"]}
        if r.get("ChecksumSHA256"):
            part["ChecksumSHA256"] = r["ChecksumSHA256"]
        self._parts.append(part)

    def complete(self) -> int:
        if self._buf or not self._parts:  # the last part may be small (or the only one)
            self._upload(bytes(self._buf))
            self._buf.clear()
        self.s3.call(
            "s3",
            "complete_multipart_upload",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        return len(self._parts)

    def abort(self) -> None:
        with contextlib.suppress(OutgrowError):
            self.s3.call(
                "s3",
                "abort_multipart_upload",
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
            )


class _HashingReader(io.RawIOBase):
    """Reads an S3 body, hashing and counting what passes."""

    def __init__(self, body: Any):
        super().__init__()
        self.body = body
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.body.read(len(b))
        n = len(data)
        b[:n] = data
        self.sha.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        while self.read(MIB):
            pass


class CheckpointStore:
    def __init__(
        self,
        adaptor: AwsAdaptor,
        bucket: str,
        *,
        prefix: str = "outgrow",
        cluster: str = "outgrow",
        part_size: int = 8 * MIB,
    ):
        if part_size < MIN_PART:
            raise ValueError(f"S3 multipart parts must be at least {MIN_PART} bytes")
        self.s3 = adaptor
        self.bucket = bucket
        self.root = f"{prefix.strip('/')}/{cluster}"
        self.part_size = part_size

    def key(self, kind: Kind, job_id: str, checkpoint_id: str) -> str:
        for part in (job_id, checkpoint_id):
            if not part or "/" in part or part in (".", ".."):
                raise ValueError(f"invalid key part {part!r}")
        return f"{self.root}/{kind}/{job_id}/{checkpoint_id}.tar"

    # ---- upload ---------------------------------------------------------------------
    def upload_dir(self, src: Path, key: str) -> Manifest:
        """Stream ``src`` (a checkpoint directory) as a tar into ``key``."""
        w = _MultipartWriter(self.s3, self.bucket, key, self.part_size)
        try:
            with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(src.rglob("*")):
                    tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
            parts = w.complete()
        except BaseException as exc:
            w.abort()
            if isinstance(exc, OutgrowError):
                raise TransferError(f"uploading checkpoint {key} failed: {exc}") from exc
            raise
        m = Manifest(key, w.sha.hexdigest(), w.size, parts, time.time())
        self.s3.call(
            "s3",
            "put_object",
            Bucket=self.bucket,
            Key=f"{key}.manifest.json",
            Body=m.to_json(),
            ContentType="application/json",
        )
        return m

    # ---- download -------------------------------------------------------------------
    def manifest(self, key: str) -> Manifest:
        try:
            body = self.s3.call("s3", "get_object", Bucket=self.bucket, Key=f"{key}.manifest.json")[
                "Body"
            ].read()
        except NotFoundError as exc:
            raise NotFoundError(f"no checkpoint {key} in s3://{self.bucket}") from exc
        d = json.loads(body)
        return Manifest(d["key"], d["sha256"], int(d["size"]), int(d["parts"]), d["created_at"])

    def download_dir(self, key: str, dest: Path) -> Manifest:
        """Restore ``key`` into ``dest`` (which must not exist), verified by the manifest."""
        m = self.manifest(key)
        if dest.exists():
            raise TransferError(f"{dest} already exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            obj = self.s3.call("s3", "get_object", Bucket=self.bucket, Key=key)
            reader = _HashingReader(obj["Body"])
            try:
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    # "tar", not "data": a job directory keeps its files' and directories'
                    # modes (still no escaping paths, no setuid bits).
                    tar.extractall(tmp, filter="tar")
                reader.drain()  # the tar end may leave padding unread
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise TransferError(
                    f"checkpoint {key} is not a readable archive (corrupted?)", detail=str(exc)
                ) from exc
            got = reader.sha.hexdigest()
            if got != m.sha256 or reader.size != m.size:
                raise TransferError(
                    f"checkpoint {key} failed its checksum: the object in S3 is not what "
                    "was uploaded",
                    detail=f"sha256 {got} size {reader.size}, manifest {m.sha256} size {m.size}",
                )
            tmp.chmod(0o755)  # mkdtemp's 0700 would become the job directory's mode
            tmp.replace(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return m

    # ---- housekeeping ---------------------------------------------------------------
    def delete(self, key: str) -> None:
        for k in (key, f"{key}.manifest.json"):
            self.s3.call("s3", "delete_object", Bucket=self.bucket, Key=k)

    def keys(self, kind: Kind, job_id: str | None = None) -> Iterator[str]:
        prefix = f"{self.root}/{kind}/" + (f"{job_id}/" if job_id else "")
        for obj in self.s3.pages(
            "s3", "list_objects_v2", "Contents", Bucket=self.bucket, Prefix=prefix
        ):
            if not obj["Key"].endswith(".manifest.json"):
                yield obj["Key"]

    def lifecycle_rules(self, transfer_expire_days: int) -> list[dict[str, Any]]:
        return [
            {
                "ID": LIFECYCLE_TRANSFER_ID,
                "Filter": {"Prefix": f"{self.root}/transfer/"},
                "Status": "Enabled",
                "Expiration": {"Days": transfer_expire_days},
            },
            {
                "ID": LIFECYCLE_MULTIPART_ID,
                "Filter": {"Prefix": f"{self.root}/"},
                "Status": "Enabled",
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            },
        ]

    def ensure_lifecycle(self, transfer_expire_days: int = 1) -> None:
        """Put outgrow's rules into the bucket lifecycle, keeping everyone else's."""
        try:
            existing = self.s3.call(
                "s3", "get_bucket_lifecycle_configuration", Bucket=self.bucket
            ).get("Rules", [])
        except OutgrowError as exc:
            if error_code(exc) != "NoSuchLifecycleConfiguration":
                raise
            existing = []
        ours = self.lifecycle_rules(transfer_expire_days)
        ids = {r["ID"] for r in ours}
        rules = [r for r in existing if r.get("ID") not in ids] + ours
        self.s3.call(
            "s3",
            "put_bucket_lifecycle_configuration",
            Bucket=self.bucket,
            LifecycleConfiguration={"Rules": rules},
        )


# ---- s3:// URLs: what the agent is handed ---------------------------------------------
def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); ValidationError-free: a bad URL is a TransferError."""
    if not url.startswith("s3://") or "/" not in url[5:]:
        raise TransferError(f"not an s3://bucket/key URL: {url!r}")
    bucket, key = url[5:].split("/", 1)
    if not bucket or not key:
        raise TransferError(f"not an s3://bucket/key URL: {url!r}")
    return bucket, key


def url_of(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def store_for_url(url: str, adaptor: AwsAdaptor | None = None) -> tuple[CheckpointStore, str]:
    """A store for the URL's bucket (adaptor from ``OUTGROW_AWS_*`` settings when not
    given: on an instance the agent has the instance profile's credentials) and the key."""
    bucket, key = parse_url(url)
    return CheckpointStore(adaptor or S3Connection().adaptor(), bucket), key


def upload_url(src: Path, url: str, adaptor: AwsAdaptor | None = None) -> Manifest:
    store, key = store_for_url(url, adaptor)
    return store.upload_dir(src, key)


def download_url(
    url: str, dest: Path, adaptor: AwsAdaptor | None = None, *, missing_ok: bool = False
) -> Manifest | None:
    """Download ``url`` into ``dest`` (which must not exist). ``missing_ok``: an object
    never uploaded yields None and an empty ``dest`` (a job directory's first mount)."""
    store, key = store_for_url(url, adaptor)
    try:
        return store.download_dir(key, dest)
    except NotFoundError:
        if not missing_ok:
            raise
        dest.mkdir(parents=True)
        return None


def delete_url(url: str, adaptor: AwsAdaptor | None = None) -> None:
    store, key = store_for_url(url, adaptor)
    with contextlib.suppress(NotFoundError):
        store.delete(key)
