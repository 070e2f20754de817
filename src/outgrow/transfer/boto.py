"""The one module of outgrow that imports boto3 (lazily, on first use).

Everything the aws provider asks of AWS goes through :meth:`AwsAdaptor.call` (or
:meth:`AwsAdaptor.pages`), which

* builds one client per service from one session: region, profile, the endpoint
  (``OUTGROW_AWS_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL`` which botocore honours itself),
  botocore's *adaptive* retry mode (exponential backoff with jitter plus client-side
  rate limiting) with ``max_attempts``;
* translates botocore errors into outgrow's error tree, ``raise … from exc``, with a user
  message (what failed and what to do) separate from the detail (AWS's own words and the
  request id): capacity answers become :class:`CapacityError` (the control plane then
  falls back from spot to on-demand and retries per vmPolicy), a missing object
  :class:`NotFoundError`, missing credentials or region :class:`ConfigError`, anything
  else :class:`ProviderError`.

:func:`retry` waits out AWS's eventual consistency (an instance id not yet visible, a
security group still attached to an instance that is shutting down) with its own backoff.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any, TypeVar

from outgrow import __version__
from outgrow.errors import CapacityError, ConfigError, NotFoundError, OutgrowError, ProviderError

log = logging.getLogger("outgrow.provider.aws")
T = TypeVar("T")

INSTALL_HINT = "the aws provider needs boto3: install outgrow[aws] (pip install 'outgrow[aws]')"

# AWS error codes meaning "not now, not here": nothing fits (the control plane falls back
# from spot to on-demand, then retries per vmPolicy).
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "VcpuLimitExceeded",
        "InstanceLimitExceeded",
        "UnfulfillableCapacity",
    }
)
AUTH_CODES = frozenset(
    {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure"}
)
CONFIG_CODES = frozenset({"NoSuchBucket", "InvalidAMIID.NotFound", "InvalidSubnetID.NotFound"})


def _import_boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT, field="provider") from exc
    return boto3


def _botocore() -> tuple[Any, Any]:
    """(botocore.config, botocore.exceptions), with the same clear error when missing."""
    try:
        import botocore.config
        import botocore.exceptions
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT, field="provider") from exc
    return botocore.config, botocore.exceptions


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (or of the error it was translated from)."""
    for e in (exc, exc.__cause__):
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = resp.get("Error", {}).get("Code")
            if code:
                return str(code)
    return None


def translate(exc: Exception, service: str, operation: str) -> OutgrowError:
    """botocore's exception → outgrow's (the caller raises it ``from exc``)."""
    if isinstance(exc, OutgrowError):
        return exc
    _, bexc = _botocore()
    what = f"AWS {service}:{operation}"
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        meta = exc.response.get("ResponseMetadata", {})
        detail = f"{code}: {err.get('Message', '')} (request id {meta.get('RequestId', '?')})"
        if code in CAPACITY_CODES:
            return CapacityError(f"{what}: no capacity right now ({code})", detail=detail)
        if code in AUTH_CODES:
            return ProviderError(
                f"{what} was denied ({code}): the credentials lack a permission; "
                "see the IAM policy in docs/aws.md",
                detail=detail,
            )
        if code in CONFIG_CODES:
            return ConfigError(f"{what}: {code}, check the OUTGROW_AWS_* settings", detail=detail)
        if code.endswith((".NotFound", "NotFound")) or code in ("NoSuchKey", "404"):
            return NotFoundError(f"{what}: not found ({code})", detail=detail)
        return ProviderError(f"{what} failed ({code})", detail=detail)
    if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
        return ConfigError(
            "no AWS credentials found (environment, ~/.aws, instance profile or SSO); "
            "see docs/aws.md",
            detail=str(exc),
        )
    if isinstance(exc, bexc.NoRegionError):
        return ConfigError("no AWS region: set OUTGROW_AWS_REGION (or AWS_REGION)", field="region")
    if isinstance(exc, bexc.ParamValidationError):
        return ProviderError(f"{what}: invalid request built by outgrow", detail=str(exc))
    if isinstance(exc, bexc.EndpointConnectionError | bexc.ConnectionError):
        return ProviderError(f"{what}: cannot reach AWS", detail=str(exc))
    if isinstance(exc, bexc.BotoCoreError):
        return ProviderError(f"{what} failed", detail=f"{type(exc).__name__}: {exc}")
    return ProviderError(f"{what} failed", detail=f"{type(exc).__name__}: {exc}")


class AwsAdaptor:
    """A boto3 session and its clients, and the one place AWS calls are made."""

    def __init__(
        self,
        region: str | None = None,
        *,
        endpoint_url: str | None = None,
        profile: str | None = None,
        max_attempts: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ):
        self.region = region
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.profile = profile
        self.max_attempts = max_attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def session(self) -> Any:
        if self._session is None:
            boto3 = _import_boto3()
            try:
                self._session = boto3.session.Session(
                    region_name=self.region, profile_name=self.profile
                )
            except Exception as exc:
                raise translate(exc, "session", "create") from exc
            if self._session.region_name is None:
                raise ConfigError(
                    "no AWS region: set OUTGROW_AWS_REGION (or AWS_REGION)", field="region"
                )
            self.region = self._session.region_name
        return self._session

    def config(self) -> Any:
        bconfig, _ = _botocore()
        return bconfig.Config(
            region_name=self.session.region_name,
            retries={"mode": "adaptive", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            user_agent_extra=f"outgrow/{__version__}",
        )

    def client(self, service: str) -> Any:
        with self._lock:
            c = self._clients.get(service)
            if c is None:
                try:
                    c = self.session.client(
                        service, config=self.config(), endpoint_url=self.endpoint_url
                    )
                except OutgrowError:
                    raise
                except Exception as exc:
                    raise translate(exc, service, "client") from exc
                self._clients[service] = c
            return c

    def call(self, service: str, operation: str, **params: Any) -> Any:
        """``client(service).<operation>(**params)`` with errors translated."""
        client = self.client(service)
        try:
            return getattr(client, operation)(**params)
        except Exception as exc:
            raise translate(exc, service, operation) from exc

    def pages(self, service: str, operation: str, key: str, **params: Any) -> Iterator[Any]:
        """Every item under ``key`` of every page of a paginated operation."""
        client = self.client(service)
        try:
            for page in client.get_paginator(operation).paginate(**params):
                yield from page.get(key, [])
        except Exception as exc:
            raise translate(exc, service, operation) from exc

    def presign(self, bucket: str, key: str, expires_s: int) -> str:
        """A presigned GET URL (computed locally, no request)."""
        client = self.client("s3")
        try:
            url: str = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
            )
        except Exception as exc:
            raise translate(exc, "s3", "generate_presigned_url") from exc
        return url


def retry(
    fn: Callable[[], T],
    *,
    codes: Collection[str],
    timeout: float,
    what: str,
    first_delay: float = 0.5,
    max_delay: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it stops failing with one of the AWS error ``codes`` (exponential
    backoff with jitter), at most ``timeout`` seconds; then the last error is raised."""
    deadline = time.monotonic() + timeout
    delay = first_delay
    while True:
        try:
            return fn()
        except OutgrowError as exc:
            code = error_code(exc)
            if code not in codes or time.monotonic() + delay > deadline:
                raise
            log.info("%s: %s, retrying in %.1f s", what, code, delay)
        sleep(delay * (0.5 + random.random() / 2))
        delay = min(delay * 2, max_delay)
